"""Training checkpoints: model + optimizer + scheduler + RNG + data position, written atomically.

Layout (the guides' names; model weights readable by ``mmx convert mm_to_hf`` / ``mmx infer``)::

    SAVE/latest_checkpointed_iteration.txt      "10" — written last, atomically (temp file, fsync, rename)
    SAVE/iter_0000010/mmx_checkpoint.json       mmx.checkpoint's metadata (model type, layout, dtype, iteration,
                                                backend tag) + ``contents``: which of the files below exist
    SAVE/iter_0000010/trainer_state.json        iteration, consumed samples, schedule, loss history, data-parallel
                                                size, streaming position (one per rank when > 1)
    SAVE/iter_0000010/mp_rank_00/model.safetensors        every model parameter (backend-neutral)
    SAVE/iter_0000010/mp_rank_00/optimizer.safetensors    exp_avg/<name>, exp_avg_sq/<name> (float32) + step
    SAVE/iter_0000010/mp_rank_00/rng.safetensors          the backend's generator state (tagged by backend)

The model half is an mm checkpoint as mmx.checkpoint.store defines it (same metadata file, same
``mp_rank_00/model.safetensors``), so ``load_mm``, ``mmx convert mm_to_hf`` and ``mmx infer`` read training
checkpoints directly; the optimizer, RNG and trainer-state files ride along in the same atomic directory.

Atomicity (mmx.checkpoint.publish): everything is written into ``SAVE/.iter_0000010.tmp-<pid>``, each file and
directory fsynced, the directory swapped in as ``iter_0000010`` (an existing one of that name is exchanged
atomically) and the parent fsynced; only then is ``latest_checkpointed_iteration.txt`` replaced. A process killed at
any point leaves the previous checkpoint complete and ``latest`` pointing at it; the next start (a save, a load,
``read_latest``) removes the leftovers and rolls back a half-done swap.

A save directory holds one run: :func:`prepare_save_dir` refuses one that holds another run's checkpoint (unless
the run resumes it or sets ``training.overwrite``, which keeps the old directory aside until this run's first
checkpoint is complete), and :func:`unusable_tensors` keeps weights no further step could use out of checkpoints.

Optimizer state uses the same layout on both backends (moments keyed by parameter name); the metadata still
records which backend wrote it, and loading under the other backend says what it converted (the moments) and what it
could not (the framework's generator state, which is re-seeded from the run's seed and step).
"""
import json
import os

import numpy as np
from safetensors import safe_open
from safetensors.numpy import load_file, save_file

import mmx
from mmx.checkpoint import publish
from mmx.checkpoint.layout import iteration_dir_name
from mmx.checkpoint.publish import LATEST_FILE as LATEST
from mmx.checkpoint.store import LAYOUT_VERSION, META_FILE
from mmx.train.config import ConfigError

# A weight at or above this magnitude squares to inf in float32 (and bf16, which has the same exponent range), so
# the first norm or dot product it enters overflows: such a checkpoint cannot produce a finite loss.
UNUSABLE_MAGNITUDE = float(np.sqrt(np.finfo(np.float32).max))


def iteration_dir(save_dir, iteration):
    """``SAVE/iter_{n:07d}`` (``release`` for the iteration ``"release"`` hf_to_mm writes)."""
    return os.path.join(save_dir, iteration_dir_name(iteration))


def read_latest(load_dir, recover=True):
    """The iteration ``latest_checkpointed_iteration.txt`` names (int, or "release"); None without the file.

    ``recover`` first finishes or rolls back what a killed writer left half done (mmx.checkpoint.publish); data
    parallel ranks other than 0 pass False (one process repairs, and a live writer on another host is never taken
    for a dead one)."""
    path = os.path.join(load_dir, LATEST)
    if recover:
        publish.recover(load_dir)
    if not os.path.exists(path):
        return None
    text = open(path).read().strip()
    if text == "release":
        return text
    if not text.isdigit():
        raise ValueError(f"{path} holds {text!r}; it must be an iteration number or 'release'")
    return int(text)


def _write_json(path, obj):
    with open(publish.new_file(path), "w") as handle:
        json.dump(obj, handle, indent=1, sort_keys=True)


def _write_safetensors(path, tensors, metadata=None):
    """Write ``tensors`` ({name: numpy}, or a filled :class:`SafetensorsStream`) as the safetensors file ``path``."""
    if isinstance(tensors, SafetensorsStream):
        return tensors.finish(publish.new_file(path), metadata)
    save_file({name: np.ascontiguousarray(array) for name, array in tensors.items()}, str(publish.new_file(path)),
              metadata={key: str(value) for key, value in (metadata or {}).items()})


