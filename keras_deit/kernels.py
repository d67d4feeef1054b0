"""Fast paths for the hot operations, each beside its `keras.ops` reference.

Layers call these functions and never branch on the backend themselves. Each fast path
computes the same function as its reference (tests/test_kernels.py checks both on every
backend) and steps aside whenever Keras itself has to run the layer: quantized or LoRA
projections go through Keras' own `Dense` code.
"""

import contextlib

import keras
from keras import ops

from keras_deit.keras_internals import (
    call_built, dense_kernel, scope_may_change_values, stored_value,
)

_TORCH = keras.backend.backend() == "torch"
if _TORCH:
    # Imported once here, not in each fast path: an import statement costs ~0.5 us per call.
    import torch


def dense(layer, inputs):
    """Applies a built `keras.layers.Dense` projection `layer`: (..., in) -> (..., units).

    Called from inside an owner layer's `call`, so the name and autocast scopes are already
    open. A plain layer (no quantization, no LoRA) runs `linear` on its variables' values,
    skipping the ~45 us of `Layer.__call__` bookkeeping that the PyTorch backend pays per
    layer. A quantized layer goes through `__call__` (where Keras dispatches to its quantized
    kernels), and a LoRA layer through `Dense.call` (whose `kernel` adds the adapters).
    """
    if layer.quantization_mode is not None:
        return layer(inputs)
    if layer.lora_enabled or layer.activation not in (None, keras.activations.linear):
        return call_built(layer, inputs)
    # The stored kernel: what Dense's `kernel` property returns without LoRA and quantization,
    # read without the property's ~4 us of quantization-mode checks.
    bias = None if layer.bias is None else read(layer.bias, inputs)
    return linear(inputs, read(dense_kernel(layer), inputs), bias)


def read_reference(variable, like):
    """`variable.value`: the tensor a layer's call sees (cast under an autocast scope,
    replaced under a stateless scope); `like` is unused."""
    return variable.value


def _torch_read(variable, like):
    """PyTorch: the variable's stored tensor when no scope would change it. `Variable.value`
    checks the stateless scope, the autocast scope and the meta device on every read, ~2 us;
    a block reads 12 variables. `like`, the tensor the value is combined with, is on the meta
    device while Keras traces shapes, when `.value` returns a meta stand-in."""
    value = stored_value(variable)
    if value is None or like.device.type == "meta" or scope_may_change_values():
        return variable.value
    return value


_READ = _torch_read if _TORCH else read_reference


def read(variable, like):
    """The value of Keras `variable` as a layer's call reads it (`read_reference`), for use
    with the backend tensor `like`; on PyTorch without the per-read scope checks when no
    scope is open."""
    return _READ(variable, like)


def inference_scope():
    """A context for forward passes whose outputs never take a gradient (`predict`).

    PyTorch: `torch.inference_mode()`, which also skips the version counters and view
    tracking that `torch.no_grad()` (Keras' predict) keeps, ~0.6 ms of deit-tiny's batch-1
    forward pass; not under `torch.compile` (`jit_compile=True`), which cannot trace it. Elsewhere
    a no-op: JAX and TensorFlow trace `predict_step` once.
    """
    if _TORCH:
        if not torch.compiler.is_compiling():
            return torch.inference_mode()
    return contextlib.nullcontext()


def patch_embedding_reference(images, kernel, bias, patch_size):
    """Non-overlapping patch projection in `keras.ops`: (batch, h, w, channels) images,
    (ph, pw, channels, hidden) kernel, (hidden,) bias -> (batch, h // ph, w // pw, hidden);
    `patch_size` = (ph, pw) is also the stride."""
    return ops.conv(images, kernel, strides=patch_size, padding="valid") + bias


def _torch_patch_embedding(images, kernel, bias, patch_size):
    """PyTorch: `conv2d` on a channels-first view of the images. The view is channels-last
    memory, which oneDNN convolves as it is, and its output viewed back as (batch, h, w,
    hidden) is contiguous; `keras.ops.conv` copies the images, the kernel and the output
    instead (half the patch embedding's time at batch 8), then adds the bias separately."""
    grid = torch.nn.functional.conv2d(
        images.permute(0, 3, 1, 2), kernel.permute(3, 2, 0, 1), bias, stride=tuple(patch_size)
    )
    return grid.permute(0, 2, 3, 1)


_PATCH_EMBEDDING = _torch_patch_embedding if _TORCH else patch_embedding_reference


def patch_embedding(images, kernel, bias, patch_size):
    """Non-overlapping patch projection, (batch, h, w, channels) -> (batch, h // ph,
    w // pw, hidden), in the fastest form on this backend: `patch_embedding_reference` or
    the PyTorch `conv2d` on a channels-first view. See the reference for the shapes."""
    return _PATCH_EMBEDDING(images, kernel, bias, patch_size)


def linear_reference(inputs, kernel, bias=None):
    """`inputs @ kernel + bias` in `keras.ops`: (..., in) x (in, out) + (out,) -> (..., out).

    `ops.matmul`, not `@`: on TensorFlow it contracts (batch, len, in) x (in, out) as one 2-D
    GEMM, where `@` becomes a broadcasting batch matmul, ~25% slower on deit-base.
    """
    outputs = ops.matmul(inputs, kernel)
    return outputs if bias is None else outputs + bias


