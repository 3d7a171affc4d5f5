"""Tiny checkpoints shared by the model tests: built once per session, HF dir + mm dir (the convert helper's
hf_to_mm) + the mm tensors."""
import pytest

from model_helpers import Checkpoint


_cache = {}


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory):
    """checkpoint(family, tied) → Checkpoint, built on first use."""
    def get(family, tied):
        if (family, tied) not in _cache:
            _cache[family, tied] = Checkpoint(tmp_path_factory.mktemp(f"{family}_{tied}"), family, tied)
        return _cache[family, tied]
    return get