def single_rank_layout(parallel):
    """The one-rank layout of the training checkpoint (whole tensors), keeping the source's layer counts."""
    parallel = parallel or {}
    return {"tp_size": 1, "pp_size": 1, "ep_size": 1,
            "vit_pp_layers": [sum(parallel.get("vit_pp_layers", [0]))],
            "llm_pp_layers": [sum(parallel.get("llm_pp_layers", [0]))]}


# safetensors' dtype codes, in the order of its Dtype enum: a file lists (and stores) its tensors by dtype, the
# later ones first, then by name (safetensors.numpy.save_file's layout, which SafetensorsStream reproduces)
_ST_ORDER = ("BOOL", "U8", "I8", "I16", "U16", "F16", "BF16", "I32", "U32", "F32", "F64", "I64", "U64")
_ST_CODES = {"bool": "BOOL", "uint8": "U8", "int8": "I8", "int16": "I16", "uint16": "U16", "float16": "F16",
             "bfloat16": "BF16", "int32": "I32", "uint32": "U32", "float32": "F32", "float64": "F64", "int64": "I64",
             "uint64": "U64"}
_COPY_BYTES = 16 << 20


class SafetensorsStream:
    """One safetensors file written from tensors handed over one at a time (:meth:`add`), so the writer never holds
    more than the tensor it is given: each one's bytes go to a spool file in ``folder`` right away, and
    :meth:`finish` writes the file: the header (known only once every shape and dtype is), then the data in the
    file's order, copied in bounded chunks. The result is the file ``_write_safetensors`` writes for the same dict
    (safetensors.numpy.save_file; metadata keys sorted); the writer keeps no reference to a tensor once :meth:`add`
    returns."""

    def __init__(self, folder, name):
        os.makedirs(folder, exist_ok=True)
        self.spool_path = os.path.join(folder, f".{name}.spool")
        self.spool = open(self.spool_path, "w+b")
        self.entries, self.size = {}, 0    # name -> (dtype code, shape, spool offset, bytes)
        self.dtypes = set()

    def add(self, name, array):
        array = np.ascontiguousarray(array)
        code = _ST_CODES.get(str(array.dtype))
        if code is None:
            raise TypeError(f"{name}: dtype {array.dtype} has no safetensors code here ({', '.join(_ST_CODES)})")
        if name in self.entries:
            raise ValueError(f"{name} was written twice to {self.spool_path}")
        self.spool.write(array.reshape(-1).view(np.uint8).data)
        self.entries[name] = (code, list(array.shape), self.size, array.nbytes)
        self.size += array.nbytes
        self.dtypes.add(str(array.dtype))

    def finish(self, path, metadata=None):
        order = sorted(self.entries, key=lambda name: (-_ST_ORDER.index(self.entries[name][0]), name))
        header, offset = {}, 0
        if metadata is not None:
            header["__metadata__"] = {key: str(metadata[key]) for key in sorted(metadata)}
        for name in order:
            code, shape, _, size = self.entries[name]
            header[name] = {"dtype": code, "shape": shape, "data_offsets": [offset, offset + size]}
            offset += size
        text = json.dumps(header, separators=(",", ":")).encode()
        text += b" " * (-len(text) % 8)
        with open(path, "wb") as out:
            out.write(np.uint64(len(text)).tobytes() + text)
            for name in order:
                _, _, start, size = self.entries[name]
                self.spool.seek(start)
                while size:
                    chunk = self.spool.read(min(size, _COPY_BYTES))
                    out.write(chunk)
                    size -= len(chunk)
        self.spool.close()
        os.remove(self.spool_path)


def _moment_items(optimizer_state):
    """(kind, name, array) of a whole optimizer state dict, the items of optimizer.safetensors (kind/name)."""
    for kind in ("exp_avg", "exp_avg_sq"):
        for name, value in optimizer_state[kind].items():
            yield kind, name, value


