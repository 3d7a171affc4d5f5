"""Converters: LLaVA-Instruct and Qwen-VL (<img>, <ref>, <box>) to the messages format, boxes per target model."""
import json

import pytest
from click.testing import CliRunner

from data_helpers import write_image, write_json
from mmx.cli import main
from mmx.data.convert import ConvertError, convert_file
from mmx.data.errors import BadSampleLog
from mmx.data.formats import load_samples

LLAVA = [
    {"id": "000000033471", "image": "000000033471.jpg", "conversations": [
        {"from": "human", "value": "<image>\nWhat are the colors of the bus in the image?"},
        {"from": "gpt", "value": "The bus in the image is white and red."},
        {"from": "human", "value": "What feature can be seen on the back of the bus?"},
        {"from": "gpt", "value": "The back of the bus features an advertisement."}]},
    {"id": "text-1", "conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello"}]},
]
QWEN_VL = [
    {"id": "identity_0", "conversations": [{"from": "user", "value": "你好"},
                                          {"from": "assistant", "value": "我是Qwen-VL,一个支持视觉输入的大模型。"}]},
    {"id": "identity_1", "conversations": [
        {"from": "user", "value": "Picture 1: <img>assets/demo.png</img>\n图中的狗是什么品种?"},
        {"from": "assistant", "value": "图中是一只拉布拉多犬。"},
        {"from": "user", "value": "框出图中的格子衬衫"},
        {"from": "assistant", "value": "<ref>格子衬衫</ref><box>(588,499),(725,789)</box>"}]},
    {"id": "identity_2", "conversations": [
        {"from": "user", "value": "Picture 1: <img>assets/a.png</img>\nPicture 2: <img>assets/b.png</img>\n图中都是哪"},
        {"from": "assistant", "value": "两只狗<box>(0,0),(500,1000)</box><box>(500,0),(999,999)</box>"}]},
]