def _torch_linear(inputs, kernel, bias=None):
    """PyTorch: one `addmm` (`nn.functional.linear`) instead of a matmul and a separate bias
    add, as transformers' `nn.Linear` runs; `kernel.T` is a view, not a copy."""
    return torch.nn.functional.linear(inputs, kernel.T, bias)


_LINEAR = _torch_linear if _TORCH else linear_reference


def linear(inputs, kernel, bias=None):
    """`inputs @ kernel + bias`, (..., in) x (in, out) + (out,) -> (..., out), in the fastest
    form on this backend: `linear_reference`, or the PyTorch `addmm` path."""
    return _LINEAR(inputs, kernel, bias)


def attention_reference(qkv, num_heads, scale):
    """Softmax attention from fused projections in `keras.ops`:
    (batch, len, 3 * hidden) -> (batch, len, hidden).

    Columns [0:hidden] of `qkv` are the query, [hidden:2 hidden] the key, the rest the value,
    each split into `num_heads` heads; `scale` multiplies the query-key products.
    `ops.unstack`, not slicing: on TensorFlow the gradient of three strided slices costs more
    than the attention itself.
    """
    batch, length, width = ops.shape(qkv)
    head_dim = width // (3 * num_heads)
    qkv = ops.reshape(qkv, (batch, length, 3, num_heads, head_dim))
    query, key, value = ops.unstack(qkv, 3, axis=2)  # (batch, len, heads, dim)
    context = ops.dot_product_attention(query, key, value, scale=scale)
    return ops.reshape(context, (batch, length, num_heads * head_dim))


def _torch_attention(qkv, num_heads, scale):
    """PyTorch: SDPA on strided views of the fused tensor. `keras.ops.dot_product_attention`
    makes q, k and v contiguous first (three copies per layer, a tenth of deit-tiny's batch-1
    forward pass); the CPU flash kernel reads the views as they are."""
    batch, length, width = qkv.shape
    head_dim = width // (3 * num_heads)
    # (batch, len, 3, heads, dim) -> three (batch, heads, len, dim) views, no copy.
    query, key, value = qkv.view(batch, length, 3, num_heads, head_dim).permute(2, 0, 3, 1, 4)
    context = torch.nn.functional.scaled_dot_product_attention(query, key, value, scale=scale)
    return context.transpose(1, 2).reshape(batch, length, width // 3)


_ATTENTION = _torch_attention if _TORCH else attention_reference


def attention(qkv, num_heads, scale):
    """Softmax attention from fused q/k/v projections, (batch, len, 3 * hidden) ->
    (batch, len, hidden), in the fastest form on this backend: `attention_reference` or the
    PyTorch SDPA-on-views path. See `attention_reference` for the layout."""
    return _ATTENTION(qkv, num_heads, scale)


def layer_norm(layer, inputs):
    """Applies a built `keras.layers.LayerNormalization` `layer` over the last axis:
    (..., width) -> (..., width), in the layer's compute dtype.

    Called from inside an owner layer's `call`. A layer normalizing the last axis with both
    `gamma` and `beta` runs `layer_norm_function` on its variables; any other layer
    (RMS scaling, no centre or scale, other axes) runs its own `call`.
    """
    if layer.rms_scaling or not (layer.center and layer.scale) or list(layer.axis) != [-1]:
        return call_built(layer, inputs)
    outputs = layer_norm_function(
        inputs, read(layer.gamma, inputs), read(layer.beta, inputs), layer.epsilon
    )
    return ops.cast(outputs, layer.compute_dtype)


def layer_norm_reference(inputs, gamma, beta, epsilon):
    """LayerNorm over the last axis in `keras.ops`: (..., width), (width,), (width,) ->
    (..., width) in the input's dtype, computed in float32 or wider (as Keras does)."""
    return ops.layer_normalization(inputs, gamma, beta, axis=-1, epsilon=epsilon)


def _torch_layer_norm(inputs, gamma, beta, epsilon):
    """PyTorch: `nn.functional.layer_norm` directly, the kernel `keras.ops` reaches too, minus
    its Python dispatch (a fifth of the time of the small LayerNorms of deit-tiny at batch 1)."""
    x = inputs if inputs.dtype in (torch.float32, torch.float64) else inputs.float()
    outputs = torch.nn.functional.layer_norm(
        x, x.shape[-1:], gamma.to(x.dtype), beta.to(x.dtype), epsilon
    )
    return outputs.to(inputs.dtype)


_LAYER_NORM = _torch_layer_norm if _TORCH else layer_norm_reference


def layer_norm_function(inputs, gamma, beta, epsilon):
    """LayerNorm over the last axis, (..., width) -> (..., width) in the input's dtype, in the
    fastest form on this backend: `layer_norm_reference` or the direct PyTorch call."""
    return _LAYER_NORM(inputs, gamma, beta, epsilon)


def gelu_reference(x):
    """The exact (erf) GELU in `keras.ops`, any shape; `keras.ops.gelu` defaults to the tanh
    approximation, hence `approximate=False`."""
    return ops.gelu(x, approximate=False)


def _torch_gelu(x):
    """PyTorch: `nn.functional.gelu` (exact erf form, its default) without Keras' dispatch."""
    if not isinstance(x, torch.Tensor):  # numpy input, as `keras.ops.gelu` accepts
        x = ops.convert_to_tensor(x)
    return torch.nn.functional.gelu(x)


_GELU = _torch_gelu if _TORCH else gelu_reference


def gelu(x):
    """The exact (erf) GELU, any shape, in the fastest form on this backend."""
    return _GELU(x)
