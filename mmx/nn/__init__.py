"""mmx.nn — modules for model code: the backend's Module/Parameter/containers and framework-free layers.

``Module`` is a real ``torch.nn.Module`` on torch and a real ``mindspore.nn.Cell`` on MindSpore; subclasses define
``__init__`` and ``forward`` only. Parameters are ``Parameter(tensor)`` attributes; child modules are attributes or
live in ``ModuleDict`` (str keys, e.g. global layer indices ``"0", "1", ...``) / ``ModuleList``. State-dict keys are
the dotted attribute paths and are identical on both backends.

Functions over modules (the backend's): ``state_dict(module)`` → {name: tensor}, ``load_state_dict(module, tensors,
strict=True)`` → (missing, unexpected), ``named_parameters(module)`` → [(name, Parameter)], ``set_requires_grad(param,
flag)``, ``to_device(module, device)``, ``inference_mode()`` (a context manager that disables autograd bookkeeping),
``empty_init()`` (a context manager: modules built inside hold parameters of the right shape and dtype without
storage — torch's meta device, MindSpore's lazy initializers) and ``fill_parameter(module, name, array)`` (give one
such parameter its values from a numpy array, cast to its dtype, on the process device; see
``mmx.models.build_streamed``).
"""
from mmx import backend as _backend

_BACKEND_NAMES = ("Module", "Parameter", "ModuleDict", "ModuleList", "state_dict", "load_state_dict",
                  "named_parameters", "set_requires_grad", "to_device", "inference_mode", "empty_init",
                  "fill_parameter")


def __getattr__(attr):
    if attr in _BACKEND_NAMES:
        return getattr(_backend.get().nn, attr)
    if attr in _LAYERS:
        from mmx.nn import layers
        return getattr(layers, attr)
    raise AttributeError(f"mmx.nn has no attribute {attr!r}")


_LAYERS = ("Linear", "Embedding", "RMSNorm", "LayerNorm", "PatchEmbed")
