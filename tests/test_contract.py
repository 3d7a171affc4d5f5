"""Both backends implement exactly the contract: the same public functions, signatures and order (Keras 3's way).

The backend modules are imported directly (``mmx.backends.torch.ops``, ``mmx.backends.mindspore.ops``): importing a
module does not lock the process's backend, so this file checks both frameworks in either test run.
"""
import importlib
import inspect

import pytest

import mmx.nn
import mmx.ops

BACKENDS = ("torch", "mindspore")
DTYPES = ("float32", "float16", "bfloat16", "int32", "int64", "bool_")
# Submodules every backend has, with the same public functions in the same order ("" = the package itself).
# nn is checked by name against mmx.nn instead: torch aliases its containers (torch.nn.ModuleDict), MindSpore defines
# them as classes.
MIRRORED_MODULES = ("", "ops", "kernels", "autograd", "probe")


def _defined_functions(module):
    """Public functions and classes defined in ``module`` itself, in source order: [(name, object)]."""
    found = [(name, obj) for name, obj in vars(module).items()
             if not name.startswith("_") and (inspect.isfunction(obj) or inspect.isclass(obj))
             and obj.__module__ == module.__name__]
    return sorted(found, key=lambda item: inspect.getsourcelines(item[1])[1])


def _signature(obj):
    return str(inspect.signature(obj))


def _backend_module(backend_name, submodule):
    return importlib.import_module(f"mmx.backends.{backend_name}" + (f".{submodule}" if submodule else ""))


def _contract_functions():
    return [(name, fn) for name, fn in _defined_functions(mmx.ops) if inspect.isfunction(fn)]


@pytest.mark.parametrize("backend_name", BACKENDS)
def test_ops_match_the_contract(backend_name):
    ops = _backend_module(backend_name, "ops")
    contract = _contract_functions()
    implemented = [(name, fn) for name, fn in _defined_functions(ops) if inspect.isfunction(fn)]
    assert [name for name, _ in implemented] == [name for name, _ in contract], (
        f"mmx/backends/{backend_name}/ops.py must define exactly the functions of mmx/ops/__init__.py, in order")
    for (name, fn), (_, spec) in zip(implemented, contract):
        assert _signature(fn) == _signature(spec), f"{backend_name}.ops.{name}{_signature(fn)} != contract"
    for dtype in DTYPES:
        assert hasattr(ops, dtype), f"mmx/backends/{backend_name}/ops.py lacks the dtype attribute {dtype}"


@pytest.mark.parametrize("backend_name", BACKENDS)
def test_nn_names_match(backend_name):
    nn = _backend_module(backend_name, "nn")
    missing = [name for name in mmx.nn._BACKEND_NAMES if not hasattr(nn, name)]
    assert not missing, f"mmx/backends/{backend_name}/nn.py lacks {missing}"
    defined = [name for name, _ in _defined_functions(nn)]
    extra = [name for name in defined if name not in mmx.nn._BACKEND_NAMES]
    assert not extra, f"mmx/backends/{backend_name}/nn.py defines public names outside mmx.nn: {extra}"
    assert defined == [name for name in mmx.nn._BACKEND_NAMES if name in defined], "nn names out of order"


def test_nn_functions_have_the_same_signatures():
    torch_nn, mindspore_nn = (_backend_module(name, "nn") for name in BACKENDS)
    for name in mmx.nn._BACKEND_NAMES:
        torch_obj, mindspore_obj = getattr(torch_nn, name), getattr(mindspore_nn, name)
        if inspect.isfunction(torch_obj) or inspect.isfunction(mindspore_obj):
            assert _signature(torch_obj) == _signature(mindspore_obj), f"nn.{name} signatures differ"


@pytest.mark.parametrize("submodule", MIRRORED_MODULES)
def test_backends_mirror_each_other(submodule):
    torch_side, mindspore_side = (_backend_module(name, submodule) for name in BACKENDS)
    torch_defs, mindspore_defs = _defined_functions(torch_side), _defined_functions(mindspore_side)
    label = f"mmx.backends.<name>{'.' + submodule if submodule else ''}"
    assert [n for n, _ in torch_defs] == [n for n, _ in mindspore_defs], f"{label}: public names differ or order"
    for (name, torch_obj), (_, mindspore_obj) in zip(torch_defs, mindspore_defs):
        if inspect.isfunction(torch_obj) and inspect.isfunction(mindspore_obj):
            assert _signature(torch_obj) == _signature(mindspore_obj), f"{label}.{name} signatures differ"


def test_the_contract_is_documented():
    for name, fn in _contract_functions():
        assert fn.__doc__ and fn.__doc__.strip(), f"mmx.ops.{name} needs a docstring (it is the spec)"
