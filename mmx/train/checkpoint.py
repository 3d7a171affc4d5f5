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

Atomicity: everything is written into ``SAVE/.tmp_iter_0000010.<pid>``, each file fsynced, the directory renamed
to ``iter_0000010`` and the parent fsynced; only then is ``latest_checkpointed_iteration.txt`` replaced. A process
killed at any point leaves the previous checkpoint complete and ``latest`` pointing at it; the leftover ``.tmp_*``
directory is removed by the next save.

Optimizer state uses the same layout on both backends (moments keyed by parameter name); the metadata still
records which backend wrote it, and loading under the other backend says what it converted (the moments) and what it
could not (the framework's generator state, which is re-seeded from the run's seed and step).
"""
import json
import os
import shutil

import numpy as np
from safetensors import safe_open
from safetensors.numpy import load_file, save_file

import mmx
from mmx.checkpoint.layout import iteration_dir_name
from mmx.checkpoint.store import LATEST_FILE as LATEST
from mmx.checkpoint.store import LAYOUT_VERSION, META_FILE, commit_iteration, fsync_dir


def iteration_dir(save_dir, iteration):
    """``SAVE/iter_{n:07d}`` (``release`` for the iteration ``"release"`` hf_to_mm writes)."""
    return os.path.join(save_dir, iteration_dir_name(iteration))


def read_latest(load_dir):
    """The iteration ``latest_checkpointed_iteration.txt`` names (int, or "release"); None without the file."""
    path = os.path.join(load_dir, LATEST)
    if not os.path.exists(path):
        return None
    text = open(path).read().strip()
    if text == "release":
        return text
    if not text.isdigit():
        raise ValueError(f"{path} holds {text!r}; it must be an iteration number or 'release'")
    return int(text)


def _fsync_file(path):
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


def _write_json(path, obj):
    with open(path, "w") as handle:
        json.dump(obj, handle, indent=1, sort_keys=True)
        handle.flush()
        os.fsync(handle.fileno())


def _write_safetensors(path, tensors, metadata=None):
    save_file({name: np.ascontiguousarray(array) for name, array in tensors.items()}, path,
              metadata={key: str(value) for key, value in (metadata or {}).items()})
    _fsync_file(path)


def single_rank_layout(parallel):
    """The one-rank layout of the training checkpoint (whole tensors), keeping the source's layer counts."""
    parallel = parallel or {}
    return {"tp_size": 1, "pp_size": 1, "ep_size": 1,
            "vit_pp_layers": [sum(parallel.get("vit_pp_layers", [0]))],
            "llm_pp_layers": [sum(parallel.get("llm_pp_layers", [0]))]}


def _dtype_label(tensors):
    dtypes = {str(array.dtype) for array in tensors.values()
              if array.dtype.kind in "fV" or "bfloat16" in str(array.dtype)}
    return dtypes.pop() if len(dtypes) == 1 else "mixed"


def save_checkpoint(save_dir, iteration, model_tensors, metadata, trainer_state, optimizer_state=None,
                    rng_state=None):
    """Write checkpoint ``iteration`` atomically (see the module docstring) and return its directory.

    ``model_tensors`` {name: numpy}; ``metadata`` must hold ``backend``; ``optimizer_state`` / ``rng_state`` are
    the backend's numpy dicts, or None when ``no_save_optim`` / ``no_save_rng``.
    """
    os.makedirs(save_dir, exist_ok=True)
    for stale in os.listdir(save_dir):
        if stale.startswith(".tmp_iter_"):
            shutil.rmtree(os.path.join(save_dir, stale), ignore_errors=True)
    final = iteration_dir(save_dir, iteration)
    temp = os.path.join(save_dir, f".tmp_{os.path.basename(final)}.{os.getpid()}")
    rank_dir = os.path.join(temp, "mp_rank_00")
    os.makedirs(rank_dir)

    _write_safetensors(os.path.join(rank_dir, "model.safetensors"), model_tensors, {"format": "pt"})
    contents = ["model"]
    if optimizer_state is not None:
        moments = {f"exp_avg/{name}": value for name, value in optimizer_state["exp_avg"].items()}
        moments.update({f"exp_avg_sq/{name}": value for name, value in optimizer_state["exp_avg_sq"].items()})
        _write_safetensors(os.path.join(rank_dir, "optimizer.safetensors"), moments,
                           {"step": optimizer_state["step"], "backend": metadata["backend"]})
        contents.append("optimizer")
    if rng_state is not None:
        _write_safetensors(os.path.join(rank_dir, "rng.safetensors"), rng_state, {"backend": metadata["backend"]})
        contents.append("rng")
    _write_json(os.path.join(temp, "trainer_state.json"), trainer_state)
    _write_json(os.path.join(temp, META_FILE),
                dict(metadata, format="mmx", iteration=int(iteration), layout_version=LAYOUT_VERSION,
                     contents=contents, parallel=single_rank_layout(metadata.get("parallel")),
                     dtype=_dtype_label(model_tensors), mmx_version=mmx.__version__))
    fsync_dir(rank_dir)
    return str(commit_iteration(save_dir, temp, iteration))


def load_checkpoint(load_dir, iteration=None):
    """Read a checkpoint written by :func:`save_checkpoint`: a dict with ``iteration``, ``metadata``,
    ``trainer_state``, ``model`` {name: numpy}, ``optimizer`` (or None), ``rng`` (or None).

    ``iteration`` defaults to the one ``latest_checkpointed_iteration.txt`` names.
    """
    if iteration is None:
        iteration = read_latest(load_dir)
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
