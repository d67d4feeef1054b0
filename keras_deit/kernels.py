"""Fast paths for the hot operations, each beside its `keras.ops` reference.

Layers call these functions and never branch on the backend themselves. Each fast path
computes the same function as its reference (tests/test_kernels.py checks both on every
backend) and steps aside whenever Keras itself has to run the layer: quantized or LoRA
projections go through Keras' own `Dense` code.
"""

import keras
from keras import ops


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
        return layer.call(inputs)
    # `.value` reads the (autocast) tensor directly, cheaper than converting the variable.
    bias = None if layer.bias is None else layer.bias.value
    return linear(inputs, layer.kernel.value, bias)


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
    import torch

    return torch.nn.functional.linear(inputs, kernel.T, bias)


_LINEAR = _torch_linear if keras.backend.backend() == "torch" else linear_reference


def linear(inputs, kernel, bias=None):
    """`inputs @ kernel + bias`, (..., in) x (in, out) + (out,) -> (..., out), in the fastest
    form on this backend: `linear_reference`, or the PyTorch `addmm` path."""
    return _LINEAR(inputs, kernel, bias)