def test_llava(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)   # --image-dir is a command-line path: relative to the working directory
    source = write_json(tmp_path / "llava_instruct_150k.json", LLAVA)
    out = tmp_path / "out" / "mllm_format_llava_instruct_data.json"
    result = CliRunner().invoke(main, ["data", "convert", "--from", "llava", "--input", source, "--output",
                                       str(out), "--image-dir", "COCO2017/train2017"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output.strip().splitlines()[-1]) == {"converted": 2, "skipped": 0, "errors": [],
                                                                  "from": "llava"}
    records = json.loads(out.read_text())   # images relative to the output file's folder (docs/data.md)
    assert records[0] == {"id": "000000033471", "images": ["../COCO2017/train2017/000000033471.jpg"], "messages": [
        {"role": "user", "content": "<image>\nWhat are the colors of the bus in the image?"},
        {"role": "assistant", "content": "The bus in the image is white and red."},
        {"role": "user", "content": "What feature can be seen on the back of the bus?"},
        {"role": "assistant", "content": "The back of the bus features an advertisement."}]}
    assert records[1] == {"id": "text-1", "messages": [{"role": "user", "content": "Hi"},
                                                       {"role": "assistant", "content": "Hello"}]}
    # the converted file reads back as samples (no dataset_dir: images relative to the dataset file)
    (tmp_path / "COCO2017" / "train2017").mkdir(parents=True)
    write_image(tmp_path / "COCO2017" / "train2017" / "000000033471.jpg", 28, 28)
    samples = load_samples(str(out), BadSampleLog(False))
    assert samples[0]["images"] == [str(tmp_path / "COCO2017" / "train2017" / "000000033471.jpg")]


def test_llava_bad_record_names_it(tmp_path):
    source = write_json(tmp_path / "in.json", [dict(LLAVA[0], id="x", image="a.jpg", conversations=[
        {"from": "human", "value": "no placeholder"}, {"from": "gpt", "value": "y"}])])
    with pytest.raises(ConvertError, match=r"in\.json record 'x': has an image but 0 <image> placeholders"):
        convert_file("llava", source, str(tmp_path / "out.json"))
    result = convert_file("llava", source, str(tmp_path / "out.jsonl"), skip_bad=True)
    assert (result["converted"], result["skipped"]) == (0, 1)
    broken = tmp_path / "in.jsonl"
    broken.write_text(json.dumps(LLAVA[1]) + "\n{oops\n")
    with pytest.raises(ConvertError, match=r"in\.jsonl:2: malformed JSON"):
        convert_file("llava", str(broken), str(tmp_path / "out2.json"))


def test_qwen_vl_boxes_for_qwen2_vl(tmp_path):
    source = write_json(tmp_path / "qwen_vl.json", QWEN_VL)
    out = str(tmp_path / "out.jsonl")
    assert convert_file("qwen-vl", source, out, target="qwen2_vl")["converted"] == 3
    records = [json.loads(line) for line in open(out)]
    assert "images" not in records[0]
    assert records[1]["images"] == ["assets/demo.png"]
    assert records[1]["messages"][0]["content"] == "<image>图中的狗是什么品种?"
    assert records[1]["messages"][3]["content"] == ("<|object_ref_start|>格子衬衫<|object_ref_end|>"
                                                    "<|box_start|>(588,499),(725,789)<|box_end|>")
    assert records[2]["images"] == ["assets/a.png", "assets/b.png"]
    assert records[2]["messages"][0]["content"] == "<image><image>图中都是哪"
    assert records[2]["messages"][1]["content"] == ("两只狗<|box_start|>(0,0),(500,1000)<|box_end|>"
                                                    "<|box_start|>(500,0),(999,999)<|box_end|>")


def test_qwen_vl_boxes_for_qwen2_5_vl_are_absolute_resized_pixels(tmp_path, model_dirs):
    (tmp_path / "assets").mkdir()
    write_image(tmp_path / "assets" / "demo.png", 100, 200)   # H 100, W 200
    write_image(tmp_path / "assets" / "a.png", 56, 56)
    write_image(tmp_path / "assets" / "b.png", 200, 100)      # boxes refer to the latest image: this one
    source = write_json(tmp_path / "qwen_vl.json", QWEN_VL)
    out = str(tmp_path / "out.json")
    convert_file("qwen-vl", source, out, target="qwen2_5_vl", model_dir=model_dirs["qwen2_5_vl"])
    records = json.load(open(out))
    # tiny processor: min 56*56, max 56*84 px, factor 28. 100x200 → smart_resize → 28x84:
    # x = round(588/1000*84) = 49, y = round(499/1000*28) = 14, x2 = round(.725*84) = 61, y2 = round(.789*28) = 22
    assert records[1]["messages"][3]["content"] == '{"bbox_2d": [49, 14, 61, 22], "label": "格子衬衫"}'
    # 200x100 (H x W) → 84x28: (0,0),(500,1000) → [0, 0, 14, 84]; (500,0),(999,999) → [14, 0, 28, 84]
    assert records[2]["messages"][1]["content"] == '两只狗{"bbox_2d": [0, 0, 14, 84]}, {"bbox_2d": [14, 0, 28, 84]}'
    # the numbers are the pixel grid the processor really produces for that image
    from PIL import Image
    from transformers import AutoProcessor
    processor = AutoProcessor.from_pretrained(model_dirs["qwen2_5_vl"])
    grid = processor.image_processor(images=[Image.open(tmp_path / "assets" / "demo.png")],
                                     return_tensors="np")["image_grid_thw"]
    assert (grid[0][1] * 14, grid[0][2] * 14) == (28, 84)


def test_qwen2_5_vl_target_needs_the_model_dir(tmp_path):
    source = write_json(tmp_path / "qwen_vl.json", QWEN_VL)
    with pytest.raises(ValueError, match="--target qwen2_5_vl .* needs --model-dir"):
        convert_file("qwen-vl", source, str(tmp_path / "o.json"), target="qwen2_5_vl")


def test_qwen_vl_boxes_for_qwen3_vl_stay_relative_0_1000(tmp_path):
    """Qwen3-VL grounds on the 0-1000 grid of the original image: the numbers pass through as JSON objects, with no
    processor, no --model-dir and no image read (the images named here do not exist)."""
    records = QWEN_VL + [
        {"id": "ref_only", "conversations": [
            {"from": "user", "value": "Picture 1: <img>assets/c.png</img>\n<ref>the dog</ref>在哪里?"},
            {"from": "assistant", "value": "<ref>the dog</ref><box>(5,10),(300,400)</box>, "
                                           "<ref>两只猫</ref><box>(10,20),(30,40)</box><box>(50,60),(70,80)</box>"}]},
        {"id": "no_image", "conversations": [{"from": "user", "value": "框出<ref>左上角</ref>"},
                                             {"from": "assistant", "value": "<box>(0,0),(99,99)</box>"}]}]
    source = write_json(tmp_path / "qwen_vl.json", records)
    out = str(tmp_path / "out.jsonl")
    result = CliRunner().invoke(main, ["data", "convert", "--from", "qwen-vl", "--target", "qwen3_vl", "--input",
                                       source, "--output", out])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output.strip().splitlines()[-1]) == {"converted": 5, "skipped": 0, "errors": [],
                                                                  "from": "qwen-vl", "target": "qwen3_vl"}
    converted = [json.loads(line) for line in open(out)]
    assert converted[0] == {"id": "identity_0", "messages": [
        {"role": "user", "content": "你好"}, {"role": "assistant", "content": "我是Qwen-VL,一个支持视觉输入的大模型。"}]}
    assert converted[1]["images"] == ["assets/demo.png"]
    assert converted[1]["messages"][3]["content"] == '{"bbox_2d": [588, 499, 725, 789], "label": "格子衬衫"}'
    # boxes without a <ref>: one object each, no label
    assert converted[2]["images"] == ["assets/a.png", "assets/b.png"]
    assert converted[2]["messages"][1]["content"] == ('两只狗{"bbox_2d": [0, 0, 500, 1000]}, '
                                                      '{"bbox_2d": [500, 0, 999, 999]}')
    # a <ref> without a box keeps its text; two boxes after one <ref> both carry its label
    assert converted[3]["messages"][0]["content"] == "<image>the dog在哪里?"
    assert converted[3]["messages"][1]["content"] == (
        '{"bbox_2d": [5, 10, 300, 400], "label": "the dog"}, {"bbox_2d": [10, 20, 30, 40], "label": "两只猫"}, '
        '{"bbox_2d": [50, 60, 70, 80], "label": "两只猫"}')
    # relative numbers need no image
    assert "images" not in converted[4]
    assert [m["content"] for m in converted[4]["messages"]] == ["框出左上角", '{"bbox_2d": [0, 0, 99, 99]}']


def test_a_ref_without_box_then_a_grounded_ref():
    """The label is the <ref> right before the boxes (never text across an earlier </ref>); qwen2_vl keeps a
    box-less <ref> as is, qwen3_vl keeps its text."""
    from mmx.data.convert import BoxWriter

    text = "框出<ref>左上角</ref>: <ref>a</ref><box>(1,2),(3,4)</box>"
    assert BoxWriter("qwen2_vl").rewrite(text, None) == ("框出<ref>左上角</ref>: <|object_ref_start|>a<|object_ref_end|>"
                                                         "<|box_start|>(1,2),(3,4)<|box_end|>")
    assert BoxWriter("qwen3_vl").rewrite(text, None) == '框出左上角: {"bbox_2d": [1, 2, 3, 4], "label": "a"}'


def test_cli_targets_are_the_converters():
    from mmx.cli.data_cmd import convert_command
    from mmx.data.convert import TARGETS

    choice = next(p for p in convert_command.params if p.name == "target").type
    assert tuple(choice.choices) == TARGETS
