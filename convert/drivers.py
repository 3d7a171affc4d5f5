"""The three conversions behind ``mmx convert``: hf_to_mm, mm_to_hf and reshard.

Each one first validates everything it can from config.json / metadata and the safetensors headers (layout rules,
tensor names, shapes), then streams tensors: peak memory stays near the largest tensor group. Converters see whole
tensors; the split into TP/PP/EP pieces is the checkpoint layer's job (mmx.checkpoint), driven by the model plan.

Outputs are published (mmx.checkpoint.publish): the whole output directory (weights, metadata, pointer, support
files) is written into a hidden sibling and swapped in at once, so a failed or killed conversion leaves the old
directory as it was. An output that already holds a checkpoint (or anything else) is refused unless ``overwrite``.
Converting in place (``--mm-dir`` equal to the source) adds or replaces only the iteration directory.
"""
import sys
from pathlib import Path

import numpy as np

from mmx.convert.hf import HFSource, copy_support_files, read_config, write_hf
from mmx.checkpoint.families import family
from mmx.checkpoint.layout import Layout, iteration_dir_name
from mmx.checkpoint.publish import LATEST_FILE, PublishError, describe, new_file, publish_dir, publish_iteration, \
    recover
from mmx.checkpoint.safetensors_io import nbytes
from mmx.checkpoint.store import CheckpointError, MMSource, progress_bar, write_iteration


def _same(a, b):
    return Path(a).resolve() == Path(b).resolve()


def publish_mm(mm_dir, iteration, write, support_dir=None, overwrite=False, in_place=False):
    """Publish one iteration written by ``write(directory)`` as the mm checkpoint ``mm_dir`` (pointer on it), with
    ``support_dir``'s config/tokenizer files; returns the iteration directory.

    ``in_place``: ``mm_dir`` is the writer's own source, kept; the iteration directory alone is added or replaced
    (refused if the directory already names another iteration, unless ``overwrite``). Otherwise the whole directory
    is replaced (refused unless empty or ``overwrite``).
    """
    name = iteration_dir_name(iteration)
    if in_place:
        recover(mm_dir)
        latest = Path(mm_dir) / LATEST_FILE
        if latest.exists() and latest.read_text().strip() != str(iteration) and not overwrite:
            raise PublishError(f"{mm_dir} already holds {describe(mm_dir)}; pass --overwrite to point it at the new "
                               f"{name} instead, or choose another directory")
        return publish_iteration(mm_dir, name, write, pointer=iteration)

    def build(staging):
        write(staging / name)
        if support_dir is not None:
            copy_support_files(support_dir, staging, atomic=False)
        new_file(staging / LATEST_FILE).write_text(f"{iteration}\n")
        return Path(mm_dir) / name

    return publish_dir(mm_dir, build, overwrite)


def hf_to_mm(hf_dir, mm_dir, dtype="keep", tp_size=1, ep_size=1, vit_pp_layers=None, llm_pp_layers=None,
             progress=False, overwrite=False, expert_layout=None):
    """Convert the HF checkpoint in ``hf_dir`` into an mm checkpoint (``release``) in ``mm_dir``; returns the
    iteration directory. The layout lists accept '5,12,12,11' or the guides' '[[5,12,12,11]]'."""
    recover(hf_dir)
    config = read_config(hf_dir)
    names, plan = family(config.get("model_type"), str(Path(hf_dir) / "config.json"))
    dims = names.dimensions(config)
    layout = Layout.build(dims, plan, tp_size, ep_size, vit_pp_layers, llm_pp_layers)
    source = HFSource(hf_dir, names, dims, dtype, expert_layout)
    metadata = {"model_type": config["model_type"], "hf_names": source.style, "model": source.dims, "backend": None}
    in_place = _same(hf_dir, mm_dir) if Path(mm_dir).exists() else False
    if in_place and (Path(mm_dir) / "release").exists() and not overwrite:
        raise PublishError(f"{mm_dir} already holds {describe(mm_dir)}; pass --overwrite to replace its release")
    return publish_mm(mm_dir, "release",
                      lambda directory: write_iteration(source, directory, "release", layout, plan, metadata,
                                                        progress),
                      support_dir=hf_dir, overwrite=overwrite, in_place=in_place)


