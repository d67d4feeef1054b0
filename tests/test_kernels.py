"""Each fast path in keras_deit.kernels against its keras.ops reference, on this backend."""

import keras
import numpy as np
import pytest

from helpers import max_abs_diff
from keras_deit import kernels


@pytest.mark.parametrize("shape", [(5, 48), (2, 7, 48)])
@pytest.mark.parametrize("with_bias", [True, False])
def test_linear_equals_its_reference(shape, with_bias):
    rng = np.random.RandomState(0)
    x, kernel = rng.randn(*shape).astype("float32"), rng.randn(48, 80).astype("float32")
    bias = rng.randn(80).astype("float32") if with_bias else None
    as_tensor = keras.ops.convert_to_tensor
    fast = kernels.linear(as_tensor(x), as_tensor(kernel),
                          None if bias is None else as_tensor(bias))
    reference = kernels.linear_reference(as_tensor(x), as_tensor(kernel),
                                         None if bias is None else as_tensor(bias))
    assert tuple(fast.shape) == (*shape[:-1], 80)
    assert max_abs_diff(fast, reference) < 1e-5
    assert max_abs_diff(fast, x @ kernel + (0 if bias is None else bias)) < 1e-4


class Owner(keras.layers.Layer):
    """kernels.dense runs inside an owner's call, with the owner's scopes open."""

    def __init__(self, dense, **kwargs):
        super().__init__(**kwargs)
        self.dense = dense

    def call(self, x):
        return kernels.dense(self.dense, x)


@pytest.mark.parametrize("state", ["plain", "int8", "lora", "mixed_bfloat16"])
def test_dense_kernel_equals_the_keras_layer(state):
    dtype = "mixed_bfloat16" if state == "mixed_bfloat16" else None
    layer = keras.layers.Dense(24, kernel_initializer="glorot_uniform",
                               bias_initializer="glorot_uniform", dtype=dtype)
    layer.build((None, 7, 16))
    if state == "int8":
        layer.quantize("int8")
    if state == "lora":
        layer.enable_lora(2, b_initializer="ones")
    x = keras.ops.convert_to_tensor(np.random.RandomState(1).randn(3, 7, 16).astype("float32"))
    expected = layer(x)
    got = Owner(layer, dtype=dtype)(x)
    assert keras.backend.standardize_dtype(got.dtype) == layer.compute_dtype
    # bfloat16: one rounding (addmm) against two (matmul, then add): one ulp at |x| < 4.
    assert max_abs_diff(got, expected) <= (1.6e-2 if dtype else 1e-5)
