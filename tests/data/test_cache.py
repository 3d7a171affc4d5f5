"""The preprocessing cache: reuse, invalidation (data, processor config, template, keys) and sharing by processes."""
import json
import os
import shutil
import threading

import numpy as np

from data_helpers import absolute_media, data_config


def _build(model_dir, dataset, cache_dir, **keys):
    from mmx.data.dataset import build_dataset

    return build_dataset(data_config(model_dir, dataset, cache_dir=str(cache_dir), **keys))


def _same(a, b):
    assert len(a) == len(b)
    for i in range(len(a)):
        assert a[i].keys() == b[i].keys()
        for key in a[i]:
            np.testing.assert_array_equal(a[i][key], b[i][key])


def _entries(cache_dir):
    return sorted(n for n in os.listdir(cache_dir) if not n.endswith(".lock"))


def test_reuse_and_invalidation(model_dirs, mixed_dir, tmp_path):
    model_dir = str(tmp_path / "model")
    shutil.copytree(model_dirs["qwen2_5_vl"], model_dir)
    data = str(tmp_path / "data.json")
    records = absolute_media(json.load(open(mixed_dir / "data.json")), mixed_dir)
    json.dump(records[:4], open(data, "w"))
    cache = tmp_path / "cache"

    first = _build(model_dir, data, cache)
    assert first.stats["cache_hits"] == 0 and len(first) == 4
    again = _build(model_dir, data, cache)
    assert again.stats["cache_hits"] == 1
    _same(first, again)
    assert again.stats["images"] == 2 and again.stats["tokens"] == first.stats["tokens"]
    assert len(_entries(cache)) == 1

    # a different preprocessing key, data file, processor config and template each make a new entry
    assert _build(model_dir, data, cache, cutoff_len=512).stats["cache_hits"] == 0
    json.dump(records[:3], open(data, "w"))
    assert len(_build(model_dir, data, cache)) == 3
    config_path = os.path.join(model_dir, "preprocessor_config.json")
    processor = json.load(open(config_path))
    processor["size"]["longest_edge"] = 28 * 28 * 4
    json.dump(processor, open(config_path, "w"))
    smaller = _build(model_dir, data, cache)
    assert smaller.stats["cache_hits"] == 0
    assert smaller[1]["image_grid_thw"].tolist() == [[1, 2, 4]]     # 60x90 under max 3136 px → 28x56, not 4x6
    with open(os.path.join(model_dir, "chat_template.jinja"), "a") as f:
        f.write("{# edited #}")
    assert _build(model_dir, data, cache).stats["cache_hits"] == 0
    assert len(_entries(cache)) == 5
    # overwrite_cache rebuilds in place
    assert _build(model_dir, data, cache, overwrite_cache=True).stats["cache_hits"] == 0
    assert len(_entries(cache)) == 5


def test_concurrent_builders_share_one_entry(model_dirs, mixed_dir, tmp_path):
    """Two builders at once (threads here: fcntl locks exclude per open file, so they behave as processes do)."""
    cache = tmp_path / "cache"
    results = [None, None]

    def build(slot):
        results[slot] = _build(model_dirs["qwen2_vl"], str(mixed_dir / "data.json"), cache)

    threads = [threading.Thread(target=build, args=(slot,)) for slot in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(r.stats["cache_hits"] for r in results) == [0, 1]   # one built under the lock, one read it
    _same(results[0], results[1])
    assert len(results[0]) == 5
    assert len(_entries(cache)) == 1                                 # no temporary folder left behind
