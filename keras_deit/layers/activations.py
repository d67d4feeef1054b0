"""The activations a config may name, as keras.ops functions."""

from keras import ops

from keras_deit import kernels
from keras_deit.config import ACTIVATIONS

_FUNCTIONS = {
    # DeiT's "gelu" is the exact erf form (keras.ops.gelu defaults to the tanh one).
    "gelu_exact": kernels.gelu,
    "gelu_tanh": lambda x: ops.gelu(x, approximate=True),
    "relu": ops.relu,
    "silu": ops.silu,
    "tanh": ops.tanh,
    "sigmoid": ops.sigmoid,
    "linear": lambda x: x,
}


def get_activation(name):
    """The function for an HF activation name ("gelu", "gelu_new", "tanh", ...)."""
    if name not in ACTIVATIONS:
        raise ValueError(f"Unknown activation {name!r}. Use one of {sorted(ACTIVATIONS)}.")
    return _FUNCTIONS[ACTIVATIONS[name]]
