"""Framework-native checkpoint files for MindSpore users: ``.ckpt`` files (``mindspore.save_checkpoint``).

Mirrors ``mmx.backends.torch.io`` (same functions, same order). MindSpore's ckpt format is protobuf, not pickle, so
loading never unpickles; ``allow_pickle`` is accepted for the same signature and changes nothing.
"""
import ml_dtypes
import mindspore as ms
import numpy as np

SUFFIX = ".ckpt"
CHECKPOINT_VERSION = 3.0


def _to_framework(array):
    return ms.Tensor(np.ascontiguousarray(array))   # ml_dtypes.bfloat16 arrays become mindspore.bfloat16 exactly


def _to_numpy(tensor):
    array = tensor.asnumpy()
    if array.dtype.name == "bfloat16" and array.dtype != ml_dtypes.bfloat16:
        # MindSpore registers its own numpy bfloat16 type; re-view the same bits as ml_dtypes' (mmx's bf16).
        array = array.view(np.uint16).view(ml_dtypes.bfloat16)
    return array


def save_native(path, tensors):
    """Write {name: numpy array} with ``mindspore.save_checkpoint`` (one entry per tensor, names unchanged)."""
    ms.save_checkpoint([{"name": name, "data": _to_framework(array)} for name, array in tensors.items()], path)


def load_native(path, allow_pickle=False):  # noqa: ARG001 - same signature as the torch backend's
    """{name: numpy array} of a ``.ckpt`` file (bf16 as ml_dtypes.bfloat16)."""
    return {name: _to_numpy(value) for name, value in ms.load_checkpoint(str(path)).items()}
