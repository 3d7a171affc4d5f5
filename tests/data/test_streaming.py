"""Streaming: shards by rank and worker, deterministic shuffle buffer, and exact resume from a saved state."""
import dataclasses
import json

import pytest

from data_helpers import data_config, write_json
from mmx.data.collate import Collator
from mmx.data.errors import DataError
from mmx.data.processing import Preprocessor
from mmx.data.streaming import StreamingLoader


def _record(i):
    return {"id": f"r{i:03d}", "conversations": [{"from": "human", "value": f"Question {i}?"},
                                                 {"from": "gpt", "value": f"Answer {i}."}]}


@pytest.fixture(scope="module")
def stream(model_dirs, tmp_path_factory):
    root = tmp_path_factory.mktemp("stream")
    first = write_json(root / "a.jsonl", [_record(i) for i in range(30)], jsonl=True)
    second = write_json(root / "b.json", [_record(i) for i in range(30, 45)])
    config = data_config(model_dirs["qwen2_vl"], f"{first},{second}", streaming=True, buffer_size=6, seed=7)
    pre = Preprocessor(config)
    return config, pre, Collator(pre, ensure_vision=False)


def _ids(loader, batches):
    return [loader.next_batch()["sample_ids"].tolist() for _ in range(batches)]


def test_resume_gives_exactly_the_uninterrupted_batches(stream):
    config, pre, collate = stream
    # 2 ranks x 2 workers, batches of 3: 40 batches walk through several epochs of this rank's 12 records
    uninterrupted = _ids(StreamingLoader(config, pre, collate, 3, rank=1, world_size=2, num_workers=2), 40)
    for stop in (1, 5, 17):
        first = StreamingLoader(config, pre, collate, 3, rank=1, world_size=2, num_workers=2)
        head = _ids(first, stop)
        state = json.loads(json.dumps(first.state_dict()))     # what the checkpoint stores
        resumed = StreamingLoader(config, pre, collate, 3, rank=1, world_size=2, num_workers=2)
        resumed.load_state_dict(state)
        assert head + _ids(resumed, 40 - stop) == uninterrupted
    assert uninterrupted != _ids(StreamingLoader(config, pre, collate, 3, rank=0, world_size=2, num_workers=2), 40)


def test_resume_does_not_reread_consumed_lines(stream):
    config, pre, collate = stream
    loader = StreamingLoader(config, pre, collate, 2, num_workers=1)
    _ids(loader, 4)
    state = loader.state_dict()["shards"][0]["cursor"]
    # 8 yielded + 6 buffered = 14 lines of a.jsonl read; the cursor sits right after line 14
    assert (state["file"], state["line"], state["record"]) == (0, 14, 14)
    with open(config.dataset[0], "rb") as f:
        assert state["position"] == len(b"".join(f.readlines()[:14]))


def test_shards_are_disjoint_and_cover_an_epoch(stream):
    config, pre, collate = stream
    config = dataclasses.replace(config, buffer_size=1)    # no shuffle: one epoch is the first 11 records
    seen = []
    for rank in range(2):
        for worker in range(2):
            loader = StreamingLoader(config, pre, collate, 1, rank=rank, world_size=2, num_workers=2)
            loader.shards = [loader.shards[worker]]
            loader.num_workers = 1
            ids = sum(_ids(loader, 11), [])                # 45 records / 4 shards: 11 or 12 each
            shard = rank * 2 + worker
            assert ids == [f"r{k:03d}" for k in range(shard, 44, 4)]
            seen.append(set(ids))
    assert all(not (a & b) for i, a in enumerate(seen) for b in seen[i + 1:])
    assert len(set().union(*seen)) == 44


def test_state_from_another_layout_is_refused(stream):
    config, pre, collate = stream
    state = StreamingLoader(config, pre, collate, 2, num_workers=2).state_dict()
    with pytest.raises(ValueError, match="saved data state has 2 workers but this run has 1"):
        StreamingLoader(config, pre, collate, 2, num_workers=1).load_state_dict(state)


def test_bad_lines_in_a_stream(stream, tmp_path):
    config, pre, collate = stream
    lines = [json.dumps(_record(0)), '{"id": "cut', json.dumps({"id": "noanswer", "conversations": [
        {"from": "human", "value": "hi"}]}), json.dumps(_record(1))]
    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join(lines) + "\n")
    strict = dataclasses.replace(config, dataset=(str(path),), buffer_size=1)
    loader = StreamingLoader(strict, pre, collate, 2)
    with pytest.raises(DataError, match=r"bad\.jsonl:2: malformed JSON"):
        loader.next_batch()
    skipping = dataclasses.replace(strict, skip_bad_samples=True)
    loader = StreamingLoader(skipping, pre, collate, 2)
    assert loader.next_batch()["sample_ids"].tolist() == ["r000", "r001"]
    assert loader.bad.summary()["by_kind"] == {"bad_record": 1, "malformed_json": 1}
