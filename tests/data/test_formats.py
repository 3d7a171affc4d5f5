"""Record styles (mllm conversations, messages, attr), media path resolution and every bad-input message."""
import json

import pytest

from data_helpers import write_image, write_json
from mmx.data.errors import BadSampleLog, DataError
from mmx.data.formats import check_attr, load_samples, to_sample


def _mllm(**extra):
    return dict({"id": "s1", "image": "a.png", "conversations": [
        {"from": "human", "value": "<image>\nWhat is it?"}, {"from": "gpt", "value": "A cat."}]}, **extra)


def test_mllm_format_with_image(tmp_path):
    write_image(tmp_path / "a.png", 28, 28)
    sample = to_sample(_mllm(), str(tmp_path / "d.json"), 0)
    assert sample["id"] == "s1"
    assert sample["messages"] == [{"role": "user", "content": "<image>\nWhat is it?"},
                                  {"role": "assistant", "content": "A cat."}]
    assert sample["images"] == [str(tmp_path / "a.png")] and sample["videos"] == []


def test_text_only_and_system_and_qwen_roles(tmp_path):
    record = {"id": 7, "system": "Be brief.", "conversations": [{"from": "user", "value": "Hi"},
                                                                  {"from": "assistant", "value": "Hello"}]}
    sample = to_sample(record, str(tmp_path / "d.json"), 0)
    assert sample["id"] == "7" and sample["images"] == [] and sample["videos"] == []
    assert [m["role"] for m in sample["messages"]] == ["system", "user", "assistant"]


def test_messages_style_with_parts_and_dataset_dir(tmp_path):
    (tmp_path / "media").mkdir()
    write_image(tmp_path / "media" / "b.png", 28, 28)
    record = {"messages": [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Who?"}]},
                           {"role": "assistant", "content": "Kane."}], "images": ["b.png"]}
    sample = to_sample(record, str(tmp_path / "d.json"), 3, media_root=str(tmp_path / "media"))
    assert sample["id"] == "#3"
    assert sample["messages"][0]["content"] == "<image>Who?"
    assert sample["images"] == [str(tmp_path / "media" / "b.png")]


def test_attr_mapping_custom_keys(tmp_path):
    attr = check_attr({"messages": "dialog", "role_tag": "speaker", "content_tag": "text", "user_tag": "Q",
                       "assistant_tag": "A", "images": "pics"}, "cfg")
    record = {"dialog": [{"speaker": "Q", "text": "hi"}, {"speaker": "A", "text": "yo"}], "pics": []}
    sample = to_sample(record, str(tmp_path / "d.json"), 0, attr=attr)
    assert sample["messages"] == [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]
    with pytest.raises(ValueError, match="unknown attr key.*'rolez'"):
        check_attr({"rolez": "x"}, "cfg")
    with pytest.raises(DataError, match="unknown role 'human'"):
        to_sample({"dialog": [{"speaker": "human", "text": "hi"}]}, "d.json", 0, attr=attr)


@pytest.mark.parametrize("record, pattern", [
    (_mllm(image=["a.png", "a.png"]), r"d\.json sample 's1': 1 <image> placeholder\(s\) in the text but 2 image"),
    ({"id": "v", "video": "clip.mp4", "conversations": [{"from": "human", "value": "hi"}, {"from": "gpt",
                                                                                       "value": "x"}]},
     r"sample 'v': 0 <video> placeholder\(s\) in the text but 1 video"),
    (_mllm(image="missing.png"), r"sample 's1': image .*missing\.png not found"),
    ({"id": "n", "conversations": []}, r"sample 'n': no conversation"),
    ({"id": "q", "conversations": [{"from": "human", "value": "hi"}]}, r"sample 'q': no assistant turn"),
    ({"id": "r", "conversations": [{"from": "robot", "value": "hi"}]}, r"sample 'r': turn 0 has unknown role"),
    (["not", "a", "dict"], r"sample '#0': a sample must be a JSON object"),
])
def test_bad_records_name_file_sample_and_problem(tmp_path, record, pattern):
    write_image(tmp_path / "a.png", 28, 28)
    with pytest.raises(DataError, match=pattern):
        to_sample(record, str(tmp_path / "d.json"), 0)


def test_malformed_jsonl_names_the_line_and_skip_counts(tmp_path):
    write_image(tmp_path / "a.png", 28, 28)
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps(_mllm()) + "\n" + '{"id": "broken", "conversations": [\n' +
                    json.dumps(_mllm(id="s3", image="gone.png")) + "\n" + json.dumps(_mllm(id="s4")) + "\n")
    with pytest.raises(DataError, match=r"d\.jsonl:2: malformed JSON"):
        load_samples(str(path), BadSampleLog(skip=False))
    log = BadSampleLog(skip=True)
    samples = load_samples(str(path), log)
    assert [s["id"] for s in samples] == ["s1", "s4"]
    assert log.summary()["by_kind"] == {"malformed_json": 1, "missing_media": 1}
    assert any("d.jsonl:2" in m for m in log.messages) and any("'s3'" in m for m in log.messages)


def test_malformed_json_array_names_the_line(tmp_path):
    path = tmp_path / "d.json"
    path.write_text('[\n {"id": "a",\n  "conversations": [}\n]\n')
    with pytest.raises(DataError, match=r"d\.json:3: malformed JSON"):
        load_samples(str(path), BadSampleLog(skip=False))


def test_max_samples_and_missing_file(tmp_path):
    write_image(tmp_path / "a.png", 28, 28)
    path = write_json(tmp_path / "d.json", [_mllm(id=str(i)) for i in range(5)])
    assert [s["id"] for s in load_samples(path, BadSampleLog(False), max_samples=2)] == ["0", "1"]
    with pytest.raises(DataError, match="nope.json: dataset file not found"):
        load_samples(str(tmp_path / "nope.json"), BadSampleLog(False))
