"""Encoding with the model dir's processor and chat template: labels per template, vision tokens, truncation, video."""
import numpy as np
import pytest

from data_helpers import data_config, write_image, write_json
from mmx.data.errors import DataError
from mmx.data.formats import to_sample
from mmx.data.processing import IGNORE_INDEX, Preprocessor

FAMILIES = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl")
TWO_TURNS = {"id": "t2", "image": "small.png", "conversations": [
    {"from": "human", "value": "<image>What is in the picture?"}, {"from": "gpt", "value": "two dogs"},
    {"from": "human", "value": "yes?"}, {"from": "gpt", "value": "no"}]}


def _encode(model_dir, mixed_dir, record, **keys):
    pre = Preprocessor(data_config(model_dir, str(mixed_dir / "data.json"), **keys))
    return pre, pre.encode(to_sample(record, str(mixed_dir / "data.json"), 0))


def _supervised_runs(pre, encoded):
    """Decoded text of each run of consecutive supervised tokens."""
    labels = encoded["labels"]
    runs, current = [], []
    for token, label in zip(encoded["input_ids"], labels):
        if label != IGNORE_INDEX:
            assert label == token
            current.append(int(token))
        elif current:
            runs.append(current)
            current = []
    if current:
        runs.append(current)
    return [pre.tokenizer.decode(run) for run in runs]


@pytest.mark.parametrize("family", FAMILIES)
def test_labels_supervise_assistant_turns_only(model_dirs, mixed_dir, family):
    pre, encoded = _encode(model_dirs[family], mixed_dir, TWO_TURNS)
    assert _supervised_runs(pre, encoded) == ["two dogs<|im_end|>\n", "no<|im_end|>\n"]
    # the prompt, including the system prompt the Qwen2 templates insert (Qwen3-VL's has none), is not supervised
    text = pre.tokenizer.decode(encoded["input_ids"])
    system = "" if family == "qwen3_vl" else "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    assert text.startswith(system + "<|im_start|>user\n")
    # the ids are exactly what the processor gives for the rendered conversation
    rendered = pre.render([{"role": "user", "content": [{"type": "image"}, {"type": "text",
                                                                           "text": "What is in the picture?"}]},
                           {"role": "assistant", "content": [{"type": "text", "text": "two dogs"}]},
                           {"role": "user", "content": [{"type": "text", "text": "yes?"}]},
                           {"role": "assistant", "content": [{"type": "text", "text": "no"}]}])
    from PIL import Image
    reference = pre.processor(text=[rendered], images=[Image.open(mixed_dir / "small.png").convert("RGB")],
                              return_tensors="np")
    np.testing.assert_array_equal(encoded["input_ids"], reference["input_ids"][0])
    np.testing.assert_array_equal(encoded["pixel_values"], reference["pixel_values"])
    np.testing.assert_array_equal(encoded["image_grid_thw"], reference["image_grid_thw"])


@pytest.mark.parametrize("family", FAMILIES)
def test_mask_history_and_train_on_prompt(model_dirs, mixed_dir, family):
    pre, encoded = _encode(model_dirs[family], mixed_dir, TWO_TURNS, mask_history=True)
    assert _supervised_runs(pre, encoded) == ["no<|im_end|>\n"]
    pre, encoded = _encode(model_dirs[family], mixed_dir, TWO_TURNS, train_on_prompt=True)
    vision = encoded["input_ids"] == pre.image_token_id
    assert (encoded["labels"][vision] == IGNORE_INDEX).all()
    np.testing.assert_array_equal(encoded["labels"][~vision], encoded["input_ids"][~vision])


