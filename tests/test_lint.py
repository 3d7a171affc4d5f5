"""Model code and the framework-free parts of mmx never touch a framework or branch on the backend (ARCHITECTURE
rule 2; STYLE: Keras 3's ``if backend() == "torch"`` creep is what this prevents).

AST-based, so imports inside functions and ``importlib.import_module("torch")`` are caught too. Flagged in any .py
under ``models/`` and ``mmx/`` (outside ``ALLOWED``):
- importing torch, torch_npu or mindspore (``import``, ``from ... import``, ``importlib.import_module``,
  ``__import__``), or a backend package directly (``mmx.backends.torch``: go through ``mmx.backend.get()``);
- asking for the backend's name: calling ``mmx.backend.name()`` (under any alias; only an f-string that prints it,
  e.g. "loading on {backend.name()}", is fine), reading ``MMX_BACKEND``;
- comparing anything with the strings ``"torch"`` / ``"mindspore"`` (``==``, ``!=``, ``in``, ``not in``).
"""
import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
SCANNED = ("models", "mmx")
FRAMEWORKS = ("torch", "torch_npu", "mindspore")
BACKEND_NAMES = ("torch", "mindspore")

# path → why it may name frameworks. Keep this short: everything else goes through mmx.ops / mmx.nn / a backend.
ALLOWED = {
    "mmx/backend.py": "selects and imports the backend by name: the one place that must",
    "mmx/reference.py": "runs the transformers (torch) model as the numerical reference for `mmx verify`",
}


def _dotted(node):
    """'a.b.c' for Name/Attribute chains, else None."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
        return ".".join(reversed(parts))
    return None


def _is_framework(module_name):
    if module_name is None:
        return False
    parts = module_name.split(".")
    return parts[0] in FRAMEWORKS or (parts[:2] == ["mmx", "backends"] and len(parts) > 2)


def violations(source, filename="<source>"):
    """[(line, message)] for every framework import or backend-name branch in ``source``."""
    tree = ast.parse(source, filename)
    found = []
    backend_modules = {"mmx.backend"}      # names bound to the mmx.backend module
    name_functions = set()                 # names bound to mmx.backend.name itself
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if _is_framework(alias.name):
                    found.append((node.lineno, f"imports {alias.name}"))
                if alias.name == "mmx.backend" and alias.asname:
                    backend_modules.add(alias.asname)
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0 and _is_framework(node.module):
                found.append((node.lineno, f"imports from {node.module}"))
            elif node.level == 0 and node.module == "mmx.backends":
                found.append((node.lineno, "imports a backend package from mmx.backends"))
            for alias in node.names:
                if node.module == "mmx" and alias.name == "backend":
                    backend_modules.add(alias.asname or "backend")
                if node.module == "mmx.backend" and alias.name == "name":
                    name_functions.add(alias.asname or "name")
    printed = {id(node.value) for node in ast.walk(tree) if isinstance(node, ast.FormattedValue)}
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            called = _dotted(node.func)
            first = node.args[0] if node.args else None
            if called in ("importlib.import_module", "import_module", "__import__") and isinstance(
                    first, ast.Constant) and isinstance(first.value, str) and _is_framework(first.value):
                found.append((node.lineno, f"imports {first.value} dynamically"))
            asks_name = called in name_functions or (called and called.endswith(".name")
                                                     and called[:-len(".name")] in backend_modules)
            if asks_name and id(node) not in printed:
                found.append((node.lineno, "asks for the backend name (mmx.backend.name())"))
        elif isinstance(node, ast.Constant) and node.value == "MMX_BACKEND":
            found.append((node.lineno, "reads MMX_BACKEND"))
        elif isinstance(node, ast.Compare):
            operands = [node.left] + node.comparators
            for operand in operands:
                values = operand.elts if isinstance(operand, (ast.Tuple, ast.List, ast.Set)) else [operand]
                if any(isinstance(v, ast.Constant) and v.value in BACKEND_NAMES for v in values):
                    found.append((node.lineno, "compares with a backend name string"))
                    break
    return sorted(found)


def _scanned_files():
    for folder in SCANNED:
        for path in sorted((ROOT / folder).rglob("*.py")):
            relative = path.relative_to(ROOT).as_posix()
            if relative not in ALLOWED:
                yield relative, path


def test_framework_free_code_stays_framework_free():
    problems = []
    for relative, path in _scanned_files():
        for line, message in violations(path.read_text(), relative):
            problems.append(f"{relative}:{line}: {message}")
    assert not problems, ("model / framework-free code must use mmx.ops and mmx.nn only (move framework code to "
                          "backends/<name>/ behind a function both backends define):\n" + "\n".join(problems))


def test_allowlist_entries_exist():
    # a stale entry would silently allow a future file of that name
    assert [path for path in ALLOWED if not (ROOT / path).exists()] == []


PLANTED = '''
import numpy as np
from mmx import backend as B, ops
import mmx.backend


def forward(x):
    import torch.nn.functional as F
    from mindspore import ops as ms_ops
    lib = __import__("torch_npu")
    if B.name() == "torch":
        return x
    if os.environ.get("MMX_BACKEND") in ("mindspore",):
        return x
    kind = mmx.backend.name()
    print(f"running on {B.name()}")
    return ops.silu(x)
'''


def test_linter_flags_planted_violations():
    lines = {}
    for line, message in violations(PLANTED):
        lines.setdefault(line, set()).add(message)
    assert lines[8] == {"imports torch.nn.functional"}
    assert lines[9] == {"imports from mindspore"}
    assert lines[10] == {"imports torch_npu dynamically"}
    assert lines[11] == {"asks for the backend name (mmx.backend.name())", "compares with a backend name string"}
    assert lines[13] == {"reads MMX_BACKEND", "compares with a backend name string"}
    assert lines[15] == {"asks for the backend name (mmx.backend.name())"}
    assert set(lines) == {8, 9, 10, 11, 13, 15}                  # line 16 only prints the name: not a branch
    clean = "from mmx import ops, nn\n\ndef f(x):\n    return ops.exp(x)  # torch-like docs mention 'torch'\n"
    assert violations(clean) == []


@pytest.mark.parametrize("snippet", ["import torch", "from torch import nn", "import mindspore.nn as msnn",
                                     "from mmx.backend import name\nif name(): pass",
                                     "if backend_name != 'mindspore': pass", "from mmx.backends import torch",
                                     "import mmx.backends.mindspore.ops as ms_ops",
                                     "from mmx.backends.torch.kernels import attention"])
def test_each_rule_alone(snippet):
    assert violations(snippet), snippet