def save_checkpoint(save_dir, iteration, model_tensors, metadata, trainer_state, optimizer_state=None,
                    rng_state=None, check=None):
    """Write checkpoint ``iteration`` atomically (see the module docstring) and return its directory.

    ``model_tensors``: {name: numpy}, or an iterable of (name, numpy) pairs that gathers each tensor as it is
    drawn (a sharded model's save: written and dropped one at a time, so no process holds the whole model).
    ``metadata`` must hold ``backend``; ``optimizer_state`` / ``rng_state`` are the backend's numpy dicts, or None
    when ``no_save_optim`` / ``no_save_rng``; the optimizer state may also be ``(step, iterable of (kind, name,
    numpy))`` (``kind`` exp_avg / exp_avg_sq), streamed the same way. Every tensor is checked as it streams
    (:func:`unusable_reason`); ``check(found)`` (default: raise on any) is called with the problems once all are
    written and before anything is published, so a refused checkpoint leaves nothing behind.
    """
    def write(directory):
        rank_dir = os.path.join(directory, "mp_rank_00")
        found = []
        model = SafetensorsStream(rank_dir, "model.safetensors")
        for name, value in (model_tensors.items() if isinstance(model_tensors, dict) else model_tensors):
            reason = unusable_reason(name, value)
            if reason:
                found.append(reason)
            model.add(name, value)
            del value   # the writer keeps no reference either: one gathered tensor alive at a time
        _write_safetensors(os.path.join(rank_dir, "model.safetensors"), model, {"format": "pt"})
        contents = ["model"]
        if optimizer_state is not None:
            if isinstance(optimizer_state, dict):
                step, moments = optimizer_state["step"], _moment_items(optimizer_state)
            else:
                step, moments = optimizer_state
            optimizer = SafetensorsStream(rank_dir, "optimizer.safetensors")
            for kind, name, value in moments:
                reason = unusable_reason(f"{kind}/{name}", value, moment=True)
                if reason:
                    found.append(reason)
                optimizer.add(f"{kind}/{name}", value)
                del value
            _write_safetensors(os.path.join(rank_dir, "optimizer.safetensors"), optimizer,
                               {"step": step, "backend": metadata["backend"]})
            contents.append("optimizer")
        (check or _refuse_unusable)(found)
        if rng_state is not None:
            _write_safetensors(os.path.join(rank_dir, "rng.safetensors"), rng_state, {"backend": metadata["backend"]})
            contents.append("rng")
        _write_json(os.path.join(directory, "trainer_state.json"), trainer_state)
        dtypes = {dtype for dtype in model.dtypes if dtype.startswith(("float", "bfloat"))}
        _write_json(os.path.join(directory, META_FILE),
                    dict(metadata, format="mmx", iteration=int(iteration), layout_version=LAYOUT_VERSION,
                         contents=contents, parallel=single_rank_layout(metadata.get("parallel")),
                         dtype=dtypes.pop() if len(dtypes) == 1 else "mixed", mmx_version=mmx.__version__))

    final = publish.publish_iteration(save_dir, iteration_dir_name(iteration), write, pointer=iteration)
    return str(final)


def _refuse_unusable(found):
    if found:
        raise ValueError(f"unusable tensors, no checkpoint written: {'; '.join(found[:3])}")


def unusable_reason(name, value, moment=False):
    """"name: why" when weight ``value`` is not finite or reaches UNUSABLE_MAGNITUDE (a ``moment``: when it is not
    finite), else None."""
    value = np.asarray(value)
    if value.dtype.kind not in "fV" and "bfloat16" not in str(value.dtype):
        return None
    finite = np.isfinite(value.astype(np.float32, copy=False))
    if moment:
        return None if finite.all() else f"{name}: non-finite optimizer moment"
    if not finite.all():
        return f"{name}: {int((~finite).sum())} non-finite values"
    peak = float(np.abs(value).max()) if value.size else 0.0
    if peak >= UNUSABLE_MAGNITUDE:
        return f"{name}: max |w| {peak:.3g} >= {UNUSABLE_MAGNITUDE:.3g} (its square overflows float32)"
    return None


def unusable_tensors(model_tensors, optimizer_state=None):
    """["name: why", ...] for weights that are not finite or reach UNUSABLE_MAGNITUDE, and optimizer moments that
    are not finite: a checkpoint holding them would resume into NaN (the loss and gradient norm of the step that
    produced them can still be finite)."""
    found = [unusable_reason(name, value) for name, value in model_tensors.items()]
    for kind in ("exp_avg", "exp_avg_sq"):
        for name, value in ((optimizer_state or {}).get(kind) or {}).items():
            found.append(unusable_reason(f"{kind}/{name}", value, moment=True))
    return [reason for reason in found if reason]


def _same_dir(a, b):
    return bool(a) and bool(b) and os.path.realpath(a) == os.path.realpath(b)


