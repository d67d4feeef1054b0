"""Each fast path in keras_deit.kernels against its keras.ops reference, on this backend."""

import keras
import numpy as np
import pytest

import keras_deit as kd
from helpers import max_abs_diff, tiny_config
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


def _numpy(x):
    return np.asarray(keras.ops.convert_to_numpy(keras.ops.cast(x, "float32")))


def _attention_numpy(qkv, num_heads, scale):
    """softmax(q k^T * scale) v per head, in float64: (batch, len, 3 * hidden) -> (batch, len,
    hidden)."""
    batch, length, width = qkv.shape
    heads = qkv.astype("float64").reshape(batch, length, 3, num_heads, -1)
    q, k, v = heads.transpose(2, 0, 3, 1, 4)
    scores = q @ k.transpose(0, 1, 3, 2) * scale
    probs = np.exp(scores - scores.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    return (probs @ v).transpose(0, 2, 1, 3).reshape(batch, length, width // 3)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_attention_equals_its_reference(dtype):
    qkv = np.random.RandomState(2).randn(2, 9, 3 * 16).astype("float32")
    tensor = keras.ops.cast(keras.ops.convert_to_tensor(qkv), dtype)
    fast = kernels.attention(tensor, 2, 8**-0.5)
    reference = kernels.attention_reference(tensor, 2, 8**-0.5)
    assert tuple(fast.shape) == (2, 9, 16)
    assert keras.backend.standardize_dtype(fast.dtype) == dtype
    tolerance = 2e-2 if dtype == "bfloat16" else 1e-5
    assert np.abs(_numpy(fast) - _numpy(reference)).max() <= tolerance
    expected = _attention_numpy(_numpy(tensor), 2, 8**-0.5)
    assert np.abs(_numpy(fast) - expected).max() <= (5e-2 if dtype == "bfloat16" else 1e-5)


@pytest.mark.parametrize("dtype", [None, "mixed_bfloat16"])
def test_layer_norm_kernel_equals_the_keras_layer(dtype):
    layer = keras.layers.LayerNormalization(epsilon=1e-6, gamma_initializer="glorot_uniform",
                                            beta_initializer="glorot_uniform", dtype=dtype)
    layer.build((None, 5, 12))
    x = np.random.RandomState(3).randn(2, 5, 12).astype("float32") * 3 + 1
    tensor = keras.ops.convert_to_tensor(x)
    expected = layer(tensor)
    got = kernels.layer_norm(layer, keras.ops.cast(tensor, layer.compute_dtype))
    assert keras.backend.standardize_dtype(got.dtype) == layer.compute_dtype
    assert np.abs(_numpy(got) - _numpy(expected)).max() <= (3e-2 if dtype else 1e-5)
    gamma, beta = (keras.ops.convert_to_tensor(v) for v in (layer.gamma, layer.beta))
    reference = kernels.layer_norm_reference(tensor, gamma, beta, 1e-6)
    fast = kernels.layer_norm_function(tensor, gamma, beta, 1e-6)
    assert np.abs(_numpy(fast) - _numpy(reference)).max() <= 1e-5
    # The epsilon is the layer's (1e-6), not Keras' default 1e-3: rows of variance ~1e-6
    # normalize to ~1/sqrt(2) with it, to ~0.03 with 1e-3.
    small = np.random.RandomState(5).randn(1, 3, 12) * 1e-3
    centred = small - small.mean(-1, keepdims=True)
    normalized = centred / np.sqrt(small.var(-1, keepdims=True) + 1e-6)
    expected = normalized * _numpy(layer.gamma) + _numpy(layer.beta)
    got = kernels.layer_norm(layer, keras.ops.cast(small.astype("float32"), layer.compute_dtype))
    assert np.abs(_numpy(got) - expected).max() <= (5e-2 if dtype else 1e-4)


def test_layer_norm_kernel_steps_aside_without_a_centre():
    layer = keras.layers.LayerNormalization(epsilon=1e-6, center=False)
    layer.build((None, 12))
    x = keras.ops.convert_to_tensor(np.random.RandomState(4).randn(3, 12).astype("float32"))
    assert np.abs(_numpy(kernels.layer_norm(layer, x)) - _numpy(layer(x))).max() <= 1e-6


def test_gelu_is_the_exact_erf_form():
    x = np.linspace(-5, 5, 101).astype("float32")
    fast = _numpy(kernels.gelu(keras.ops.convert_to_tensor(x)))
    reference = _numpy(kernels.gelu_reference(keras.ops.convert_to_tensor(x)))
    from math import erf, sqrt

    exact = np.array([v * 0.5 * (1 + erf(v / sqrt(2))) for v in x.astype("float64")])
    assert np.abs(fast - reference).max() <= 1e-6
    assert np.abs(fast - exact).max() <= 3e-5  # float32 erf: a few ulp at |x| ~ 5
    # The tanh approximation differs by up to ~5e-4 here: the test tells them apart.
    tanh = _numpy(keras.ops.gelu(keras.ops.convert_to_tensor(x), approximate=True))
    assert np.abs(tanh - exact).max() > 1e-4


class Reader(keras.layers.Layer):
    """Reads `variable` through kernels.read inside its call, as the layers do."""

    def __init__(self, variable, **kwargs):
        super().__init__(**kwargs)
        self.variable = variable

    def call(self, x):
        return x + kernels.read(self.variable, x)


def test_read_is_the_value_a_layer_call_sees():
    values = np.random.RandomState(6).randn(4).astype("float32")
    variable = keras.Variable(values)
    x = keras.ops.zeros((2, 4))
    assert max_abs_diff(kernels.read(variable, x), values) == 0
    # Under an autocast scope (a mixed policy's call), the compute dtype.
    mixed = Reader(variable, dtype="mixed_bfloat16")(keras.ops.cast(x, "bfloat16"))
    assert keras.backend.standardize_dtype(mixed.dtype) == "bfloat16"
    assert max_abs_diff(mixed, keras.ops.cast(values, "bfloat16")) == 0
    # Under a stateless scope (JAX's trainer, `stateless_call`), the scope's value.
    replaced = values + 1
    with keras.StatelessScope(state_mapping=[(variable, replaced)]):
        assert max_abs_diff(kernels.read(variable, x), replaced) == 0
        assert max_abs_diff(kernels.read_reference(variable, x), replaced) == 0


@pytest.mark.parametrize("patch", [(4, 4), (4, 2)])
def test_patch_embedding_equals_its_reference(patch):
    rng = np.random.RandomState(7)
    images = rng.randn(2, 8, 12, 3).astype("float32")
    kernel = rng.randn(*patch, 3, 5).astype("float32")
    bias = rng.randn(5).astype("float32")
    args = [keras.ops.convert_to_tensor(a) for a in (images, kernel, bias)]
    fast = kernels.patch_embedding(*args, patch)
    reference = kernels.patch_embedding_reference(*args, patch)
    ph, pw = patch
    grid = (8 // ph, 12 // pw)
    assert tuple(fast.shape) == (2, *grid, 5)
    assert max_abs_diff(fast, reference) < 1e-5
    # Row-major patches, each a dot product with the kernel, in float64.
    cut = images.astype("float64").reshape(2, grid[0], ph, grid[1], pw, 3)
    expected = np.einsum("bhiwjc,ijco->bhwo", cut, kernel.astype("float64")) + bias
    assert max_abs_diff(fast, expected) < 1e-4


def test_predict_runs_in_the_inference_scope_and_training_still_works():
    with kernels.inference_scope():
        if keras.backend.backend() == "torch":
            import torch

            assert torch.is_inference_mode_enabled()
    model = kd.DeiTForImageClassification(tiny_config())
    model.compile(optimizer="sgd", loss={
        "logits": keras.losses.SparseCategoricalCrossentropy(from_logits=True)})
    x = np.random.RandomState(8).rand(2, 32, 32, 3).astype("float32")
    y = {"logits": np.array([0, 3])}
    model.train_on_batch(x, y)
    predicted = model.predict_on_batch(x)["logits"]
    assert max_abs_diff(predicted, model(x, training=False)["logits"]) < 1e-6
    # Training after predict: no inference-mode tensor reached autograd.
    before = model.get_layer("classifier").kernel.numpy().copy()
    model.train_on_batch(x, y)
    assert np.abs(model.get_layer("classifier").kernel.numpy() - before).max() > 0
