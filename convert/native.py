"""Framework-native copies of an mm checkpoint: ``.pt`` (torch) or ``.ckpt`` (MindSpore) per rank, and back.

``export_native`` writes, for every rank directory of the latest iteration, ``model_optim_rng.pt`` (``{'model':
state_dict, 'checkpoint_version': 3.0}``, like the guides' suite) or ``model_optim_rng.ckpt``, plus the metadata and
``latest_checkpointed_iteration.txt``. ``import_native`` reads such a directory back into safetensors. The writers and
readers are the current backend's (``mmx.backends.<name>.io``); torch files load with ``weights_only=True`` unless
``allow_pickle`` is passed. Memory: one rank's tensors at a time (native formats hold a whole state dict).
"""
import importlib
import json
import shutil
from pathlib import Path

from mmx import backend
from mmx.checkpoint.layout import SHARD_FILE, Layout, read_json
from mmx.checkpoint.safetensors_io import load_file, save_file
from mmx.checkpoint.store import LATEST_FILE, META_FILE, write_text_atomic, resolve_iteration

NATIVE_STEM = "model_optim_rng"


def _backend_io(file_format):
    if file_format != backend.name():
        raise ValueError(f"--format {file_format} writes and reads {file_format} files with the {file_format} "
                         f"backend, but this process uses {backend.name()}: add --backend {file_format}")
    return importlib.import_module(f"mmx.backends.{file_format}.io")


def export_native(mm_dir, save_dir, file_format):
    """Write the latest iteration of ``mm_dir`` as per-rank native files under ``save_dir``; returns the paths."""
    io = _backend_io(file_format)
    source = resolve_iteration(mm_dir)
    metadata = read_json(source / META_FILE, "not an mm checkpoint")
    layout = Layout.from_dict(metadata["parallel"])
    target = Path(save_dir) / source.name
    written = []
    for rank in layout.ranks():
        rank_dir = target / layout.rank_dir(*rank)
        rank_dir.mkdir(parents=True, exist_ok=True)
        path = rank_dir / (NATIVE_STEM + io.SUFFIX)
        io.save_native(str(path), load_file(source / layout.rank_dir(*rank) / SHARD_FILE))
        written.append(path)
    (target / META_FILE).write_text(json.dumps({**metadata, "native_format": file_format}, indent=2) + "\n")
    write_text_atomic(Path(save_dir) / LATEST_FILE, f"{metadata['iteration']}\n")
    return written


def import_native(native_dir, mm_dir, file_format, allow_pickle=False):
    """Read per-rank native files written by export_native back into an mm (safetensors) checkpoint."""
    io = _backend_io(file_format)
    source = resolve_iteration(native_dir)
    metadata = read_json(source / META_FILE, "import reads directories written by `mmx convert export`")
    metadata.pop("native_format", None)
    layout = Layout.from_dict(metadata["parallel"])
    target = Path(mm_dir) / source.name
    temporary = Path(mm_dir) / f".{source.name}.import"
    shutil.rmtree(temporary, ignore_errors=True)
    for rank in layout.ranks():
        path = source / layout.rank_dir(*rank) / (NATIVE_STEM + io.SUFFIX)
        (temporary / layout.rank_dir(*rank)).mkdir(parents=True)
        save_file(io.load_native(str(path), allow_pickle), temporary / layout.rank_dir(*rank) / SHARD_FILE,
                  {"format": "pt"})
    (temporary / META_FILE).write_text(json.dumps(metadata, indent=2) + "\n")
    shutil.rmtree(target, ignore_errors=True)
    temporary.rename(target)
    write_text_atomic(Path(mm_dir) / LATEST_FILE, f"{metadata['iteration']}\n")
    return target
