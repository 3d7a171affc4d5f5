"""The example configs load (every model / training key known, data keys known to mmx.data) and the launch scripts
use the guides' variables; a multi-process launch is refused with the reason."""
import glob
import os

import pytest

from mmx.data.config import KEYS as DATA_KEYS
from mmx.train.config import load_config
from mmx.train.loop import check_single_process

EXAMPLES = os.path.join(os.path.dirname(__file__), "..", "..", "examples")
CONFIGS = sorted(glob.glob(os.path.join(EXAMPLES, "*", "*", "*.yaml")))


def test_every_backend_and_family_has_examples():
    for backend in ("torch", "mindspore"):
        for family in ("qwen2_5_vl", "qwen2_vl"):
            folder = os.path.join(EXAMPLES, backend, family)
            assert os.path.exists(os.path.join(folder, "tiny.yaml")), folder
            assert len(glob.glob(os.path.join(folder, "finetune_*.sh"))) == 2, folder


@pytest.mark.parametrize("path", CONFIGS, ids=[os.path.relpath(p, EXAMPLES) for p in CONFIGS])
def test_example_config_loads(path):
    config = load_config(path)
    assert set(config["data"]) <= set(DATA_KEYS), set(config["data"]) - set(DATA_KEYS)
    assert config["model"]["init_from_hf_path"]


@pytest.mark.parametrize("path", sorted(glob.glob(os.path.join(EXAMPLES, "*", "*", "finetune_*.sh"))))
def test_launch_script_uses_the_guides_variables(path):
    text = open(path).read()
    for variable in ("NPUS_PER_NODE", "MASTER_ADDR", "MASTER_PORT", "NNODES", "NODE_RANK"):
        assert f"{variable}=" in text, variable
    assert ("torchrun" in text) == ("/torch/" in path) and ("msrun" in text) == ("/mindspore/" in path)


def test_multi_process_launch_is_refused(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(RuntimeError, match="WORLD_SIZE=2.*one process"):
        check_single_process()
