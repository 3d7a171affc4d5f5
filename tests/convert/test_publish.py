"""Every checkpoint writer publishes whole (mmx.checkpoint.publish): a refused, failed or SIGKILLed conversion,
export or import leaves the old checkpoint exactly as it was, an overwrite leaves exactly the new one, and no reader
(mmx or transformers) ever sees a mix of the two or nothing (issue 11's reproductions and fault injection).

The file-system tests are backend-independent and run in the torch suite only; export / import use the backend's
native format and run in both."""
import json
import os
import shutil
import subprocess
import sys

import pytest

from convert_helpers import assert_same_tensors, hf_tensors
from fault_runner import assert_old_or_new, fault_spec, run_faults, tree
from mmx import backend
from mmx.checkpoint import Layout, load_mm, save_mm
from mmx.checkpoint.publish import PublishError
from mmx.checkpoint.store import LATEST_FILE, CheckpointError
from mmx.convert.drivers import hf_to_mm, mm_to_hf, read_hf_as_mm, reshard
from mmx.convert.native import export_native, import_native

HERE = os.path.dirname(os.path.abspath(__file__))
torch_suite = pytest.mark.backend("torch")   # pure file-system behaviour: one backend's run is enough
SHARD = 300 * 1024


def hidden(folder):
    """Publish leftovers: hidden entries in ``folder`` and hidden siblings of it."""
    parent, name = os.path.dirname(str(folder)), os.path.basename(str(folder))
    inside = [e for e in os.listdir(folder) if e.startswith(".")] if os.path.isdir(folder) else []
    return inside + [e for e in os.listdir(parent) if e.startswith(f".{name}.")]


@pytest.fixture(scope="module")
def mm_pair(tiny_hf, tmp_path_factory):
    """Two mm checkpoints of different families (A: Qwen2-VL, B: Qwen2.5-VL)."""
    root = tmp_path_factory.mktemp("pair")
    hf_to_mm(tiny_hf("qwen2_vl"), root / "A")
    hf_to_mm(tiny_hf("qwen2_5_vl"), root / "B")
    return root / "A", root / "B"


# -- refusals and overwrite (reproductions: mixed weights, silent overwrite) ------------------------------------------

@torch_suite
@pytest.mark.parametrize("first,second", [("sharded", "single"), ("single", "sharded")])
def test_hf_export_into_another_export_is_refused_and_overwrite_leaves_only_the_new(mm_pair, tmp_path, first,
                                                                                     second):
    a, b = mm_pair
    shard = {"sharded": SHARD, "single": 5 * 1024 ** 3}
    mm_to_hf(a, tmp_path / "out", max_shard_bytes=shard[first])
    before = tree(tmp_path / "out")
    with pytest.raises(PublishError, match=r"out already holds a checkpoint \(model.*--overwrite"):
        mm_to_hf(b, tmp_path / "out", max_shard_bytes=shard[second])
    assert tree(tmp_path / "out") == before
    mm_to_hf(b, tmp_path / "out", max_shard_bytes=shard[second], overwrite=True)
    mm_to_hf(b, tmp_path / "fresh", max_shard_bytes=shard[second])
    # byte for byte a fresh export of B: no shard, index or model.safetensors of A is left for any reader to pick
    assert tree(tmp_path / "out") == tree(tmp_path / "fresh")
    assert sorted(os.listdir(tmp_path / "out")) == sorted(os.listdir(tmp_path / "fresh"))
    assert_same_tensors(read_hf_as_mm(tmp_path / "out")[1], load_mm(b)[1])   # mmx follows the index, if any
    assert hidden(tmp_path / "out") == []


@torch_suite
def test_hf_to_mm_into_a_training_save_dir_is_refused(mm_pair, tiny_hf, tmp_path):
    a, _ = mm_pair
    metadata, tensors = load_mm(a)
    save_mm(tmp_path / "run", 12, tensors, metadata, Layout.from_dict(metadata["parallel"]))
    before = tree(tmp_path / "run")
    with pytest.raises(PublishError, match=r"already holds an mm checkpoint at iteration 12 "
                                           r"\(latest_checkpointed_iteration.txt; iter_0000012"):
        hf_to_mm(tiny_hf("qwen2_vl"), tmp_path / "run")
    assert (tmp_path / "run" / LATEST_FILE).read_text() == "12\n" and tree(tmp_path / "run") == before


