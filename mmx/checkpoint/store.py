"""Reading and writing mm checkpoints in any parallel layout, streaming one tensor (group) at a time.

``{mm_dir}/latest_checkpointed_iteration.txt`` names the iteration (``release`` or a number);
``{mm_dir}/{release|iter_NNNNNNN}/`` holds ``mmx_checkpoint.json`` (metadata, below) and one directory per rank
(``mp_rank_..``, see layout.py) with a ``model.safetensors`` of that rank's pieces under their global mm names.

Metadata keys: ``format`` ("mmx"), ``layout_version``, ``model_type``, ``iteration``, ``dtype`` (numpy name, or
"mixed"), ``hf_names`` ("transformers" or "legacy": the HF naming to write back), ``model`` (the numbers of
hf_names.dimensions), ``parallel`` (Layout.to_dict), ``backend`` (null for backend-neutral weights; "torch" or
"mindspore" when the iteration also holds that backend's optimizer state), ``mmx_version``.

Writes follow mmx.checkpoint.publish: everything goes to a hidden temporary directory, files are fsynced, the
directory is swapped into place atomically, and ``latest_checkpointed_iteration.txt`` is replaced last. Readers
(:func:`resolve_iteration`) first recover what a killed writer left half done.
"""
import json
import sys
from pathlib import Path

from tqdm import tqdm

import mmx
from mmx.checkpoint.families import family
from mmx.checkpoint.layout import SHARD_FILE, Layout, iteration_dir_name, placements, read_json, stored_name
from mmx.checkpoint.publish import LATEST_FILE, fsync_dir, new_file, publish_iteration, recover, write_text_atomic
from mmx.checkpoint.rows import Arena, as_array, chunks, take
from mmx.checkpoint.safetensors_io import DTYPES, SafetensorsFile, SafetensorsWriter, dtype_name, nbytes
from mmx.checkpoint.shard import full_shape, is_expert, merge, piece_shape, split, tp_rule

META_FILE = "mmx_checkpoint.json"
LAYOUT_VERSION = 1
__all__ = ["LATEST_FILE", "META_FILE", "LAYOUT_VERSION", "CheckpointError", "fsync_dir", "write_text_atomic",
           "resolve_iteration", "MMSource", "ArraySource", "write_iteration", "write_layout", "load_mm", "save_mm"]


class CheckpointError(ValueError):
    """An mm checkpoint that is missing pieces or contradicts its metadata; the message names file and fix."""


def resolve_iteration(mm_dir, iteration=None):
    """The iteration directory of ``mm_dir``: ``iteration`` if given, else the one latest_checkpointed_iteration.txt
    names."""
    mm_dir = Path(mm_dir)
    recover(mm_dir)
    if iteration is not None:   # asked for by the user (--iteration): name the ones there are
        try:
            directory = mm_dir / iteration_dir_name(iteration)
        except ValueError:
            directory = None
        if directory is None or not directory.is_dir():
            there = sorted(int(p.name[5:]) for p in mm_dir.glob("iter_*") if p.is_dir()) if mm_dir.is_dir() else []
            there = [str(n) for n in there] + (["release"] if (mm_dir / "release").is_dir() else [])
            raise CheckpointError(f"--iteration {iteration}: {mm_dir} has no such checkpoint; it holds "
                                  f"{', '.join(there) or 'none'}")
    if iteration is None:
        latest = mm_dir / LATEST_FILE
        if not latest.exists():
            raise CheckpointError(f"{latest} not found: {mm_dir} is not an mm checkpoint (convert one with "
                                  f"`mmx convert hf_to_mm --hf-dir HF --mm-dir {mm_dir}`)")
        iteration = latest.read_text().strip()
    directory = mm_dir / iteration_dir_name(iteration)
    if not directory.is_dir():
        raise CheckpointError(f"{directory} is missing, though {mm_dir / LATEST_FILE} names iteration {iteration}: "
                              f"the checkpoint is incomplete (was it copied in part?)")
    return directory