def test_image_tokens_match_grid(model_dirs, mixed_dir):
    pre, encoded = _encode(model_dirs["qwen2_5_vl"], mixed_dir, dict(TWO_TURNS, image="wide.png"))
    grid = encoded["image_grid_thw"]
    assert grid.tolist() == [[1, 4, 6]]                  # 60x90 → 56x84 pixels → 4x6 patches of 14
    assert int((encoded["input_ids"] == pre.image_token_id).sum()) == int(grid.prod()) // 4
    assert encoded["pixel_values"].shape == (24, 3 * 2 * 14 * 14)
    # image_max_pixels reaches the processor: 60x90 under 28*28*4 px → 28x56 → 2x4 patches
    _, smaller = _encode(model_dirs["qwen2_5_vl"], mixed_dir, dict(TWO_TURNS, image="wide.png"),
                         image_max_pixels=28 * 28 * 4)
    assert smaller["image_grid_thw"].tolist() == [[1, 2, 4]]


def test_truncation_never_cuts_an_image(model_dirs, mixed_dir):
    long_answer = {"id": "long", "image": "small.png", "conversations": [
        {"from": "human", "value": "<image>Describe."}, {"from": "gpt", "value": "a cat " * 30}]}
    pre, full = _encode(model_dirs["qwen2_5_vl"], mixed_dir, long_answer, cutoff_len=4096)
    first_label = int(np.nonzero(full["labels"] != IGNORE_INDEX)[0][0])
    # a cut inside the answer keeps the first cutoff_len tokens
    _, cut = _encode(model_dirs["qwen2_5_vl"], mixed_dir, long_answer, cutoff_len=first_label + 5)
    np.testing.assert_array_equal(cut["input_ids"], full["input_ids"][:first_label + 5])
    np.testing.assert_array_equal(cut["labels"], full["labels"][:first_label + 5])
    # a cut through the image drops the sample with a message naming it
    with pytest.raises(DataError, match=r"sample 'long': \d+ tokens > cutoff_len 20 and its image/video tokens "
                                        r"reach position \d+; dropped") as err:
        _encode(model_dirs["qwen2_5_vl"], mixed_dir, long_answer, cutoff_len=20)
    assert err.value.kind == "cut_through_image"
    # a cut before the answer leaves nothing to learn: dropped too
    with pytest.raises(DataError, match="no supervised token within cutoff_len"):
        _encode(model_dirs["qwen2_5_vl"], mixed_dir, long_answer, cutoff_len=first_label)


@pytest.mark.parametrize("video", ["clip", "clip.mp4"])
def test_video_from_frame_folder_and_file(model_dirs, mixed_dir, video):
    record = {"id": "v", "video": video, "conversations": [{"from": "human", "value": "<video>What?"},
                                                            {"from": "gpt", "value": "A ball."}]}
    # frame folder: 4 frames at frame_folder_fps 2 → all kept at video_fps 2; mp4: 8 frames at 4 fps → every 2nd
    pre, encoded = _encode(model_dirs["qwen2_5_vl"], mixed_dir, record, video_fps=2.0)
    assert encoded["video_grid_thw"].tolist() == [[2, 4, 4]]     # 4 frames / temporal patch 2; 56x56 → 4x4
    assert int((encoded["input_ids"] == pre.video_token_id).sum()) == 2 * 4 * 4 // 4
    np.testing.assert_allclose(encoded["second_per_grid_ts"], [1.0])   # 2 frames per grid step at 2 fps
    _, capped = _encode(model_dirs["qwen2_5_vl"], mixed_dir, record, video_fps=100.0, video_maxlen=2)
    assert capped["video_grid_thw"].tolist() == [[1, 4, 4]]