def prepare_save_dir(training, rank=0):
    """Check ``training.save`` before this run writes anything there (every rank checks; rank 0 acts).

    A save directory holding a checkpoint this run does not resume (``training.load`` is another directory or
    unset) is refused with a ConfigError naming the directory, its iteration and the fixes. With
    ``training.overwrite`` rank 0 sets the old directory aside whole (``.SAVE.old-<pid>``) and starts an empty one;
    the first checkpoint of this run removes it (:func:`finish_overwrite`), and a run killed before that gets it
    back at the next start. Returns a note for the log, or None.
    """
    save, load = training.get("save"), training.get("load")
    if not save:
        return None
    latest = read_latest(save, recover=rank == 0)   # rank 0 alone recovers and sets aside
    if latest is None or _same_dir(save, load):
        return None
    if not training.get("overwrite"):
        resumed = f"resumes {load}" if load else "starts from model.init_from_hf_path"
        raise ConfigError(f"training.save {save} already holds a checkpoint at iteration {latest} ({LATEST}) that "
                          f"this run would not continue (it {resumed}): set training.load={save} to resume it, "
                          f"training.overwrite=true to replace it (kept until this run's first checkpoint is "
                          f"complete), or choose another training.save")
    if rank == 0:
        publish.set_aside(save)
    return (f"training.overwrite: the checkpoint at iteration {latest} in {save} is set aside and removed once this "
            f"run's first checkpoint is complete")


def prune_checkpoints(save_dir, keep):
    """``training.save_total_limit``: remove all but the ``keep`` newest ``iter_*`` checkpoints of ``save_dir`` (the
    one ``latest_checkpointed_iteration.txt`` names always stays); returns the removed directories. None / 0 keeps
    every one."""
    import re
    import shutil

    if not keep:
        return []
    latest = read_latest(save_dir, recover=False)
    found = sorted(int(match.group(1)) for name in os.listdir(save_dir)
                   for match in [re.fullmatch(r"iter_(\d+)", name)] if match)
    removed = []
    for iteration in found[:-keep] if len(found) > keep else []:
        if iteration == latest:
            continue
        path = iteration_dir(save_dir, iteration)
        shutil.rmtree(path)
        removed.append(path)
    return removed


def finish_overwrite(save):
    """After a checkpoint of this run is complete: remove what prepare_save_dir set aside (if anything)."""
    return publish.drop_set_aside(save)


def load_checkpoint(load_dir, iteration=None, recover=True):
    """Read a checkpoint written by :func:`save_checkpoint`: a dict with ``iteration``, ``metadata``,
    ``trainer_state``, ``model`` {name: numpy}, ``optimizer`` (or None), ``rng`` (or None).

    ``iteration`` defaults to the one ``latest_checkpointed_iteration.txt`` names; ``recover`` as in read_latest.
    """
    if recover and iteration is not None:
        publish.recover(load_dir)
    if iteration is None:
        iteration = read_latest(load_dir, recover)
        if iteration is None:
            raise FileNotFoundError(f"{load_dir} has no {LATEST}; it is not a training checkpoint directory "
                                    f"(set training.load to a directory written by mmx finetune's save)")
    folder = iteration_dir(load_dir, iteration)
    rank_dir = os.path.join(folder, "mp_rank_00")
    for required in (META_FILE, "trainer_state.json", os.path.join("mp_rank_00", "model.safetensors")):
        if not os.path.exists(os.path.join(folder, required)):
            raise FileNotFoundError(f"checkpoint {folder} has no {required}: incomplete or not written by "
                                    f"mmx finetune. Point {os.path.join(load_dir, LATEST)} at a complete one.")
    with open(os.path.join(folder, META_FILE)) as handle:
        metadata = json.load(handle)
    with open(os.path.join(folder, "trainer_state.json")) as handle:
        trainer_state = json.load(handle)
    result = {"iteration": iteration, "metadata": metadata, "trainer_state": trainer_state,
              "model": load_file(os.path.join(rank_dir, "model.safetensors")), "optimizer": None, "rng": None}
    optimizer_path = os.path.join(rank_dir, "optimizer.safetensors")
    if os.path.exists(optimizer_path):
        with safe_open(optimizer_path, "np") as handle:
            step = int(handle.metadata()["step"])
        moments = load_file(optimizer_path)
        result["optimizer"] = {
            "step": step,
            "exp_avg": {key[len("exp_avg/"):]: value for key, value in moments.items() if key.startswith("exp_avg/")},
            "exp_avg_sq": {key[len("exp_avg_sq/"):]: value for key, value in moments.items()
                           if key.startswith("exp_avg_sq/")}}
    rng_path = os.path.join(rank_dir, "rng.safetensors")
    if os.path.exists(rng_path):
        result["rng"] = load_file(rng_path)
    return result
