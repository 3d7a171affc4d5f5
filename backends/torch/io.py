"""Framework-native checkpoint files for PyTorch users: ``.pt`` files like the Megatron/MindSpeed suite's.

mm checkpoints are safetensors and backend-neutral; these exist for users who need ``torch.load``-able files.
Mirrored by ``mmx.backends.mindspore.io`` (same functions, same order). Tensors cross the boundary as numpy
arrays (bf16 as ml_dtypes.bfloat16, moved as int16 bits so no value changes).
"""
import ml_dtypes
import numpy as np
import torch

SUFFIX = ".pt"
CHECKPOINT_VERSION = 3.0


def _to_framework(array):
    array = np.ascontiguousarray(array)
    if array.dtype == ml_dtypes.bfloat16:
        return torch.from_numpy(array.view(np.int16).copy()).view(torch.bfloat16)
    return torch.from_numpy(array.copy())


def _to_numpy(tensor):
    tensor = tensor.detach().cpu().contiguous()
    if tensor.dtype == torch.bfloat16:
        return tensor.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
    return tensor.numpy()


def save_native(path, tensors):
    """Write {name: numpy array} as ``{'model': state_dict, 'checkpoint_version': 3.0}`` with torch.save."""
    torch.save({"model": {name: _to_framework(array) for name, array in tensors.items()},
                "checkpoint_version": CHECKPOINT_VERSION}, path)


def load_native(path, allow_pickle=False):
    """{name: numpy array} from a ``.pt`` file (``obj['model']`` when present, else the object itself).

    Without ``allow_pickle`` the file is read with ``torch.load(weights_only=True)``, which refuses arbitrary
    pickled objects (a Megatron file holding an argparse Namespace needs ``allow_pickle=True`` — only for files
    you trust). Entries that are not tensors (e.g. ``_extra_state``) are skipped.
    """
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=not allow_pickle)
    except Exception as err:  # noqa: BLE001 - torch raises UnpicklingError and others; all mean "refused"
        if allow_pickle:
            raise
        raise ValueError(f"{path}: torch.load(weights_only=True) refused the file ({type(err).__name__}: "
                         f"{str(err).splitlines()[0]}); if you trust it, load it with the explicit allow-pickle "
                         f"flag (--allow-pickle)") from None
    state = loaded.get("model", loaded) if isinstance(loaded, dict) else loaded
    return {name: _to_numpy(value) for name, value in state.items() if isinstance(value, torch.Tensor)}