def test_corrupt_media_messages(model_dirs, mixed_dir, tmp_path):
    (tmp_path / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    (tmp_path / "bad.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42 garbage")
    write_image(tmp_path / "ok.png", 28, 28)
    path = write_json(tmp_path / "d.json", [])
    pre = Preprocessor(data_config(model_dirs["qwen2_5_vl"], path))
    image = to_sample({"id": "img", "image": "bad.png", "conversations": [
        {"from": "human", "value": "<image>?"}, {"from": "gpt", "value": "x"}]}, path, 0)
    with pytest.raises(DataError, match=r"d\.json sample 'img': image .*bad\.png cannot be decoded"):
        pre.encode(image)
    video = to_sample({"id": "vid", "video": "bad.mp4", "conversations": [
        {"from": "human", "value": "<video>?"}, {"from": "gpt", "value": "x"}]}, path, 0)
    with pytest.raises(DataError, match=r"d\.json sample 'vid': video .*bad\.mp4 cannot be decoded"):
        pre.encode(video)


def test_qwen3_vl_video_gets_its_timestamps(model_dirs, mixed_dir):
    """Qwen3-VL's processor writes one timestamp per temporal patch from the loader's fps (frame folder at
    frame_folder_fps 2: frames at 0, 0.5, 1, 1.5 s → patches centred at 0.25 s and 1.25 s, printed "%.1f")."""
    record = {"id": "v", "video": "clip", "conversations": [{"from": "human", "value": "<video>Describe."},
                                                            {"from": "gpt", "value": "A red ball."}]}
    pre, encoded = _encode(model_dirs["qwen3_vl"], mixed_dir, record, frame_folder_fps=2.0)
    text = pre.tokenizer.decode(encoded["input_ids"])
    pads = "<|video_pad|>" * 4
    assert (f"<|vision_start|><0.2 seconds><|vision_start|>{pads}<|vision_end|><1.2 seconds><|vision_start|>{pads}"
            f"<|vision_end|><|vision_end|>Describe.") in text
    assert encoded["video_grid_thw"].tolist() == [[2, 4, 4]]
    assert _supervised_runs(pre, encoded) == ["A red ball.<|im_end|>\n"]


def test_glm4v_labels_thinking_answers_and_turn_ends(model_dirs, mixed_dir):
    """GLM-4.1V's hub template closes no assistant turn itself: each answer is supervised with the <|user|> that
    follows it (appended after the last one; a stop id of its generation config), thinking-style answers are plain
    answer text, and the ids are the processor's for the rendered conversation."""
    record = dict(TWO_TURNS, conversations=[TWO_TURNS["conversations"][0],
                                            {"from": "gpt", "value": "<think>dogs</think><answer>two dogs</answer>"},
                                            *TWO_TURNS["conversations"][2:]])
    pre, encoded = _encode(model_dirs["glm4v"], mixed_dir, record)
    assert pre.turn_end == "<|user|>"
    assert _supervised_runs(pre, encoded) == ["<think>dogs</think><answer>two dogs</answer><|user|>", "no<|user|>"]
    think = pre.tokenizer.convert_tokens_to_ids("<think>")
    assert think in encoded["input_ids"].tolist() and think in encoded["labels"].tolist()   # one token, trained
    text = pre.tokenizer.decode(encoded["input_ids"])
    assert text.startswith("[gMASK]<sop><|user|>\n<|begin_of_image|>" + "<|image|>" * 4 + "<|end_of_image|>")
    rendered = pre.render([{"role": "user", "content": [{"type": "image"}, {"type": "text",
                                                                           "text": "What is in the picture?"}]},
                           {"role": "assistant", "content": "<think>dogs</think><answer>two dogs</answer>"},
                           {"role": "user", "content": "yes?"}, {"role": "assistant", "content": "no"}])
    from PIL import Image
    reference = pre.processor(text=[rendered + "<|user|>"],
                              images=[Image.open(mixed_dir / "small.png").convert("RGB")], return_tensors="np")
    np.testing.assert_array_equal(encoded["input_ids"], reference["input_ids"][0])
    np.testing.assert_array_equal(encoded["pixel_values"], reference["pixel_values"])
    _, history = _encode(model_dirs["glm4v"], mixed_dir, record, mask_history=True)
    assert _supervised_runs(pre, history) == ["no<|user|>"]


def test_glm4v_video_frames_are_image_runs_with_integer_timestamps(model_dirs, mixed_dir):
    """GLM's processor writes each temporal patch as <|begin_of_image|> <|image|>... <|end_of_image|> followed by
    its integer-second timestamp, inside <|begin_of_video|> ... <|end_of_video|>; the model's token types mark
    those <|image|> tokens as video (what Glm4vProcessor's mm_token_type_ids say)."""
    from mmx import models
    from mmx.models.common.positions import VIDEO, token_types

    record = {"id": "v", "video": "clip", "conversations": [{"from": "human", "value": "<video>Describe."},
                                                            {"from": "gpt", "value": "A red ball."}]}
    pre, encoded = _encode(model_dirs["glm4v"], mixed_dir, record, frame_folder_fps=2.0)
    frame = "<|begin_of_image|>" + "<|image|>" * 4 + "<|end_of_image|>"
    text = pre.tokenizer.decode(encoded["input_ids"])
    assert f"<|begin_of_video|>{frame}0{frame}1<|end_of_video|>Describe.<|assistant|>" in text
    assert encoded["video_grid_thw"].tolist() == [[2, 4, 4]]
    types = token_types(encoded["input_ids"][None], models.config_from_hf(model_dirs["glm4v"]))[0]
    assert int((types == VIDEO).sum()) == 8 and (encoded["labels"][types == VIDEO] == IGNORE_INDEX).all()
    assert _supervised_runs(pre, encoded) == ["A red ball.<|user|>"]


def test_internvl_tiles_and_video_frames(model_dirs, mixed_dir):
    """InternVL3's processor through the pipeline: a 60x90 image is 2 tiles + a thumbnail, <img> + <IMG_CONTEXT> x
    image_seq_length per tile + </img>; a video is one `FrameN: <img>...</img>` line per frame, its tiles in
    pixel_values; labels as for Qwen2 (the answer and <|im_end|>\\n), the ids and pixels the processor's own."""
    from PIL import Image

    record = dict(TWO_TURNS, image="wide.png")
    pre, encoded = _encode(model_dirs["internvl"], mixed_dir, record)
    assert _supervised_runs(pre, encoded) == ["two dogs<|im_end|>\n", "no<|im_end|>\n"]
    context = "<IMG_CONTEXT>" * pre.processor.image_seq_length
    text = pre.tokenizer.decode(encoded["input_ids"])
    assert f"<|im_start|>user\n<img>{context * 3}</img>\nWhat is in the picture?<|im_end|>" in text
    assert encoded["pixel_values"].shape == (3, 3, 56, 56) and "image_grid_thw" not in encoded
    rendered = pre.render([{"role": "user", "content": [{"type": "image"}, {"type": "text",
                                                                           "text": "What is in the picture?"}]},
                           {"role": "assistant", "content": "two dogs"}, {"role": "user", "content": "yes?"},
                           {"role": "assistant", "content": "no"}])
    reference = pre.processor(text=[rendered], images=[Image.open(mixed_dir / "wide.png").convert("RGB")],
                              return_tensors="np")
    np.testing.assert_array_equal(encoded["input_ids"], reference["input_ids"][0])
    np.testing.assert_array_equal(encoded["pixel_values"], reference["pixel_values"])
    video = {"id": "v", "video": "clip", "conversations": [{"from": "human", "value": "<video>Describe."},
                                                           {"from": "gpt", "value": "A red ball."}]}
    pre, encoded = _encode(model_dirs["internvl"], mixed_dir, video, frame_folder_fps=2.0)
    frames = "\n".join(f"Frame{i}: <img>{context}</img>" for i in (1, 2, 3, 4))
    assert f"<|im_start|>user\n{frames}\nDescribe.<|im_end|>" in pre.tokenizer.decode(encoded["input_ids"])
    assert encoded["pixel_values"].shape == (4, 3, 56, 56)
    assert _supervised_runs(pre, encoded) == ["A red ball.<|im_end|>\n"]
    _, history = _encode(model_dirs["internvl"], mixed_dir, record, mask_history=True)
    assert _supervised_runs(pre, history) == ["no<|im_end|>\n"]
    with pytest.raises(ValueError, match="max_patches"):
        _encode(model_dirs["internvl"], mixed_dir, record, image_max_pixels=100000)
