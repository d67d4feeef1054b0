"""The row protocol both key maps (`keras_deit.conversion.hf`, `keras_deit.conversion.timm`) share: each row is
(our variable path, source name or names, transform), `{i}` standing for the block index; the
transforms between torch and Keras layouts; `expand`, which repeats the block rows."""

import numpy as np


def same(x):
    return x


def dense_kernel(w):
    """torch Linear (out, in) -> Keras (in, out)."""
    return w.T


def conv_kernel(w):
    """torch Conv2d (out, in, kh, kw) -> Keras (kh, kw, in, out)."""
    return w.transpose(2, 3, 1, 0)


def conv1x1_as_dense_kernel(w):
    """torch 1x1 Conv2d (out, in, 1, 1) -> a dense kernel (in, out)."""
    return w[:, :, 0, 0].T


def fused_qkv_kernel(q, k, v):
    """Three torch Linear weights (d, d) -> one (d, 3d) kernel with columns [q | k | v]."""
    return np.concatenate([q, k, v], axis=0).T


def fused_qkv_bias(q, k, v):
    return np.concatenate([q, k, v], axis=0)


def expand(table, num_layers):
    """Rows with `{i}` repeated for every block; sources always as tuples."""
    rows = []
    for path, sources, transform in table:
        sources = sources if isinstance(sources, tuple) else (sources,)
        indices = range(num_layers) if "{i}" in path else [None]
        for i in indices:
            rows.append((
                path.format(i=i),
                tuple(s.format(i=i) for s in sources),
                transform,
            ))
    return rows