@torch_suite
def test_other_family_into_an_mm_dir_is_refused_and_overwrite_replaces_it_whole(mm_pair, tiny_hf, tmp_path):
    hf_to_mm(tiny_hf("qwen2_5_vl"), tmp_path / "mm")
    (tmp_path / "mm" / "notes.txt").write_text("mine")
    before = tree(tmp_path / "mm")
    with pytest.raises(PublishError, match="--overwrite"):
        hf_to_mm(tiny_hf("qwen2_vl"), tmp_path / "mm")
    with pytest.raises(PublishError, match="--overwrite"):
        reshard(mm_pair[0], tmp_path / "mm", tp_size=2)
    assert tree(tmp_path / "mm") == before
    hf_to_mm(tiny_hf("qwen2_vl"), tmp_path / "mm", overwrite=True)
    assert tree(tmp_path / "mm") == tree(mm_pair[0])   # exactly a fresh Qwen2-VL conversion: config.json included
    assert json.loads((tmp_path / "mm" / "config.json").read_text())["model_type"] == "qwen2_vl"
    assert hidden(tmp_path / "mm") == []


@torch_suite
def test_in_place_conversions_keep_the_directory(tiny_hf, tmp_path):
    hf_dir = tmp_path / "hf"
    shutil.copytree(tiny_hf("qwen2_vl"), hf_dir)
    hf_to_mm(hf_dir, hf_dir)   # --mm-dir = --hf-dir: release/ and the pointer are added, the HF files stay
    assert_same_tensors(hf_tensors(hf_dir), hf_tensors(tiny_hf("qwen2_vl")))
    _, tensors = load_mm(hf_dir)
    with pytest.raises(PublishError, match="replace its release"):
        hf_to_mm(hf_dir, hf_dir)
    reshard(hf_dir, hf_dir, tp_size=2)   # same weights in another layout, in place
    assert sorted(os.listdir(hf_dir / "release")) == ["mmx_checkpoint.json", "mp_rank_00", "mp_rank_01"]
    assert_same_tensors(load_mm(hf_dir)[1], tensors)
    assert hidden(hf_dir) == []


# -- failures leave the old checkpoint (reproduction: not atomic) ---------------------------------------------------

