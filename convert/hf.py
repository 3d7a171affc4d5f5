"""Hugging Face checkpoints seen through a family's name table: read as mm tensors, write from mm tensors.

:class:`HFSource` opens a (possibly sharded) HF safetensors checkpoint's headers, checks every tensor the table
expects is there (and nothing unknown is), then yields whole mm tensors one group at a time (``read``).
:func:`write_hf` streams an mm source back into HF-named safetensors shards + ``model.safetensors.index.json``.
Both directions expand the same table rows (:func:`expand_table`), so they cannot drift apart.
"""
import filecmp
import json
import shutil
import sys
from pathlib import Path

import ml_dtypes
import numpy as np

from mmx.convert.transforms import make as make_transform
from mmx.checkpoint.layout import read_json
from mmx.checkpoint.publish import copy_file_atomic, new_file
from mmx.checkpoint.rows import Arena
from mmx.checkpoint.safetensors_io import DTYPES, SafetensorsFile, SafetensorsWriter, dtype_name, nbytes

INDEX_FILE = "model.safetensors.index.json"
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack", ".gguf")
WEIGHT_INDEXES = (INDEX_FILE, "pytorch_model.bin.index.json")
CAST = {"keep": None, "bf16": np.dtype(ml_dtypes.bfloat16), "fp32": np.dtype(np.float32)}


class HFCheckpointError(ValueError):
    """An HF checkpoint that does not match its family's table; the message names the file, the keys, the fix."""


def read_config(hf_dir):
    return read_json(Path(hf_dir) / "config.json", "an HF model directory needs config.json (with model_type)")


def expand_table(names, dims, style=None):
    """{mm name: (HF names tuple, transform)} for every concrete layer index; the output layer only when untied."""
    rows = {}
    # a family whose rows depend on the config or on the HF layout read (InternVL) gives them per (dims, style)
    table = names.table(dims, style) if hasattr(names, "table") else names.TABLE
    for mm, hf, transform, arguments in table:
        if dims["tied"] and mm == names.OUTPUT_LAYER[0]:
            continue
        hf = (hf,) if isinstance(hf, str) else tuple(hf)
        # {e}: one HF tensor per routed expert (GLM-4.5V's experts.{e}.gate_proj), in expert order
        hf = tuple(h.replace("{e}", str(e)) for h in hf
                   for e in (range(dims["num_experts"]) if "{e}" in h else (None,)))
        built = make_transform(transform, **{key: dims[value] for key, value in arguments.items()})
        moe = dims.get("moe_layers", ())
        fills = ([{"i": i} for i in range(dims["vision_layers"])] if "{i}" in mm else
                 [{"j": j} for j in range(dims["llm_layers"])] if "{j}" in mm else
                 [{"m": m} for m in moe] if "{m}" in mm else
                 [{"k": k} for k in range(dims["llm_layers"]) if k not in moe] if "{k}" in mm else
                 [{"d": d, "n": n} for n, d in enumerate(dims.get("deepstack_visual_indexes", ()))]
                 if "{d}" in mm else [{}])
        for fill in fills:
            rows[mm.format(**fill)] = (tuple(h.format(**fill) for h in hf), built)
    return rows


def style_name(name, style, names):
    """An HF name (transformers ≥ 4.52 form) in ``style`` ("transformers" or "legacy")."""
    if style == "legacy":
        for new, old in names.LEGACY_PREFIXES:
            if name.startswith(new):
                return old + name[len(new):]
    return name


def _detect_style(keys, names, path):
    """"transformers" (model.visual.*, model.language_model.*) or "legacy" (visual.*, model.layers.*) naming; a
    family without legacy hub names (Qwen3-VL) is always "transformers"."""
    for style, prefixes in getattr(names, "STYLE_PREFIXES", {}).items():      # InternVL: "original" layout
        if any(key.startswith(prefixes) for key in keys):
            return style
    if not names.LEGACY_PREFIXES:
        return "transformers"
    new_prefixes = tuple(new for new, _ in names.LEGACY_PREFIXES)
    old_prefixes = tuple(old for _, old in names.LEGACY_PREFIXES)
    new = any(key.startswith(new_prefixes) for key in keys)
    old = any(key.startswith(old_prefixes) and not key.startswith(new_prefixes) for key in keys)
    if new and old:
        raise HFCheckpointError(f"{path}: mixes transformers ≥ 4.52 names (model.visual.*, model.language_model.*) "
                                f"with legacy hub names (visual.*, model.layers.*); re-save it with one naming")
    return "transformers" if new else "legacy"


