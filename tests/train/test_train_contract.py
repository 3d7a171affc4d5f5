"""backends/torch/train.py and backends/mindspore/train.py export the same public names, in the same order, with
the same signatures (the framework-free loop calls either one through mmx.backend.get().train)."""
import importlib
import inspect


def _public(module):
    names = [name for name, value in vars(module).items() if not name.startswith("_") and callable(value)
             and getattr(value, "__module__", None) == module.__name__]
    return {name: inspect.signature(getattr(module, name)) for name in names}


def test_backend_train_modules_mirror_each_other():
    torch_train = _public(importlib.import_module("mmx.backends.torch.train"))
    mindspore_train = _public(importlib.import_module("mmx.backends.mindspore.train"))
    assert list(torch_train) == list(mindspore_train)
    assert torch_train == mindspore_train
    assert list(torch_train)[:2] == ["AdamW", "trainable_parameters"]
    for method in ("step", "state_dict", "load_state_dict"):
        torch_method = getattr(importlib.import_module("mmx.backends.torch.train").AdamW, method)
        mindspore_method = getattr(importlib.import_module("mmx.backends.mindspore.train").AdamW, method)
        assert inspect.signature(torch_method) == inspect.signature(mindspore_method), method