@torch_suite
def test_failing_hf_export_leaves_the_good_one(mm_pair, tmp_path):
    a, b = mm_pair
    mm_to_hf(a, tmp_path / "out")
    before = tree(tmp_path / "out")
    broken = tmp_path / "broken"
    reshard(b, broken, tp_size=2)
    shard = broken / "release" / "mp_rank_01" / "model.safetensors"
    os.truncate(shard, os.path.getsize(shard) // 2)
    with pytest.raises(ValueError, match="is truncated"):
        mm_to_hf(broken, tmp_path / "out", overwrite=True)
    assert tree(tmp_path / "out") == before and hidden(tmp_path / "out") == []
    assert_same_tensors(read_hf_as_mm(tmp_path / "out")[1], load_mm(a)[1])


def test_failing_native_export_and_refused_import_leave_nothing_behind(mm_pair, tmp_path):
    fmt = backend.name()
    a, b = mm_pair
    export_native(a, tmp_path / "native", fmt)
    before = tree(tmp_path / "native")
    with pytest.raises(PublishError, match="--overwrite"):
        export_native(b, tmp_path / "native", fmt)
    broken = tmp_path / "broken"
    reshard(b, broken, tp_size=2)
    shard = broken / "release" / "mp_rank_01" / "model.safetensors"
    os.truncate(shard, os.path.getsize(shard) // 2)
    with pytest.raises(ValueError, match="is truncated"):
        export_native(broken, tmp_path / "native", fmt, overwrite=True)
    assert tree(tmp_path / "native") == before and hidden(tmp_path / "native") == []
    # an import the reader refuses (a truncated native file) leaves neither a staging directory nor a target
    shutil.copytree(tmp_path / "native", tmp_path / "bad_native")
    suffix = {"torch": ".pt", "mindspore": ".ckpt"}[fmt]
    rank_file = tmp_path / "bad_native" / "release" / "mp_rank_00" / f"model_optim_rng{suffix}"
    os.truncate(rank_file, os.path.getsize(rank_file) // 2)
    with pytest.raises(Exception):   # noqa: B017 - the framework's own error for a torn file
        import_native(tmp_path / "bad_native", tmp_path / "imported", fmt)
    assert not (tmp_path / "imported").exists() and hidden(tmp_path / "imported") == []
    # a good import: refused over another checkpoint, then replaces it with --overwrite
    import_native(tmp_path / "native", tmp_path / "imported", fmt)
    with pytest.raises(PublishError, match="--overwrite"):
        import_native(tmp_path / "native", tmp_path / "imported", fmt)
    import_native(tmp_path / "native", tmp_path / "imported", fmt, overwrite=True)
    assert_same_tensors(load_mm(tmp_path / "imported")[1], load_mm(a)[1])


# -- an imported checkpoint exports with its config (reproduction: leftovers) ---------------------------------------

def test_imported_checkpoint_exports_to_hf_with_its_config(mm_pair, tiny_hf, tmp_path):
    fmt = backend.name()
    a, _ = mm_pair
    export_native(a, tmp_path / "native", fmt)
    import_native(tmp_path / "native", tmp_path / "imported", fmt)
    mm_to_hf(tmp_path / "imported", tmp_path / "hf")
    for name in ("config.json", "tokenizer.json", "preprocessor_config.json"):
        assert (tmp_path / "hf" / name).read_bytes() == (a / name).read_bytes(), name
    assert_same_tensors(hf_tensors(tmp_path / "hf"), hf_tensors(tiny_hf("qwen2_vl")))
    # an mm directory without config.json (copied bare) is refused before anything is written
    shutil.copytree(tmp_path / "imported", tmp_path / "bare")
    os.remove(tmp_path / "bare" / "config.json")
    with pytest.raises(CheckpointError, match=r"bare/config.json not found: .*pass --hf-dir"):
        mm_to_hf(tmp_path / "bare", tmp_path / "hf_bare")
    assert not (tmp_path / "hf_bare").exists() and hidden(tmp_path / "hf_bare") == []
    mm_to_hf(tmp_path / "bare", tmp_path / "hf_bare", hf_dir=tiny_hf("qwen2_vl"))
    assert (tmp_path / "hf_bare" / "config.json").read_bytes() == (a / "config.json").read_bytes()


def test_cli_refuses_without_overwrite(mm_pair, tmp_path):
    from click.testing import CliRunner

    from mmx.cli import main

    a, b = mm_pair
    runner = CliRunner()
    args = ["convert", "mm_to_hf", "--no-progress", "--save-hf-dir", str(tmp_path / "out"), "--mm-dir"]
    assert runner.invoke(main, args + [str(a)]).exit_code == 0
    refused = runner.invoke(main, args + [str(b)])
    assert refused.exit_code == 2 and "already holds a checkpoint" in refused.output
    assert "Traceback" not in refused.output
    assert runner.invoke(main, args + [str(b), "--overwrite"]).exit_code == 0
    assert_same_tensors(read_hf_as_mm(tmp_path / "out")[1], load_mm(b)[1])


# -- crash windows (reproduction: a kill between the two renames of a swap) -----------------------------------------

KILL_AT_RENAME = """
import os, signal, sys
count, at = [0], int(sys.argv[1])
def killing(real):
    def call(*args, **kwargs):
        count[0] += 1
        if count[0] == at:
            os.kill(os.getpid(), signal.SIGKILL)
        return real(*args, **kwargs)
    return call
from mmx.checkpoint import Layout, load_mm, save_mm
metadata, tensors = load_mm(sys.argv[3])
os.replace, os.rename = killing(os.replace), killing(os.rename)
save_mm(sys.argv[2], "release", tensors, metadata, Layout.from_dict(metadata["parallel"]))
print("renames", count[0])
"""


@torch_suite
@pytest.mark.parametrize("exchange", ["1", "0"])
def test_kill_at_each_rename_of_a_same_name_save_leaves_a_loadable_checkpoint(mm_pair, tiny_hf, tmp_path, exchange):
    """save_mm over an existing iteration of the same name (what the old commit_iteration did in two renames)."""
    _, b = mm_pair
    new = tmp_path / "new"
    hf_to_mm(tiny_hf("qwen2_vl", dtype="bfloat16"), new)   # Qwen2-VL weights in bf16: different bytes
    env = dict(os.environ, MMX_PUBLISH_EXCHANGE=exchange)
    old = tmp_path / "old"
    hf_to_mm(tiny_hf("qwen2_vl"), old)
    want = {"old": load_mm(old)[1], "new": load_mm(new)[1]}
    outcomes, at = [], 1
    while True:
        target = tmp_path / f"mm{at}"
        shutil.copytree(old, target)
        run = subprocess.run([sys.executable, "-c", KILL_AT_RENAME, str(at), str(target), str(new)],
                             capture_output=True, text=True, env=env, timeout=120)
        assert run.returncode in (0, -9), run.stderr[-2000:]
        try:
            _, got = load_mm(target)   # recovers first, as every mmx start does
            state = next((name for name, tensors in want.items() if set(tensors) == set(got)
                          and all(tensors[k].tobytes() == got[k].tobytes() for k in got)), "neither")
        except (ValueError, FileNotFoundError) as err:
            state = f"unloadable: {err}"
        outcomes.append((at, state, hidden(target)))
        if run.returncode == 0:
            break
        at += 1
    # the two-rename fallback is killed before, between and after its renames; an exchange has no rename to kill
    # before the swap (only the pointer's), so every kill there already finds the new iteration in place
    states = {state for _, state, _ in outcomes}
    assert states == ({"old", "new"} if exchange == "0" else {"new"}), outcomes
    assert all(not left for _, _, left in outcomes), outcomes


# -- fault injection: SIGKILL before every file-system step of every writer's publish --------------------------------

@torch_suite
def test_killed_mm_to_hf_leaves_the_old_or_the_new_export_for_mmx_and_transformers(mm_pair, tiny_hf, tmp_path):
    import transformers

    a, b = mm_pair
    mm_to_hf(a, tmp_path / "old", max_shard_bytes=SHARD)   # sharded Qwen2-VL with an index ...
    results = run_faults(tmp_path, "mm_to_hf", {"mm_dir": b, "save_hf_dir": tmp_path / "out", "overwrite": True},
                         tmp_path / "out", tmp_path / "old", "hf")   # ... replaced by a one-file Qwen2.5-VL
    steps = assert_old_or_new(results)
    assert steps["exchange"] >= 10 and steps["rename"] == steps["exchange"] + 1   # the fallback's extra rename
    classes = {"qwen2_vl": transformers.Qwen2VLForConditionalGeneration,
               "qwen2_5_vl": transformers.Qwen2_5_VLForConditionalGeneration}
    states = sorted(os.listdir(tmp_path / "states"))
    assert any(s.endswith("-old") for s in states) and any(s.endswith("-new") for s in states), states
    for state in states:   # every distinct directory a killed run left, after recovery
        directory = tmp_path / "states" / state
        family = json.loads((directory / "config.json").read_text())["model_type"]
        source = tiny_hf(family)
        model = classes[family].from_pretrained(directory)
        weights = model.state_dict()
        for name, value in hf_tensors(source).items():
            assert weights[name].numpy().tobytes() == value.tobytes(), (state, name)
        assert family == ("qwen2_vl" if state.endswith("-old") else "qwen2_5_vl"), state


@torch_suite
def test_killed_mm_writers_leave_the_old_or_the_new_checkpoint(mm_pair, tiny_hf, tmp_path):
    """hf_to_mm / reshard replace a Qwen2.5-VL directory (weights, config.json and all) by a Qwen2-VL one; save_mm
    replaces the release of a Qwen2-VL directory by bf16 weights in place (the pointer file stays)."""
    a, b = mm_pair
    hf_to_mm(tiny_hf("qwen2_vl", dtype="bfloat16"), tmp_path / "bf16")
    target = tmp_path / "mm"
    specs = [fault_spec(tmp_path / "hf_to_mm", "hf_to_mm", {"hf_dir": tiny_hf("qwen2_vl"), "mm_dir": target,
                                                            "overwrite": True}, target, b, "mm"),
             fault_spec(tmp_path / "reshard", "reshard", {"mm_dir": a, "save_dir": target, "tp_size": 2,
                                                          "overwrite": True}, target, b, "mm"),
             fault_spec(tmp_path / "save_mm", "save_mm", {"mm_dir": target, "source": tmp_path / "bf16",
                                                          "iteration": "release"}, target, a, "mm")]
    for results in run_faults(tmp_path, specs=specs):
        assert_old_or_new(results)


def test_killed_export_and_import_leave_the_old_or_the_new_checkpoint(mm_pair, tmp_path):
    """The framework's own writer inside the publish (the two-rename fallback: the exchange is the other tests')."""
    fmt = backend.name()
    a, b = mm_pair
    export_native(b, tmp_path / "old_native", fmt)
    export_native(a, tmp_path / "new_native", fmt)
    preload, modes = f"mmx.backends.{fmt}.io", ("rename",)   # one framework import for both loops
    specs = [fault_spec(tmp_path / "export", "export_native",
                        {"mm_dir": a, "save_dir": tmp_path / "native", "file_format": fmt, "overwrite": True},
                        tmp_path / "native", tmp_path / "old_native", "native", preload, modes),
             fault_spec(tmp_path / "import", "import_native",
                        {"native_dir": tmp_path / "new_native", "mm_dir": tmp_path / "mm", "file_format": fmt,
                         "overwrite": True}, tmp_path / "mm", b, "mm", preload, modes)]
    for results in run_faults(tmp_path, specs=specs):
        assert_old_or_new(results)
