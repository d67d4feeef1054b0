"""Shared fixtures (a seeded random state, a tiny config, images); the helpers test modules
import live in tests/helpers.py."""

import importlib
import os
import sys

import keras
import numpy as np
import pytest

# `from helpers import ...` in the test modules: the folder is on the path whatever pytest's
# --import-mode (importlib mode does not add it).
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from helpers import tiny_config  # noqa: E402

if os.environ.get("CI"):
    # CI installs every optional library the tests use (the `test` extra): there a missing
    # one is an install bug, and `pytest.importorskip` fails the test instead of skipping it.
    def _import_or_fail(modname, minversion=None, reason=None, **kwargs):
        return importlib.import_module(modname)

    pytest.importorskip = _import_or_fail

@pytest.fixture(autouse=True)
def seeded():
    """Every test starts from the same random state, on every backend."""
    keras.utils.set_random_seed(0)


@pytest.fixture
def config():
    return tiny_config()


@pytest.fixture
def images():
    return np.random.RandomState(0).rand(2, 32, 32, 3).astype("float32")
