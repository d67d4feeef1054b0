"""Shared fixtures: the checkpoint folders, a tiny config, and array helpers."""

import importlib
import os

import keras
import numpy as np
import pytest

import keras_deit as kd

if os.environ.get("CI"):
    # CI installs every optional library the tests use (the `test` extra): there a missing
    # one is an install bug, and `pytest.importorskip` fails the test instead of skipping it.
    def _import_or_fail(modname, minversion=None, reason=None, **kwargs):
        return importlib.import_module(modname)

    pytest.importorskip = _import_or_fail

DATA = os.path.join(os.path.dirname(__file__), "data")
HF = os.path.join(DATA, "hf")
TIMM = os.path.join(DATA, "timm")


def to_numpy(x):
    return np.asarray(keras.ops.convert_to_numpy(x))


def max_abs_diff(a, b):
    return float(np.max(np.abs(to_numpy(a).astype("float64") - to_numpy(b).astype("float64"))))


def tiny_config(**changes):
    """The architecture of the shared/fixtures HF checkpoints (hidden 48, 2 layers, 32px)."""
    fields = dict(
        hidden_size=48, num_hidden_layers=2, num_attention_heads=3, intermediate_size=96,
        image_size=32, patch_size=8, encoder_stride=8, num_labels=5,
    )
    fields.update(changes)
    return kd.DeiTConfig(**fields)


def small_config(**changes):
    """An even smaller architecture for training tests (hidden 32, one layer, 2 heads)."""
    fields = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)
    fields.update(changes)
    return tiny_config(**fields)


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
