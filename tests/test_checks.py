"""keras_deit.checks: bad input gets a clear error that names it and the fix (images, options)."""

import numpy as np
import pytest

import keras_deit as kd
from helpers import tiny_config


@pytest.fixture(scope="module")
def model():
    return kd.DeiTForImageClassificationWithTeacher(tiny_config())


@pytest.mark.parametrize("shape, message", [
    ((32, 32, 3), "Add a batch axis"),
    ((2, 32, 32, 4), "Convert grayscale or RGBA"),
    ((2, 32, 32, 1), "Received: shape=\\(2, 32, 32, 1\\)"),
    ((2, 3, 32, 32), "data_format='channels_first'"),
    ((2, 36, 32, 3), "not divisible by the patch size 8"),
    ((2, 48, 40, 3), "interpolate_pos_encoding=True"),
])
def test_bad_image_batches(model, shape, message):
    with pytest.raises(ValueError, match=message):
        model(np.zeros(shape, "float32"))
    with pytest.raises(ValueError, match=message):
        model.predict(np.zeros(shape, "float32"), verbose=0)


def test_channels_first_model_names_the_other_layout():
    model = kd.DeiTModel(tiny_config(), data_format="channels_first")
    with pytest.raises(ValueError, match="data_format='channels_last'"):
        model(np.zeros((1, 32, 32, 3), "float32"))


def test_interpolating_model_still_needs_divisible_sizes():
    model = kd.DeiTModel(tiny_config(), interpolate_pos_encoding=True)
    with pytest.raises(ValueError, match="not divisible by the patch size"):
        model(np.zeros((1, 33, 32, 3), "float32"))


def test_bad_model_options():
    with pytest.raises(ValueError, match="data_format"):
        kd.DeiTModel(tiny_config(), data_format="NHWC")
    with pytest.raises(ValueError, match="head_mask"):
        kd.DeiTModel(tiny_config(), head_mask=[1, 0])
    with pytest.raises(ValueError, match="needs a distillation token"):
        kd.DeiTForImageClassificationWithTeacher(tiny_config(use_distillation_token=False))
    with pytest.raises(ValueError, match="encoder_stride"):
        kd.DeiTForMaskedImageModeling(tiny_config(encoder_stride=16))
    with pytest.raises(ValueError, match="DeiTConfig"):
        kd.DeiTModel("deit_tiny")


def test_empty_batches_and_python_lists_are_named(model):
    with pytest.raises(ValueError, match="got an empty batch"):
        model(np.zeros((0, 32, 32, 3), "float32"))
    with pytest.raises(ValueError, match="got an empty batch"):
        model.predict(np.zeros((0, 32, 32, 3), "float32"), verbose=0)
    nested = np.zeros((2, 32, 32, 3)).tolist()
    with pytest.raises(ValueError, match=r"got a Python list of 2 items. Pass np.stack\(images\)"):
        model(nested)
    with pytest.raises(ValueError, match="Python list of 2 items"):
        model.predict(nested, verbose=0)
