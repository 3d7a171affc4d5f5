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


def stream_mm_state(model, source, names=None):
    """Fill ``model`` — built under ``nn.empty_init()``, so its parameters have no storage yet — one tensor at a
    time from ``source`` (``entries`` {mm name: (dtype, shape)} + ``read(name)`` → row blocks, e.g.
    mmx.checkpoint.store.MMSource with ``streaming=True``): each tensor is read into a reused buffer, copied into
    its parameter (cast to the parameter's dtype) and dropped, so host memory peaks at the filled parameters plus
    one tensor, never the model twice. ``names`` maps a source name to the parameter that holds it (None: this
    model does not, e.g. another pipeline stage's layer); default the name itself. Every parameter must be filled.
    """
    from mmx.checkpoint.rows import as_array

    params = {name for name, _ in nn.named_parameters(model)}
    filled = set()
    for name in source.entries:
        held = name if names is None else names(name)
        if held is None:
            continue
        if held not in params:
            raise ValueError(f"stream_mm_state: the checkpoint holds {name}, which the model has no parameter for; "
                             f"convert the checkpoint with `mmx convert hf_to_mm` for this model family and stage")
        nn.fill_parameter(model, held, as_array(source.read(name)))
        filled.add(held)
    missing = sorted(params - filled)
    if missing:
        raise ValueError(f"stream_mm_state: the checkpoint has no tensor for {len(missing)} parameters (first: "
                         f"{missing[:4]}); convert the checkpoint with `mmx convert hf_to_mm` for this model")
    return model

