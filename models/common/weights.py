"""Loading mm-layout tensors (numpy) into a model built on the current backend."""
import numpy as np

from mmx import nn, ops


def load_mm_state(model, tensors, strict=True):
    """Copy ``tensors`` {mm name: numpy array} into ``model`` (names as in docs/checkpoint-layout.md).

    Each array becomes a backend tensor with ``ops.tensor`` in the dtype of the parameter it fills. ``strict``: every
    parameter must be filled and every name used, else a ValueError lists what is missing / unexpected.
    """
    params = dict(nn.named_parameters(model))
    unexpected = sorted(set(tensors) - set(params))
    missing = sorted(set(params) - set(tensors))
    if strict and (missing or unexpected):
        raise ValueError(f"load_mm_state: the tensors do not match the model's parameters: missing {missing[:8]}"
                         f"{' ...' if len(missing) > 8 else ''}, unexpected {unexpected[:8]}"
                         f"{' ...' if len(unexpected) > 8 else ''}. Convert the checkpoint with `mmx convert "
                         f"hf_to_mm` for this model family and stage.")
    state = {}
    for name, array in tensors.items():
        if name not in params:
            continue
        expected = tuple(params[name].shape)
        if tuple(np.shape(array)) != expected:
            raise ValueError(f"load_mm_state: {name} has shape {tuple(np.shape(array))} but the model expects "
                             f"{expected}; the checkpoint and the config disagree")
        state[name] = ops.tensor(np.asarray(array), params[name].dtype)
    nn.load_state_dict(model, state, strict=False)
    return model
