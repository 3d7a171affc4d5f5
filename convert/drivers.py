"""The three conversions behind ``mmx convert``: hf_to_mm, mm_to_hf and reshard.

Each one first validates everything it can from config.json / metadata and the safetensors headers (layout rules,
tensor names, shapes), then streams tensors: peak memory stays near the largest tensor group. Converters see whole
tensors; the split into TP/PP/EP pieces is the checkpoint layer's job (mmx.checkpoint), driven by the model plan.
"""
import sys
from pathlib import Path

import numpy as np

from mmx.convert.hf import HFSource, copy_support_files, read_config, write_hf
from mmx.checkpoint.families import family
from mmx.checkpoint.layout import Layout
from mmx.checkpoint.safetensors_io import nbytes
from mmx.checkpoint.store import MMSource, progress_bar, write_layout


def hf_to_mm(hf_dir, mm_dir, dtype="keep", tp_size=1, ep_size=1, vit_pp_layers=None, llm_pp_layers=None,
             progress=False, expert_layout=None):
    """Convert the HF checkpoint in ``hf_dir`` into an mm checkpoint (``release``) in ``mm_dir``; returns the
    iteration directory. The layout lists accept '5,12,12,11' or the guides' '[[5,12,12,11]]'."""
    config = read_config(hf_dir)
    names, plan = family(config.get("model_type"), str(Path(hf_dir) / "config.json"))
    dims = names.dimensions(config)
    layout = Layout.build(dims, plan, tp_size, ep_size, vit_pp_layers, llm_pp_layers)
    source = HFSource(hf_dir, names, dims, dtype, expert_layout)
    metadata = {"model_type": config["model_type"], "hf_names": source.style, "model": source.dims, "backend": None}
    final = write_layout(source, mm_dir, "release", layout, plan, metadata, progress)
    copy_support_files(hf_dir, mm_dir)
    return final


def reshard(mm_dir, save_dir, tp_size=1, ep_size=1, vit_pp_layers=None, llm_pp_layers=None, progress=False):
    """Rewrite the latest iteration of ``mm_dir`` in a new layout under ``save_dir`` (same iteration name).

    Model weights only: a source tagged with a backend's optimizer state gets a note on stderr and an untagged
    (backend-neutral) result."""
    source = MMSource(mm_dir, streaming=True)
    metadata = dict(source.metadata)
    layout = Layout.build(metadata["model"], source.plan, tp_size, ep_size, vit_pp_layers, llm_pp_layers)
    if metadata.get("backend"):
        print(f"note: {source.directory} holds {metadata['backend']} optimizer state; reshard carries the model "
              f"weights only", file=sys.stderr)
    metadata["backend"] = None
    if Path(save_dir).resolve() != Path(mm_dir).resolve():
        copy_support_files(mm_dir, save_dir)
    return write_layout(source, save_dir, metadata["iteration"], layout, source.plan, metadata, progress)


def mm_to_hf(mm_dir, save_hf_dir, hf_dir=None, max_shard_bytes=5 * 1024 ** 3, progress=False):
    """Write the latest iteration of ``mm_dir`` (any layout) as an HF checkpoint in ``save_hf_dir``, with the HF
    names the source used and the support files (config, tokenizer, ...) of ``hf_dir`` or else of ``mm_dir``."""
    source = MMSource(mm_dir, streaming=True)
    names, _ = family(source.metadata["model_type"], str(source.directory))
    total = sum(nbytes(*entry) for entry in source.entries.values())
    with progress_bar(total, progress, "mm_to_hf") as bar:
        files = write_hf(source, names, source.metadata["model"], source.metadata["hf_names"], save_hf_dir,
                         max_shard_bytes, bar)
    copy_support_files(hf_dir or mm_dir, save_hf_dir)
    return files


def read_hf_as_mm(hf_dir, dtype="keep"):
    """(metadata as hf_to_mm writes it, {mm name: numpy array}) of an HF checkpoint, converted in memory.

    For callers that start from an HF directory without writing an mm checkpoint (inference, fine-tuning from
    HF weights); the whole model is held in memory, so prefer hf_to_mm for large models."""
    config = read_config(hf_dir)
    names, plan = family(config.get("model_type"), str(Path(hf_dir) / "config.json"))
    dims = names.dimensions(config)
    source = HFSource(hf_dir, names, dims, dtype)
    metadata = {"model_type": config["model_type"], "hf_names": source.style, "model": source.dims, "backend": None,
                "parallel": Layout.build(dims, plan).to_dict()}
    # read() returns row blocks in a buffer it reuses for the next tensor: concatenate copies them out
    return metadata, {name: np.concatenate(source.read(name), axis=0) for name in source.entries}
