"""PyTorch-exact bicubic resizing, used to interpolate position embeddings.

transformers resizes the position-embedding grid with
`torch.nn.functional.interpolate(mode="bicubic", align_corners=False)`: Keys' cubic kernel with
A = -0.75, source coordinate `(dst + 0.5) * in / out - 0.5`, edge taps clamped, no antialiasing.
`keras.ops.image.resize` uses other kernels on TensorFlow and JAX (A = -0.5, antialiasing) and is
up to 0.24 away on N(0, 1) data, so the weights are computed here with keras.ops, which also
works when the output size is only known at run time.
"""

from keras import ops

CUBIC_A = -0.75  # PyTorch's coefficient; TensorFlow and JAX use -0.5.


def cubic_near(x, a):
    """Keys' cubic convolution kernel at distances 0 <= `x` <= 1, for coefficient `a` (PyTorch:
    -0.75, PIL: -0.5). Arithmetic only: `x` may be a number or any backend's tensor."""
    return ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0


def cubic_far(x, a):
    """Keys' cubic convolution kernel at distances 1 < `x` < 2 (zero beyond); see `cubic_near`."""
    return ((a * x - 5.0 * a) * x + 8.0 * a) * x - 4.0 * a


def _cubic_weights(t):
    """Weights of the 4 taps at offsets -1, 0, 1, 2 for fractional positions `t` (shape (n,))."""
    a = CUBIC_A
    return ops.stack([cubic_far(t + 1.0, a), cubic_near(t, a), cubic_near(1.0 - t, a),
                      cubic_far(2.0 - t, a)], axis=-1)


def bicubic_resize_matrix(in_size, out_size, dtype="float32"):
    """The (out_size, in_size) matrix that resizes one axis as PyTorch's bicubic does.

    Args:
        in_size: Python int, the length of the source axis.
        out_size: int or scalar tensor, the length of the resized axis.
    """
    scale = float(in_size) / ops.cast(out_size, "float32")
    src = (ops.cast(ops.arange(out_size), "float32") + 0.5) * scale - 0.5
    base = ops.floor(src)
    weights = _cubic_weights(src - base)  # (out, 4)
    taps = ops.cast(base, "int32")[:, None] + ops.arange(-1, 3, dtype="int32")[None, :]
    taps = ops.clip(taps, 0, in_size - 1)  # PyTorch repeats the edge value.
    one_hot = ops.one_hot(taps, in_size, dtype="float32")  # (out, 4, in)
    matrix = ops.sum(one_hot * weights[:, :, None], axis=1)
    return ops.cast(matrix, dtype)


def bicubic_resize(images, size):
    """Resizes `images` (batch, height, width, channels) to `size` = (new_height, new_width).

    Matches `torch.nn.functional.interpolate(..., mode="bicubic", align_corners=False)` on every
    backend. `size` entries may be Python ints or scalar tensors.
    """
    in_h, in_w = images.shape[1], images.shape[2]
    rows = bicubic_resize_matrix(in_h, size[0], images.dtype)
    cols = bicubic_resize_matrix(in_w, size[1], images.dtype)
    images = ops.einsum("oh,bhwc->bowc", rows, images)
    return ops.einsum("pw,bowc->bopc", cols, images)