def open_weights(hf_dir):
    """{tensor name: SafetensorsFile} of an HF directory: index json, one model.safetensors, or *.safetensors."""
    hf_dir = Path(hf_dir)
    index = hf_dir / INDEX_FILE
    if index.exists():
        weight_map = read_json(index, "")["weight_map"]
        files = {file: None for file in weight_map.values()}
    else:
        files = {p.name: None for p in sorted(hf_dir.glob("*.safetensors"))}
        weight_map = None
        if not files:
            found = sorted(p.name for p in hf_dir.iterdir() if p.name.endswith(WEIGHT_SUFFIXES))
            raise HFCheckpointError(f"{hf_dir}: no safetensors weights found ({', '.join(found) or 'no weight files'}"
                                    f"); mmx reads safetensors only: re-save the model with "
                                    f"save_pretrained(..., safe_serialization=True)")
    for file in files:
        if not (hf_dir / file).exists():
            raise HFCheckpointError(f"{hf_dir / file} is missing (listed in {INDEX_FILE})")
        files[file] = SafetensorsFile(hf_dir / file)
    where = {}
    for file, opened in files.items():
        for name in opened.entries:
            if weight_map is None or weight_map.get(name) == file:
                where[name] = opened
    return where


class HFSource:
    """An HF checkpoint presented as whole mm tensors: ``entries`` {mm name: (dtype, shape)}, ``read(mm name)``.

    Opening reads config.json and the safetensors headers, never tensor data; ``dtype`` is "keep", "bf16" or
    "fp32" (floating tensors are cast while streaming).
    """

    def __init__(self, hf_dir, names, dims, dtype="keep", expert_layout=None):
        if dtype not in CAST:
            raise ValueError(f"--dtype {dtype!r}: choose one of {', '.join(CAST)}")
        self.hf_dir, self.names, self.cast = Path(hf_dir), names, CAST[dtype]
        self._arena = Arena()
        self._where = open_weights(hf_dir)
        self.style = _detect_style(self._where, names, hf_dir)
        if hasattr(names, "inspect"):   # numbers only the tensor shapes tell (MoE: the stacked-expert orientation)
            try:
                dims = names.inspect(dims, {name: opened.entries[name][1] for name, opened in self._where.items()},
                                     hf_dir, expert_layout)
            except ValueError as err:
                raise HFCheckpointError(str(err)) from None
        self.dims = dims
        self.rows = expand_table(names, dims, self.style)
        wanted = {style_name(h, self.style, names) for hf, _ in self.rows.values() for h in hf}
        missing = sorted(wanted - set(self._where))
        tied_head = style_name("lm_head.weight", self.style, names)
        unexpected = sorted(set(self._where) - wanted - ({tied_head} if dims["tied"] else set()))
        skipped = [name for name in unexpected if getattr(names, "skipped", lambda *_: None)(name, dims)]
        if skipped:     # e.g. GLM-4.5V's MTP layer, which transformers drops on load too
            print(f"note: {hf_dir}: skipping {len(skipped)} tensors mmx does not use: {names.skipped(skipped[0], dims)}"
                  f" (first: {skipped[0]})", file=sys.stderr)
            unexpected = sorted(set(unexpected) - set(skipped))
        if missing:
            raise HFCheckpointError(f"{hf_dir}: {len(missing)} tensors the {names.__name__} table needs are missing "
                                    f"(first: {missing[:4]}); is config.json ({dims}) the one these weights belong "
                                    f"to?")
        if unexpected:
            raise HFCheckpointError(f"{hf_dir}: {len(unexpected)} tensors are not in the {names.__name__} table "
                                    f"(first: {unexpected[:4]}); check config.json's model_type and layer counts")
        self.entries, order = {}, {}
        files = list(dict.fromkeys(self._where.values()))
        for mm, (hf, transform) in self.rows.items():
            hf = [style_name(h, self.style, names) for h in hf]
            kinds = {self._where[h].entries[h][0] for h in hf}
            if len(kinds) != 1:
                raise HFCheckpointError(f"{hf_dir}: tensors {hf} fused into {mm!r} have different dtypes {kinds}")
            try:
                shape = transform.mm_shape([self._where[h].entries[h][1] for h in hf])
            except ValueError as err:
                raise HFCheckpointError(f"{hf_dir}: cannot build {mm!r} from {hf}: {err}") from None
            self.entries[mm] = (getattr(transform, "dtype", None) or self._out_dtype(kinds.pop()), shape)
            order[mm] = (files.index(self._where[hf[0]]), self._where[hf[0]].offset(hf[0]))
        self.entries = {mm: self.entries[mm] for mm in sorted(self.entries, key=order.__getitem__)}

    def _out_dtype(self, dtype):
        """--dtype casts floating tensors only (ml_dtypes' bfloat16 is not numpy kind "f", hence the name test)."""
        floating = DTYPES[dtype].kind == "f" or dtype == "BF16"
        return dtype_name(self.cast) if self.cast is not None and floating else dtype

    def read(self, name):
        """The mm tensor ``name`` as row blocks (rows.py) in a reused buffer: valid until the next read."""
        hf, transform = self.rows[name]
        self._arena.reset()
        styled = [style_name(h, self.style, self.names) for h in hf]
        blocks = transform.to_mm([[self._where[h].read(h, self._arena)] for h in styled])
        target = DTYPES[self.entries[name][0]]
        return blocks if blocks[0].dtype == target else [block.astype(target) for block in blocks]