def reshard(mm_dir, save_dir, tp_size=1, ep_size=1, vit_pp_layers=None, llm_pp_layers=None, progress=False,
            overwrite=False):
    """Rewrite the latest iteration of ``mm_dir`` in a new layout under ``save_dir`` (same iteration name).

    Model weights only: a source tagged with a backend's optimizer state gets a note on stderr and an untagged
    (backend-neutral) result. ``save_dir`` equal to ``mm_dir`` rewrites that iteration in place (same weights)."""
    source = MMSource(mm_dir, streaming=True)
    metadata = dict(source.metadata)
    layout = Layout.build(metadata["model"], source.plan, tp_size, ep_size, vit_pp_layers, llm_pp_layers)
    if metadata.get("backend"):
        print(f"note: {source.directory} holds {metadata['backend']} optimizer state; reshard carries the model "
              f"weights only", file=sys.stderr)
    metadata["backend"] = None
    iteration = metadata["iteration"]
    in_place = Path(save_dir).exists() and _same(save_dir, mm_dir)
    return publish_mm(save_dir, iteration,
                      lambda directory: write_iteration(source, directory, iteration, layout, source.plan, metadata,
                                                        progress),
                      support_dir=mm_dir, overwrite=overwrite, in_place=in_place)


def mm_to_hf(mm_dir, save_hf_dir, hf_dir=None, max_shard_bytes=5 * 1024 ** 3, progress=False, overwrite=False,
             iteration=None):
    """Write the latest iteration (or ``iteration``) of ``mm_dir`` (any layout) as an HF checkpoint in ``save_hf_dir``, with the HF
    names the source used and the support files (config, tokenizer, ...) of ``hf_dir`` or else of ``mm_dir``.

    The export is published whole (weights, index, support files); without a config.json to copy it is refused
    before anything is written (the metadata alone cannot rebuild one)."""
    source = MMSource(mm_dir, iteration, streaming=True)
    names, _ = family(source.metadata["model_type"], str(source.directory))
    support = hf_dir or mm_dir
    if hf_dir is not None:
        recover(hf_dir)
    if not (Path(support) / "config.json").is_file():
        raise CheckpointError(f"{Path(support) / 'config.json'} not found: mm_to_hf copies config.json, tokenizer "
                              f"and processor files from {'--hf-dir' if hf_dir else 'the mm directory'}, and an HF "
                              f"checkpoint without them does not load; pass --hf-dir with the HF directory the model "
                              f"came from")
    if _same(save_hf_dir, mm_dir) if Path(save_hf_dir).exists() else False:
        raise PublishError(f"--save-hf-dir {save_hf_dir} is the mm checkpoint being exported; write to another "
                           f"directory")
    total = sum(nbytes(*entry) for entry in source.entries.values())

    def build(staging):
        with progress_bar(total, progress, "mm_to_hf") as bar:
            files = write_hf(source, names, source.metadata["model"], source.metadata["hf_names"], staging,
                             max_shard_bytes, bar)
        copy_support_files(support, staging, atomic=False)
        return files

    return publish_dir(save_hf_dir, build, overwrite)


def read_hf_as_mm(hf_dir, dtype="keep"):
    """(metadata as hf_to_mm writes it, {mm name: numpy array}) of an HF checkpoint, converted in memory.

    For callers that start from an HF directory without writing an mm checkpoint (inference, fine-tuning from
    HF weights); the whole model is held in memory, so prefer hf_to_mm for large models."""
    recover(hf_dir)
    config = read_config(hf_dir)
    names, plan = family(config.get("model_type"), str(Path(hf_dir) / "config.json"))
    dims = names.dimensions(config)
    source = HFSource(hf_dir, names, dims, dtype)
    metadata = {"model_type": config["model_type"], "hf_names": source.style, "model": source.dims, "backend": None,
                "parallel": Layout.build(dims, plan).to_dict()}
    # read() returns row blocks in a buffer it reuses for the next tensor: concatenate copies them out
    return metadata, {name: np.concatenate(source.read(name), axis=0) for name in source.entries}
