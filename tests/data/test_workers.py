"""preprocessing_num_workers: worker processes give the same samples, and their errors keep file, id and kind.

Framework-free and slow (each spawned worker imports transformers), so it runs in the torch pass of the suite only.
"""
import json
import pickle

import numpy as np
import pytest

from data_helpers import absolute_media, data_config, write_json
from mmx.data.dataset import build_dataset
from mmx.data.errors import DataError


@pytest.mark.backend("torch")
def test_two_workers_match_one_and_report_bad_samples(model_dirs, mixed_dir, tmp_path):
    records = absolute_media(json.load(open(mixed_dir / "data.json")), mixed_dir)
    (tmp_path / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\nbroken")
    bad = {"id": "corrupt", "image": str(tmp_path / "corrupt.png"), "conversations": [
        {"from": "human", "value": "<image>?"}, {"from": "gpt", "value": "x"}]}
    path = write_json(tmp_path / "d.json", records + [bad])
    one = build_dataset(data_config(model_dirs["qwen2_vl"], path, skip_bad_samples=True))
    two = build_dataset(data_config(model_dirs["qwen2_vl"], path, skip_bad_samples=True,
                                    preprocessing_num_workers=2))
    assert len(one) == len(two) == 5
    for i in range(5):
        assert one[i].keys() == two[i].keys()
        for key in one[i]:
            np.testing.assert_array_equal(one[i][key], two[i][key])
    assert two.stats["bad"]["by_kind"] == {"corrupt_media": 1}
    assert "d.json sample 'corrupt': image " in two.stats["bad"]["examples"][0]


def test_data_error_survives_pickling():
    """Workers send errors back pickled; without skip_bad_samples the parent raises them as they were."""
    err = pickle.loads(pickle.dumps(DataError("corrupt_media", "d.json", "s1", "image x cannot be decoded", line=3)))
    assert (err.kind, err.file, err.sample_id, err.line, str(err)) == (
        "corrupt_media", "d.json", "s1", 3, "d.json:3 sample 's1': image x cannot be decoded")
