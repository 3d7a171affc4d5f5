"""The example configs load (every model / training key known, data keys known to mmx.data) and the launch scripts
run through examples/launch.sh with the guides' variables (several devices and nodes: one data-parallel process per
device), and each folder's run_tiny.sh trains its family's tiny model on its backend."""
import glob
import json
import math
import os
import re
import subprocess
import sys

import pytest

from mmx.data.config import KEYS as DATA_KEYS
from mmx.train.config import load_config

EXAMPLES = os.path.join(os.path.dirname(__file__), "..", "..", "examples")
CONFIGS = sorted(glob.glob(os.path.join(EXAMPLES, "*", "*", "*.yaml")))


def test_every_backend_and_family_has_examples():
    for backend in ("torch", "mindspore"):
        for family, sizes in (("qwen2_5_vl", 2), ("qwen2_vl", 2), ("qwen3_vl", 4), ("qwen3_vl_moe", 2),
                              ("glm4v", 1), ("glm4v_moe", 1), ("internvl3", 4)):
            folder = os.path.join(EXAMPLES, backend, family)
            assert os.path.exists(os.path.join(folder, "tiny.yaml")), folder
            assert len(glob.glob(os.path.join(folder, "finetune_*.sh"))) == sizes, folder


@pytest.mark.parametrize("path", CONFIGS, ids=[os.path.relpath(p, EXAMPLES) for p in CONFIGS])
def test_example_config_loads(path):
    config = load_config(path)
    assert set(config["data"]) <= set(DATA_KEYS), set(config["data"]) - set(DATA_KEYS)
    assert config["model"]["init_from_hf_path"]


@pytest.mark.parametrize("path", sorted(glob.glob(os.path.join(EXAMPLES, "*", "*", "finetune_*.sh"))))
def test_launch_script_runs_the_backends_launcher(path, tmp_path):
    """Run the script with stand-ins for torchrun / msrun / mmx on PATH that print their arguments: the guides'
    variables reach the launcher (2 nodes x 2 devices, this node second: 4 processes, 2 here), and mmx finetune gets
    the script's backend, its own config and the overrides."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("torchrun", "msrun", "mmx"):
        stub = bin_dir / tool
        stub.write_text(f'#!/usr/bin/env bash\necho {tool} "$@"\n')
        stub.chmod(0o755)
    env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}", NPUS_PER_NODE="2", NNODES="2", NODE_RANK="1",
               MASTER_ADDR="127.0.0.1", MASTER_PORT="29555")
    env.pop("CONFIG", None)
    run = subprocess.run(["bash", path, "training.lr=2e-5"], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    backend = "torch" if "/torch/" in path else "mindspore"
    launcher = {"torch": "torchrun --nproc_per_node 2 --nnodes 2 --node_rank 1",
                "mindspore": "msrun --worker_num 4 --local_worker_num 2 --node_rank 1"}[backend]
    config = path[:-len(".sh")] + ".yaml"
    assert run.stdout.startswith(launcher), run.stdout
    assert "--master_addr 127.0.0.1 --master_port 29555" in run.stdout
    assert run.stdout.rstrip().endswith(f"finetune --backend {backend} --config {os.path.realpath(config)} "
                                        f"training.lr=2e-5"), run.stdout
    assert (tmp_path / "logs" / (os.path.basename(path)[:-len(".sh")] + ".log")).exists()


FOLDER_FAMILY = {"internvl3": "internvl"}      # example folders named after the model, not the model_type
RUN_TINY = sorted(glob.glob(os.path.join(EXAMPLES, "*", "*", "run_tiny.sh")))


@pytest.mark.parametrize("path", [pytest.param(p, marks=pytest.mark.backend(p.split(os.sep)[-3]),
                                               id=os.path.relpath(p, EXAMPLES)) for p in RUN_TINY])
def test_run_tiny(path, tmp_path):
    """Each folder's run_tiny.sh on its own backend, shortened to 2 steps: it builds the folder's family, trains on
    the digits (the loss falls) and exports an HF checkpoint of that family."""
    family = FOLDER_FAMILY.get(os.path.basename(os.path.dirname(path)), os.path.basename(os.path.dirname(path)))
    env = dict(os.environ, PATH=f"{os.path.dirname(sys.executable)}:{os.environ['PATH']}")
    def run_tiny():
        run = subprocess.run(["bash", path, "training.train_iters=2", "training.save_interval=2",
                              "training.log_interval=1", "data.max_samples=16"],
                             cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
        assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
        log = run.stdout + run.stderr
        return [float(v) for v in re.findall(r"^step \d+ \| loss (\S+)", log, re.M)], log

    losses, log = run_tiny()
    assert len(losses) == 2 and all(math.isfinite(v) for v in losses) and losses[1] < losses[0], log[-3000:]
    if family == "qwen2_5_vl":
        # A second run in the same folder replaces the first one's outputs and retraces its curve exactly.
        again, log = run_tiny()
        assert again == losses, log[-3000:]
    with open(tmp_path / f"tiny_{family}" / "save_hf" / "config.json") as f:
        assert json.load(f)["model_type"] == family
    assert (tmp_path / f"tiny_{family}" / "save_hf" / "model.safetensors").exists()
