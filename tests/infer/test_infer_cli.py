"""``mmx infer`` end to end: stdout holds only the generated text; mm checkpoints in a TP/PP layout and their HF
export decode like the HF source; ``--config inference.json`` writes JSONL; ``--chat`` keeps earlier images."""
import json
import os

import numpy as np
import pytest
from click.testing import CliRunner

from mmx.cli import main
from mmx.convert.drivers import hf_to_mm, mm_to_hf
from mmx.infer import batch, chat, loading

from infer_helpers import MAX_NEW_TOKENS, Reference, conversation

BACKEND = os.environ.get("MMX_BACKEND", "torch")


def run_cli(*args):
    result = CliRunner().invoke(main, ["infer", "--backend", BACKEND, *map(str, args)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result


def test_mm_layout_and_hf_export_decode_like_the_source(tmp_path, hf_dir, reference, media):
    source = hf_dir("qwen2_5_vl")
    mm_dir, exported = tmp_path / "mm", tmp_path / "exported"
    hf_to_mm(source, mm_dir, tp_size=2, vit_pp_layers="3,0", llm_pp_layers="1,1")
    assert os.path.isdir(mm_dir / "release" / "mp_rank_01_001")
    merged, original = loading.read_tensors(mm_dir), loading.read_tensors(source)
    assert sorted(merged) == sorted(original)
    assert all(np.array_equal(merged[name], original[name]) for name in original)

    want_tokens = reference("qwen2_5_vl").greedy([conversation("image", media)])[0]
    tokenizer = reference("qwen2_5_vl").processor.tokenizer
    want = tokenizer.decode(want_tokens, skip_special_tokens=True) + "\n"
    args = ["--image", media["a"], "--prompt", "Describe the image.", "--max-new-tokens", MAX_NEW_TOKENS, "--greedy"]
    result = run_cli("--model", mm_dir, *args)
    assert result.stdout == want                       # only the generated text; logs went to stderr
    assert "loading" in result.stderr

    # The export holds the same tensors, so mmx decodes it like the source; transformers must too.
    mm_to_hf(mm_dir, exported)
    reexported = loading.read_tensors(exported)
    assert all(np.array_equal(reexported[name], original[name]) for name in original)
    assert Reference(str(exported)).greedy([conversation("image", media)])[0] == want_tokens


def test_config_batch_writes_jsonl(tmp_path, hf_dir, reference, media):
    prompts = ["Describe the image.", "What is in the picture? Answer the question with a short sentence."]
    config = tmp_path / "inference.json"
    config.write_text(json.dumps({"infer_data_type": "image", "file_path": media["a"], "prompts": prompts,
                                  "model_id": "InternVLPipeline", "max_new_tokens": MAX_NEW_TOKENS}))
    out = tmp_path / "results.jsonl"
    run_cli("--model", hf_dir("qwen2_vl"), "--config", config, "--output", out, "--batch-size", 2, "--greedy")
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [record["prompt"] for record in records] == prompts
    from mmx.infer import user_message
    for record, prompt in zip(records, prompts):
        want = reference("qwen2_vl").greedy([[user_message(prompt, images=[media["a"]])]])[0]
        assert record["token_ids"] == want
        assert record["file_path"] == media["a"] and record["infer_data_type"] == "image"


def test_config_errors_name_the_key(tmp_path):
    config = tmp_path / "inference.json"
    cases = [({"infer_data_type": "image", "prompts": "x"}, "'file_path' is missing"),
             ({"infer_data_type": "audio", "prompts": "x"}, "infer_data_type 'audio'"),
             ({"infer_data_type": "image", "file_path": ["a", "b"], "prompts": ["x", "y", "z"]},
              "3 prompts and 2 file paths"),
             ({"infer_data_type": "text"}, "'prompts' is missing")]
    for content, message in cases:
        config.write_text(json.dumps(content))
        with pytest.raises(ValueError, match=message):
            batch.read_requests(config)
    config.write_text(json.dumps({"infer_data_type": "video", "file_path": ["v1.mp4", "v2.mp4"], "prompts": "Hi"}))
    requests, _ = batch.read_requests(config)
    assert [r["file_path"] for r in requests] == [str(tmp_path / "v1.mp4"), str(tmp_path / "v2.mp4")]
    assert [r["prompt"] for r in requests] == ["Hi", "Hi"]


def test_cli_rejects_ambiguous_modes(hf_dir):
    result = CliRunner().invoke(main, ["infer", "--model", hf_dir("qwen2_vl"), "--prompt", "x", "--chat"])
    assert result.exit_code == 2 and "exactly one of --prompt, --config or --chat" in result.output


class Writes:
    """A text stream that keeps each write apart (a reply may itself contain newlines)."""

    def __init__(self):
        self.writes = []

    def write(self, text):
        self.writes.append(text)

    def flush(self):
        pass


@pytest.mark.parametrize("family", ["qwen2_vl", "qwen3_vl"])
def test_chat_keeps_images_from_earlier_turns(pipeline, reference, media, family):
    out = Writes()
    lines = ["Describe the image.", "/unknown", "What is in the picture?", "/exit", "never read"]
    history = chat.run(pipeline(family), lines, out, images=[media["a"]], max_new_tokens=MAX_NEW_TOKENS,
                       do_sample=False)
    assert len(out.writes) == 2, out.writes
    first, second = (write[:-1] for write in out.writes)      # each reply is written with one newline
    assert [message["role"] for message in history] == ["user", "assistant", "user", "assistant"]
    assert history[0]["content"][0] == {"type": "image", "image": media["a"]}
    ref = reference(family)
    tokenizer = ref.processor.tokenizer
    turn_one = [conversation("image", media)[0]]
    assert first == tokenizer.decode(ref.greedy([turn_one])[0], skip_special_tokens=True)
    from mmx.infer import user_message
    turn_two = turn_one + [{"role": "assistant", "content": first}, user_message("What is in the picture?")]
    assert second == tokenizer.decode(ref.greedy([turn_two])[0], skip_special_tokens=True)


def test_bad_model_dir_and_media_are_named(tmp_path):
    from mmx.infer import prompts

    result = CliRunner().invoke(main, ["infer", "--model", str(tmp_path), "--prompt", "x"])
    assert result.exit_code == 2 and "neither an mm checkpoint" in result.output
    bad = tmp_path / "bad.png"
    bad.write_text("not an image")
    with pytest.raises(ValueError, match="bad.png cannot be read"):
        prompts.load_image(str(bad))
    with pytest.raises(ValueError, match="bad.png cannot be decoded with PyAV"):
        prompts.load_video(str(bad))
    with pytest.raises(ValueError, match="missing.png does not exist"):
        prompts.load_image(str(tmp_path / "missing.png"))


def _text_image(path):
    """An OCR-style image: dark text on a light 40x150 strip (InternVL cuts it into several tiles + a thumbnail)."""
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (150, 40), (235, 235, 225))
    ImageDraw.Draw(image).text((4, 12), "INVOICE 2026-12", fill=(10, 10, 10))
    image.save(path)
    return str(path)


@pytest.mark.parametrize("kind", ["image", "ocr", "video"])
def test_internvl_guide_inference_json(tmp_path, hf_dir, reference, media, kind):
    """The InternVL3 guide's inference_8B.json (infer_data_type / file_path / prompts, its model keys reported and
    not used) plus mmx's own generation keys: image, OCR-style and video prompts decode like transformers."""
    from mmx.infer import user_message

    file_path, prompt = {"image": (media["a"], "Please describe the image shortly."),
                         "ocr": (_text_image(tmp_path / "invoice.png"), "Read all the text in the image."),
                         "video": (media["clip"], "Please describe the video shortly.")}[kind]
    config = tmp_path / "inference_8B.json"
    config.write_text(json.dumps({
        "infer_data_type": "video" if kind == "video" else "image", "file_path": file_path, "prompts": prompt,
        "model_id": "InternVLPipeline", "from_pretrained": "./pretrained/InternVL3-8B/release/mp_rank_00/x.pt",
        "tokenizer": {"autotokenizer_name": "AutoTokenizer", "from_pretrained": hf_dir("internvl")},
        "max_new_tokens": MAX_NEW_TOKENS, "do_sample": False}))
    out = tmp_path / "results.jsonl"
    result = run_cli("--model", hf_dir("internvl"), "--config", config, "--output", out)
    assert "['from_pretrained', 'model_id', 'tokenizer']" in result.stderr
    [record] = [json.loads(line) for line in out.read_text().splitlines()]
    media_key = "videos" if kind == "video" else "images"
    want = reference("internvl").greedy([[user_message(prompt, **{media_key: [file_path]})]])[0]
    assert record["token_ids"] == want and len(want) == MAX_NEW_TOKENS
    assert record["prompt"] == prompt and record["file_path"] == file_path


def test_inference_json_generation_keys_are_type_checked(tmp_path):
    config = tmp_path / "inference.json"
    config.write_text(json.dumps({"infer_data_type": "text", "prompts": "x", "temperature": "hot"}))
    with pytest.raises(ValueError, match="temperature 'hot' must be int or float"):
        batch.read_requests(config)
    config.write_text(json.dumps({"infer_data_type": "text", "prompts": "x", "top_k": 5, "seed": 3}))
    assert batch.read_requests(config)[1] == {"top_k": 5, "seed": 3}
