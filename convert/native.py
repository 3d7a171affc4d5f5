"""Framework-native copies of an mm checkpoint: ``.pt`` (torch) or ``.ckpt`` (MindSpore) per rank, and back.

``export_native`` writes, for every rank directory of the latest iteration, ``model_optim_rng.pt`` (``{'model':
state_dict, 'checkpoint_version': 3.0}``, like the guides' suite) or ``model_optim_rng.ckpt``, plus the metadata,
``latest_checkpointed_iteration.txt`` and the source's support files (config, tokenizer, ...). ``import_native``
reads such a directory back into safetensors, support files included. The writers and readers are the current
backend's (``mmx.backends.<name>.io``); torch files load with ``weights_only=True`` unless ``allow_pickle`` is passed.
Memory: one rank's tensors at a time (native formats hold a whole state dict).

Both publish their output whole (mmx.checkpoint.publish, through the drivers' publish_mm): a failed, refused or
killed export / import leaves the output directory as it was, and one that already holds a checkpoint is refused
unless ``overwrite``.
"""
import importlib
import json
from pathlib import Path

from mmx import backend
from mmx.checkpoint.layout import SHARD_FILE, Layout, read_json
from mmx.checkpoint.publish import new_file
from mmx.checkpoint.safetensors_io import load_file, save_file
from mmx.checkpoint.store import META_FILE, resolve_iteration
from mmx.convert.drivers import publish_mm

NATIVE_STEM = "model_optim_rng"


def _backend_io(file_format):
    if file_format != backend.name():
        raise ValueError(f"--format {file_format} writes and reads {file_format} files with the {file_format} "
                         f"backend, but this process uses {backend.name()}: add --backend {file_format}")
    return importlib.import_module(f"mmx.backends.{file_format}.io")


def export_native(mm_dir, save_dir, file_format, overwrite=False, iteration=None):
    """Write the latest iteration (or ``iteration``) of ``mm_dir`` as per-rank native files under ``save_dir``;
    returns the paths."""
    io = _backend_io(file_format)
    source = resolve_iteration(mm_dir, iteration)
    metadata = read_json(source / META_FILE, "not an mm checkpoint")
    layout = Layout.from_dict(metadata["parallel"])
    written = []

    def write(directory):
        for rank in layout.ranks():
            path = new_file(directory / layout.rank_dir(*rank) / (NATIVE_STEM + io.SUFFIX))
            io.save_native(str(path), load_file(source / layout.rank_dir(*rank) / SHARD_FILE))
            written.append(Path(save_dir) / source.name / path.relative_to(directory))
        new_file(directory / META_FILE).write_text(json.dumps({**metadata, "native_format": file_format},
                                                              indent=2) + "\n")

    publish_mm(save_dir, metadata["iteration"], write, support_dir=mm_dir, overwrite=overwrite)
    return written


def import_native(native_dir, mm_dir, file_format, allow_pickle=False, overwrite=False):
    """Read per-rank native files written by export_native back into an mm (safetensors) checkpoint."""
    io = _backend_io(file_format)
    source = resolve_iteration(native_dir)
    metadata = read_json(source / META_FILE, "import reads directories written by `mmx convert export`")
    metadata.pop("native_format", None)
    layout = Layout.from_dict(metadata["parallel"])

    def write(directory):
        for rank in layout.ranks():
            tensors = io.load_native(str(source / layout.rank_dir(*rank) / (NATIVE_STEM + io.SUFFIX)), allow_pickle)
            save_file(tensors, new_file(directory / layout.rank_dir(*rank) / SHARD_FILE), {"format": "pt"})
        new_file(directory / META_FILE).write_text(json.dumps(metadata, indent=2) + "\n")

    in_place = Path(mm_dir).exists() and Path(mm_dir).resolve() == Path(native_dir).resolve()
    return publish_mm(mm_dir, metadata["iteration"], write, support_dir=native_dir, overwrite=overwrite,
                      in_place=in_place)
