"""Framework-native exports: per-rank .pt (torch) / .ckpt (MindSpore) files, read back bit-exactly; torch files
are never unpickled unless asked for. Each backend's run tests its own format (export runs with --backend)."""
import pickle

import ml_dtypes
import pytest
from click.testing import CliRunner

from convert_helpers import assert_same_tensors
from mmx import backend
from mmx.checkpoint import load_mm
from mmx.checkpoint.safetensors_io import load_file
from mmx.cli import main
from mmx.convert.drivers import hf_to_mm


# (vit_pp_layers, llm_pp_layers): Qwen3-VL's 2 deepstack levels need LLM layers 0-1 where vision finishes
LAYOUTS = {"qwen2_5_vl": ("3,0", "1,1"), "qwen3_vl": ("2,1", "0,2"), "glm4v": ("2,0", "1,1")}


@pytest.mark.parametrize("family", sorted(LAYOUTS))
def test_export_and_import_round_trip(tiny_hf, tmp_path, family):
    fmt = backend.name()
    vit, llm = LAYOUTS[family]
    hf_to_mm(tiny_hf(family, tied=True, dtype="bfloat16"), tmp_path / "mm", tp_size=2, vit_pp_layers=vit,
             llm_pp_layers=llm)
    runner = CliRunner()
    result = runner.invoke(main, ["convert", "export", "--backend", fmt, "--mm-dir", str(tmp_path / "mm"),
                                  "--save-dir", str(tmp_path / "native"), "--format", fmt])
    assert result.exit_code == 0, result.output
    suffix = {"torch": ".pt", "mindspore": ".ckpt"}[fmt]
    rank_file = tmp_path / "native" / "release" / "mp_rank_01_001" / f"model_optim_rng{suffix}"
    io = __import__(f"mmx.backends.{fmt}.io", fromlist=["io"])
    got = io.load_native(str(rank_file))
    want = load_file(tmp_path / "mm" / "release" / "mp_rank_01_001" / "model.safetensors")
    assert_same_tensors(got, want)
    assert got["text_decoder.output_layer.weight"].dtype == ml_dtypes.bfloat16
    result = runner.invoke(main, ["convert", "import", "--backend", fmt, "--native-dir", str(tmp_path / "native"),
                                  "--mm-dir", str(tmp_path / "back"), "--format", fmt])
    assert result.exit_code == 0, result.output
    assert_same_tensors(load_mm(tmp_path / "back")[1], load_mm(tmp_path / "mm")[1])


def test_export_needs_the_matching_backend(tiny_hf, tmp_path):
    other = {"torch": "mindspore", "mindspore": "torch"}[backend.name()]
    hf_to_mm(tiny_hf("qwen2_vl"), tmp_path / "mm")
    result = CliRunner().invoke(main, ["convert", "export", "--mm-dir", str(tmp_path / "mm"), "--save-dir",
                                       str(tmp_path / "native"), "--format", other])
    assert result.exit_code == 2
    assert f"--format {other} writes and reads {other} files with the {other} backend" in result.output


class _Payload:
    """Any pickled class instance: weights_only=True must refuse it."""


@pytest.mark.backend("torch")
def test_torch_files_are_not_unpickled_without_the_flag(tmp_path):
    import torch

    from mmx.backends.torch import io

    path = tmp_path / "model_optim_rng.pt"
    torch.save({"model": {"w": torch.ones(2, dtype=torch.bfloat16)}, "args": _Payload(), "checkpoint_version": 3.0},
               path)
    with pytest.raises(ValueError, match=r"torch.load\(weights_only=True\) refused the file .*--allow-pickle"):
        io.load_native(str(path))
    loaded = io.load_native(str(path), allow_pickle=True)
    assert loaded["w"].dtype == ml_dtypes.bfloat16 and loaded["w"].tolist() == [1.0, 1.0]
    saved = torch.load(path, weights_only=False)
    assert saved["checkpoint_version"] == 3.0
    assert isinstance(pickle.dumps(saved["args"]), bytes)
