"""The digits VQA set: real sklearn digits as PNGs with the right answers, a seeded split, byte-identical reruns."""
import json

import numpy as np
from PIL import Image

from mmx.data.digits import WORDS, make_digits_vqa


def test_digits_vqa(tmp_path):
    from sklearn.datasets import load_digits

    info = make_digits_vqa(str(tmp_path / "a"), size=28, held_out=0.25, max_samples=40)
    assert (info["num_train"], info["num_test"]) == (30, 10)
    train, test = json.load(open(info["train"])), json.load(open(info["test"]))
    assert not {r["id"] for r in train} & {r["id"] for r in test}
    digits = load_digits()
    for record in train[:5] + test[:5]:
        index = int(record["id"].split("_")[1])
        assert record["conversations"][0]["value"] == "<image>What digit is this?"
        assert record["conversations"][1]["value"] == str(digits.target[index])
        pixels = np.asarray(Image.open(tmp_path / "a" / record["image"]))
        assert pixels.shape == (28, 28, 3)
        # nearest-neighbour upscale: the pixel at 3.5 * i + 1 is source pixel i, so the 8x8 digit comes back exactly
        expected = np.round(digits.images[index] / 16 * 255).astype(np.uint8)
        sampled = pixels[(np.arange(8) * 3.5 + 1).astype(int)][:, (np.arange(8) * 3.5 + 1).astype(int), 0]
        np.testing.assert_array_equal(sampled, expected)
    again = make_digits_vqa(str(tmp_path / "b"), size=28, held_out=0.25, max_samples=40)
    assert open(again["train"]).read() == open(info["train"]).read()
    words = make_digits_vqa(str(tmp_path / "c"), max_samples=5, answer="word")
    record = json.load(open(words["train"]))[0]
    assert record["conversations"][1]["value"] in WORDS
