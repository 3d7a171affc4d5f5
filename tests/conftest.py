"""The suite runs once per backend (MMX_BACKEND=torch, then MMX_BACKEND=mindspore).

A test that only means something on one backend carries ``@pytest.mark.backend("mindspore")``; on the other run it
is deselected (not skipped: a backend that is *missing* must fail, never skip).
"""
import os

import pytest

BACKEND = os.environ.get("MMX_BACKEND", "torch")


def pytest_configure(config):
    config.addinivalue_line("markers", "backend(name): run this test only when MMX_BACKEND is name")


def pytest_collection_modifyitems(config, items):
    keep, drop = [], []
    for item in items:
        marker = item.get_closest_marker("backend")
        (drop if marker is not None and BACKEND not in marker.args else keep).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep
