"""A real image VQA set with no download: scikit-learn's bundled handwritten digits (1,797 8x8 grey images).

``make_digits_vqa(out_dir)`` upsamples each digit to ``size`` x ``size`` RGB PNG (nearest neighbour, so the strokes
stay crisp; this is dataset creation, not model preprocessing) and writes mllm-format files::

    out_dir/images/digit_00000.png ...
    out_dir/train.json, out_dir/test.json   [{"id": "digit_00000", "image": "images/digit_00000.png",
                                              "conversations": [{"from": "human", "value": "<image>What digit is
                                              this?"}, {"from": "gpt", "value": "7"}]}]

The split is a seeded permutation (``held_out`` of the samples go to test.json). Image paths are relative to
``out_dir`` (use it as ``dataset_dir``). Re-running with the same arguments writes byte-identical files.
"""
import json
import os

import numpy as np

QUESTION = "What digit is this?"
WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


def make_digits_vqa(out_dir, size=28, held_out=0.2, max_samples=None, answer="number", seed=0):
    """Write the digits VQA set (module doc); returns ``{"dataset_dir", "train", "test", "num_train",
    "num_test"}``. ``answer``: ``"number"`` ("7") or ``"word"`` ("seven")."""
    from PIL import Image
    from sklearn.datasets import load_digits

    if answer not in ("number", "word"):
        raise ValueError(f"make_digits_vqa: answer must be 'number' or 'word', got {answer!r}")
    if size < 8:
        raise ValueError(f"make_digits_vqa: size {size} is smaller than the 8x8 digits")
    digits = load_digits()
    images, targets = digits.images, digits.target
    order = np.random.default_rng(seed).permutation(len(images))
    if max_samples is not None:
        order = order[:max_samples]
    os.makedirs(os.path.join(out_dir, "images"), exist_ok=True)
    records = []
    for index in order:
        name = f"digit_{index:05d}"
        grey = np.round(images[index] / 16.0 * 255).astype(np.uint8)
        big = Image.fromarray(grey).resize((size, size), Image.NEAREST).convert("RGB")
        big.save(os.path.join(out_dir, "images", f"{name}.png"))
        label = int(targets[index])
        records.append({"id": name, "image": f"images/{name}.png", "conversations": [
            {"from": "human", "value": f"<image>{QUESTION}"},
            {"from": "gpt", "value": str(label) if answer == "number" else WORDS[label]}]})
    num_test = int(round(len(records) * held_out))
    split = {"train": records[num_test:], "test": records[:num_test]}
    paths = {}
    for name, part in split.items():
        paths[name] = os.path.join(out_dir, f"{name}.json")
        with open(paths[name], "w") as f:
            json.dump(part, f, indent=1)
    return {"dataset_dir": out_dir, "train": paths["train"], "test": paths["test"],
            "num_train": len(split["train"]), "num_test": num_test}