def support_files(src_dir):
    """The config, tokenizer, processor, chat template and generation config files of ``src_dir`` (everything at
    its top level but weights, indexes, the pointer file and hidden files), sorted."""
    return [path for path in sorted(Path(src_dir).iterdir())
            if path.is_file() and not path.name.endswith(WEIGHT_SUFFIXES) and path.name not in WEIGHT_INDEXES
            and path.name != "latest_checkpointed_iteration.txt" and not path.name.startswith(".")]


def copy_support_files(src_dir, dst_dir, atomic=True):
    """Copy the support files (:func:`support_files`) into ``dst_dir``; each one replaces its old copy in one rename
    (a live checkpoint directory never shows half a config.json) and identical copies are left as they are.
    ``atomic=False``: ``dst_dir`` is a publish staging directory nobody reads yet, plain copies suffice."""
    dst_dir = Path(dst_dir)
    dst_dir.mkdir(parents=True, exist_ok=True)
    if dst_dir.resolve() == Path(src_dir).resolve():
        return []   # converting in place (--mm-dir = --hf-dir): the files are already there
    copied = []
    for path in support_files(src_dir):
        target = dst_dir / path.name
        if not atomic:
            shutil.copy2(path, new_file(target))
        elif not (target.is_file() and filecmp.cmp(path, target, shallow=False)):
            copy_file_atomic(path, target)
        copied.append(path.name)
    return copied


def write_hf(source, names, dims, style, out_dir, max_shard_bytes=5 * 1024 ** 3, progress=None):
    """Stream an mm source (``entries`` + ``read``) into HF safetensors shards in ``out_dir`` (HF ``style`` names):
    a fresh directory (mm_to_hf's publish staging), never one that holds other weights.

    Returns the list of files written. ``progress`` is an optional tqdm-like bar updated with bytes.
    """
    rows = expand_table(names, dims, style)
    extra, absent = sorted(set(source.entries) - set(rows)), sorted(set(rows) - set(source.entries))
    if extra or absent:
        raise HFCheckpointError(f"the mm checkpoint does not match the {names.__name__} table: missing "
                                f"{absent[:4]}, unknown {extra[:4]} (a stage subset or another model?)")
    shards, current, size = [], [], 0
    for mm in rows:  # table order: the same HF files whatever layout the mm checkpoint had
        dtype, shape = source.entries[mm]
        hf, transform = rows[mm]
        group = [(style_name(h, style, names), dtype, s) for h, s in zip(hf, transform.hf_shapes(shape))]
        group_bytes = sum(nbytes(dtype, s) for _, _, s in group)
        if current and size + group_bytes > max_shard_bytes:
            shards.append(current)
            current, size = [], 0
        current.append((mm, group))
        size += group_bytes
    shards.append(current)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    files = (["model.safetensors"] if len(shards) == 1 else
             [f"model-{n + 1:05d}-of-{len(shards):05d}.safetensors" for n in range(len(shards))])
    weight_map, total = {}, 0
    for file, shard in zip(files, shards):
        entries = [entry for _, group in shard for entry in group]
        writer = SafetensorsWriter(new_file(out_dir / file), entries, {"format": "pt"})
        for mm, group in shard:
            tensors = rows[mm][1].to_hf(source.read(mm))
            for (hf_name, dtype, shape), tensor in zip(group, tensors):
                writer.write(hf_name, tensor)
                weight_map[hf_name] = file
                total += nbytes(dtype, shape)
                if progress is not None:
                    progress.update(nbytes(dtype, shape))
        writer.close()
    if len(files) > 1:
        index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
        new_file(out_dir / INDEX_FILE).write_text(json.dumps(index, indent=2) + "\n")
        files.append(INDEX_FILE)
    return files