class MMSource:
    """An mm checkpoint opened for reading whole tensors, whatever its TP/PP/EP layout (headers only on open).

    ``entries``: {mm name: (dtype string, full shape)} in reading order; ``read(name)`` merges the TP pieces.
    A tied embedding's copy on the last stage (stored as the output layer) is not an entry: the first stage's
    embedding is.
    """

    def __init__(self, mm_dir, iteration=None, streaming=False):
        self._arena = Arena() if streaming else None
        self.directory = resolve_iteration(mm_dir, iteration)
        self.metadata = read_json(self.directory / META_FILE, f"{self.directory} has no mmx metadata; was it "
                                  f"written by mmx (`mmx convert hf_to_mm`)?")
        if self.metadata.get("layout_version", 0) > LAYOUT_VERSION:
            raise CheckpointError(f"{self.directory / META_FILE}: layout_version {self.metadata['layout_version']} "
                                  f"is newer than this mmx reads ({LAYOUT_VERSION}); upgrade mmx")
        self.names, self.plan = family(self.metadata["model_type"], str(self.directory / META_FILE))
        self.layout = Layout.from_dict(self.metadata["parallel"])
        self._files, self._where = {}, {}
        for tp, pp, ep in self.layout.ranks():
            path = self.directory / self.layout.rank_dir(tp, pp, ep) / SHARD_FILE
            if not path.exists():
                raise CheckpointError(f"{path} is missing: the metadata's layout {self.layout.to_dict()} needs a "
                                      f"file for tp rank {tp}, pp stage {pp}, ep rank {ep}")
            self._files[tp, pp, ep] = SafetensorsFile(path)
        self.entries = {}
        tied_copy = self.plan.PIPELINE["tied_copy"][1] if self.tied else None
        for pp in range(self.layout.pp_size):
            first = self._files[0, pp, 0]
            for name, (dtype, shape) in first.entries.items():
                if name in self.entries or name == tied_copy:
                    continue
                rule = tp_rule(name, self.plan)
                for tp, ep in ((tp, ep) for tp in range(self.layout.tp_size) for ep in range(self.layout.ep_size)):
                    if name not in self._files[tp, pp, ep].entries:
                        raise CheckpointError(f"{self._files[tp, pp, ep].path} lacks {name!r}, which tp rank 0 of "
                                              f"stage {pp} holds: the checkpoint is incomplete")
                shape = full_shape(shape, rule, self.layout.tp_size)
                if is_expert(name, self.plan):    # expert-parallel ranks hold consecutive experts (dim 0)
                    shape = (shape[0] * self.layout.ep_size,) + tuple(shape[1:])
                self.entries[name] = (dtype, shape)
                self._where[name] = pp

    @property
    def tied(self):
        return self.metadata["model"]["tied"]

    def file_of(self, name):
        """The path of the one safetensors file holding the whole tensor ``name`` under that name (so a reader can
        take a slice of its rows straight from it), or None when TP or expert-parallel ranks hold pieces of it."""
        pieces = self.layout.ep_size > 1 and is_expert(name, self.plan) or \
            self.layout.tp_size > 1 and tp_rule(name, self.plan) != "replicate"
        return None if pieces else self._files[0, self._where[name], 0].path

    def read(self, name):
        """The whole tensor ``name`` as row blocks (rows.py); with ``streaming`` they live in a reused buffer and
        stay valid only until the next read."""
        pp, tp_size = self._where[name], self.layout.tp_size
        rule = tp_rule(name, self.plan)
        if self._arena is not None:
            self._arena.reset()
        # Expert-parallel ranks each hold a run of experts: their pieces stack on dim 0 (rows).
        ep_ranks = range(self.layout.ep_size) if is_expert(name, self.plan) else range(1)

        def piece(tp):
            return [self._files[tp, pp, ep].read(name, self._arena) for ep in ep_ranks]
        if rule == "replicate":
            return piece(0)
        return merge([piece(tp) for tp in range(tp_size)], rule, self._arena)


    def read_rows(self, name, begin, end):
        """Rows ``begin:end`` (dim 0) of the whole tensor ``name`` as row blocks (valid until the next read with
        ``streaming``), reading only those rows' bytes wherever the layout allows: the expert-parallel files that hold
        those experts (a rank's run of experts, rows of its file), and of each tensor-parallel piece when the split
        is not on dim 0 (``replicate``: rank 0's, ``row``: the pieces' rows side by side). A dim-0 TP split (its
        rows are interleaved over the pieces) is merged whole and its rows taken."""
        pp, rule = self._where[name], tp_rule(name, self.plan)
        if rule not in ("replicate", "row") and self.layout.tp_size > 1:
            return take(self.read(name), begin, end)
        if self._arena is not None:
            self._arena.reset()
        ep_size = self.layout.ep_size if is_expert(name, self.plan) else 1
        per = self.entries[name][1][0] // ep_size if self.entries[name][1] else 0

        def rows(tp):   # this TP piece's rows begin:end, from the EP files holding them
            if not per:
                return [self._files[tp, pp, 0].read(name, self._arena)]
            if begin == end:
                return [self._files[tp, pp, 0].read_rows(name, 0, 0, self._arena)]
            return [self._files[tp, pp, ep].read_rows(name, max(begin, ep * per) - ep * per,
                                                      min(end, (ep + 1) * per) - ep * per, self._arena)
                    for ep in range(begin // per, (end - 1) // per + 1)]
        if rule == "replicate" or self.layout.tp_size == 1:
            return rows(0)
        return merge([rows(tp) for tp in range(self.layout.tp_size)], rule, self._arena)


class ArraySource:
    """In-memory {name: numpy array} presented like MMSource (for save_mm)."""

    def __init__(self, tensors):
        self._tensors = tensors
        self.entries = {name: (dtype_name(array.dtype), tuple(array.shape)) for name, array in tensors.items()}

    def read(self, name):
        return [self._tensors[name]]


def progress_bar(total_bytes, enabled, description):
    """A tqdm byte counter on stderr (disabled unless ``enabled``)."""
    return tqdm(total=total_bytes, unit="B", unit_scale=True, unit_divisor=1024, desc=description, file=sys.stderr,
                disable=not enabled, leave=False)


def write_iteration(source, directory, iteration, layout, plan, metadata, progress=False):
    """Stream every tensor of ``source`` into ``directory`` (a publish staging directory: the rank directories
    and the metadata file of one iteration) in ``layout``.

    ``source`` has ``entries`` ({name: (dtype string, whole shape)}, in reading order) and ``read(name)`` (the
    whole tensor as row blocks, rows.py; valid until the next read).
    All shapes are checked against the layout before the first tensor is read.
    """
    directory = Path(directory)
    stages, tied = layout.stages(), metadata["model"]["tied"]
    placement, declared = {}, {rank: [] for rank in layout.ranks()}
    for name, (dtype, shape) in source.entries.items():
        rule = tp_rule(name, plan)
        piece = piece_shape(shape, rule, layout.tp_size, name)
        expert = is_expert(name, plan) and layout.ep_size > 1
        if expert:
            piece = (piece[0] // layout.ep_size,) + tuple(piece[1:])
        held = dict(placements(name, stages, plan, tied))
        if not held:
            raise CheckpointError(f"no pipeline stage of {layout.to_dict()} holds {name!r}")
        placement[name] = (rule, held, expert)
        for tp, pp, ep in layout.ranks():
            if pp in held:
                declared[tp, pp, ep].append((held[pp], dtype, piece))
    writers = {}
    try:
        for rank, entries in declared.items():
            path = new_file(directory / layout.rank_dir(*rank) / SHARD_FILE)
            writers[rank] = SafetensorsWriter(path, entries, {"format": "pt"})
        label = iteration_dir_name(iteration)
        with progress_bar(sum(nbytes(*entry) for entry in source.entries.values()), progress, label) as bar:
            for name, (dtype, shape) in source.entries.items():
                rule, held, expert = placement[name]
                pieces = split(source.read(name), rule, layout.tp_size)
                # stacked experts: EP rank e gets the e-th run of experts; everything else is on every EP rank
                by_rank = {tp: chunks(pieces[tp], layout.ep_size) if expert else [pieces[tp]] * layout.ep_size
                           for tp in range(layout.tp_size)}
                for tp, pp, ep in layout.ranks():
                    if pp in held:
                        writers[tp, pp, ep].write(held[pp], by_rank[tp][ep])
                bar.update(nbytes(dtype, shape))
        for writer in writers.values():
            writer.close()
    except BaseException:
        for writer in writers.values():
            writer.abort()
        raise
    dtypes = {dtype for dtype, _ in source.entries.values()}
    full_metadata = {**metadata, "format": "mmx", "layout_version": LAYOUT_VERSION, "iteration": iteration,
                     "dtype": _dtype_label(dtypes), "parallel": layout.to_dict(),
                     "backend": metadata.get("backend"), "mmx_version": mmx.__version__}
    experts = metadata["model"].get("num_experts", 0)
    full_metadata.pop("local_experts", None)
    if experts and layout.ep_size > 1:   # local expert i of EP rank e is global expert e * E / ep + i
        local = experts // layout.ep_size
        full_metadata["local_experts"] = [list(range(rank * local, (rank + 1) * local))
                                          for rank in range(layout.ep_size)]
    new_file(directory / META_FILE).write_text(json.dumps(full_metadata, indent=2) + "\n")
    return directory


def write_layout(source, mm_dir, iteration, layout, plan, metadata, progress=False):
    """Add iteration ``iteration`` of ``source`` (see write_iteration) to the mm directory ``mm_dir`` (published:
    an existing copy of the iteration is swapped out only once the new one is complete, and
    ``latest_checkpointed_iteration.txt`` names it last). Returns the iteration directory."""
    return publish_iteration(mm_dir, iteration_dir_name(iteration),
                             lambda staging: write_iteration(source, staging, iteration, layout, plan, metadata,
                                                             progress), pointer=iteration)


def _dtype_label(dtypes):
    floats = {DTYPES[d].name for d in dtypes if DTYPES[d].kind == "f" or d == "BF16"}
    return floats.pop() if len(floats) == 1 else ("mixed" if floats else "none")


def load_mm(mm_dir, stage=None, iteration=None):
    """(metadata, {mm name: numpy array}) of an mm checkpoint in any layout, TP pieces merged into whole tensors.

    ``stage`` (an mmx.parallel.Stage, of any layout) keeps only the tensors that stage's model holds, under the
    names its state dict uses (global layer indices; a tied last stage gets the embedding as its output layer).
    ``iteration`` overrides latest_checkpointed_iteration.txt.
    """
    source = MMSource(mm_dir, iteration)
    if stage is None:
        return source.metadata, {name: as_array(source.read(name)) for name in source.entries}
    stored = {name: stored_name(name, stage, source.plan, source.tied) for name in source.entries}
    return source.metadata, {held: as_array(source.read(name)) for name, held in stored.items() if held is not None}


def save_mm(directory, iteration, tensors, metadata, layout):
    """Write whole tensors {mm name: numpy array} as an mm checkpoint split into ``layout`` (atomic).

    ``metadata`` needs ``model_type`` and ``model`` (the numbers, as load_mm returns them); ``backend`` tags the
    optimizer-state layout when the caller stores one beside the weights. ``iteration``: "release" or an int.
    """
    _, plan = family(metadata["model_type"], "metadata")
    layout.validate(metadata["model"], plan)
    return write_layout(ArraySource(tensors), directory, iteration, layout, plan, metadata)
