"""Multi-head self-attention with fused q/k/v."""

import keras
import numpy as np
from keras import ops

from keras_deit import kernels
from keras_deit.layers import projection

ATTN_IMPLEMENTATIONS = ("sdpa", "eager")


def default_attn_implementation():
    """The attention kernel that is fastest here: "sdpa" or "eager".

    "sdpa" (`keras.ops.dot_product_attention`) reaches fused kernels on PyTorch (its CPU
    flash-attention kernel) and on GPUs and TPUs. On TensorFlow and JAX on CPU that op is two
    einsums in (batch, len, heads, dim) layout. There "eager" (one transpose to (batch, heads,
    len, dim), then plain batched matmuls) trained deit-tiny 7-10% faster on TensorFlow and
    was level, within run-to-run noise, everywhere else. See benchmarks/RESULTS.md.
    """
    if keras.backend.backend() == "torch":
        return "sdpa"
    accelerators = [d for d in keras.distribution.list_devices() if not d.lower().startswith("cpu")]
    return "sdpa" if accelerators else "eager"


@keras.saving.register_keras_serializable(package="keras_deit")
class DeiTAttention(keras.layers.Layer):
    """Multi-head self-attention: fused q/k/v projection, attention, output projection.

    The projections are `keras.layers.Dense` sublayers: `qkv` (hidden -> 3 * hidden, the
    fused query, key and value) and `proj` (the output), so quantization, LoRA and dtype
    policies reach them.

    Two kernels compute the same function (as transformers' `attn_implementation`):
    - "sdpa": `keras.ops.dot_product_attention` (PyTorch SDPA, cuDNN / XLA fused attention);
    - "eager": softmax((q * scale) k^T) v with batched matmuls in (batch, heads, len, dim)
      layout and the softmax in float32. It keeps the probabilities, so it also runs whenever
      they are needed: attention scores requested, a head mask set, attention dropout active,
      or float16 compute.

    Args:
        hidden_size: int, model width; divisible by `num_heads`.
        num_heads: int.
        qkv_bias: bool, whether q, k and v have biases (the output projection always has one).
        attention_dropout: float, dropout on the attention probabilities (training only).
        dropout: float, dropout on the output (training only).
        head_mask: optional list of `num_heads` floats (1 keeps a head, 0 silences it),
            multiplied into the attention probabilities as in transformers.
        initializer_range: float, stddev of the truncated-normal kernel initializer.
        attn_implementation: "sdpa", "eager", or None for `default_attn_implementation()`
            (resolved when the layer is created, so a saved model takes the best kernel of the
            backend it is loaded on).

    Call arguments:
        hidden_states: (batch, seq_len, hidden_size).
        return_attention_scores: bool; if True also returns the probabilities.

    Returns:
        (batch, seq_len, hidden_size), and (batch, num_heads, seq_len, seq_len) probabilities if
        `return_attention_scores`.
    """

    def __init__(
        self,
        hidden_size,
        num_heads,
        qkv_bias=True,
        attention_dropout=0.0,
        dropout=0.0,
        head_mask=None,
        initializer_range=0.02,
        attn_implementation=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if attn_implementation not in (None, *ATTN_IMPLEMENTATIONS):
            raise ValueError(
                f"`attn_implementation` must be one of {ATTN_IMPLEMENTATIONS} or None. "
                f"Received: attn_implementation={attn_implementation!r}"
            )
        if hidden_size % num_heads:
            raise ValueError(
                "`hidden_size` must be divisible by `num_heads`. "
                f"Received: hidden_size={hidden_size}, num_heads={num_heads}"
            )
        head_mask = head_mask_values(head_mask, num_heads)
        self.hidden_size = hidden_size
        self.num_heads = num_heads
        self.qkv_bias = qkv_bias
        self.attention_dropout = attention_dropout
        self.dropout = dropout
        self.head_mask = head_mask
        self.initializer_range = initializer_range
        self.attn_implementation = attn_implementation
        self._fused = (attn_implementation or default_attn_implementation()) == "sdpa"
        self.head_dim = hidden_size // num_heads
        self.scale = self.head_dim**-0.5
        self.attention_dropout_layer = (
            keras.layers.Dropout(attention_dropout) if attention_dropout else None
        )
        self.dropout_layer = (
            keras.layers.Dropout(dropout, dtype=self.dtype_policy) if dropout else None
        )
        # One fused projection: kernel columns [0:d] are the query, [d:2d] the key, [2d:3d]
        # the value.
        self.qkv = projection.projection(
            3 * hidden_size, initializer_range, self.dtype_policy, "qkv", use_bias=qkv_bias
        )
        self.proj = projection.projection(
            hidden_size, initializer_range, self.dtype_policy, "proj"
        )

    def build(self, input_shape):
        self.qkv.build(input_shape)
        self.proj.build(input_shape)

    def load_own_variables(self, store):
        # keras-deit 0.1.0 kept the four projection variables on this layer.
        projection.load_legacy_variables(store, [self.qkv, self.proj], self)

    def call(self, hidden_states, return_attention_scores=False, training=None):
        qkv = kernels.dense(self.qkv, hidden_states)
        batch, length = ops.shape(hidden_states)[:2]

        needs_probs = (
            return_attention_scores
            or self.head_mask is not None
            or (training and self.attention_dropout_layer is not None)
            # float16 (mixed_float16): XLA:CPU has no F16_F16_F32 dot for the fused kernel
            # under jit, and the eager kernel keeps the softmax in float32 everywhere.
            or keras.backend.standardize_dtype(qkv.dtype) == "float16"
        )
        probs = None
        if self._fused and not needs_probs:
            context = kernels.attention(qkv, self.num_heads, self.scale)
        else:
            qkv = ops.reshape(qkv, (batch, length, 3, self.num_heads, self.head_dim))
            context, probs = self._eager_attention(qkv, training)
            context = ops.reshape(context, (batch, length, self.hidden_size))
        # Freed before the output projection, as the context is (a smaller peak: see
        # DeiTEncoder.call on what a larger one costs on PyTorch).
        del qkv
        output = kernels.dense(self.proj, context)
        if self.dropout_layer is not None:
            output = self.dropout_layer(output, training=training)
        if return_attention_scores:
            return output, probs
        return output

    def _eager_attention(self, qkv, training):
        """Attention with the probabilities kept.

        Args:
            qkv: (batch, len, 3, heads, dim), the fused projections.

        Returns:
            The context (batch, len, heads, dim) and the probabilities (batch, heads, len, len).
        """
        # One transpose of the fused tensor puts the heads next to the batch, so both products
        # are plain batched matmuls.
        query, key, value = ops.unstack(ops.transpose(qkv, (2, 0, 3, 1, 4)), 3, axis=0)
        # Scaling q (len x dim) is cheaper than scaling the scores (len x len).
        scores = ops.matmul(query * self.scale, ops.swapaxes(key, -1, -2))
        # Softmax in float32 for stability under mixed precision, as transformers does.
        probs = ops.cast(ops.softmax(ops.cast(scores, "float32"), axis=-1), qkv.dtype)
        if self.attention_dropout_layer is not None:
            probs = self.attention_dropout_layer(probs, training=training)
        if self.head_mask is not None:
            probs = probs * ops.cast(ops.reshape(self.head_mask, (1, -1, 1, 1)), probs.dtype)
        context = ops.transpose(ops.matmul(probs, value), (0, 2, 1, 3))
        return context, probs

    def compute_output_shape(self, input_shape, return_attention_scores=False):
        if return_attention_scores:
            b, t = input_shape[0], input_shape[1]
            return input_shape, (b, self.num_heads, t, t)
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(
            hidden_size=self.hidden_size,
            num_heads=self.num_heads,
            qkv_bias=self.qkv_bias,
            attention_dropout=self.attention_dropout,
            dropout=self.dropout,
            head_mask=self.head_mask,
            initializer_range=self.initializer_range,
            attn_implementation=self.attn_implementation,
        )
        return config


def head_mask_values(head_mask, num_heads, num_layers=None):
    """A head mask as plain floats (1 keeps a head, 0 silences it), checked; None stays None.

    One layer (`num_layers=None`): `num_heads` values -> a list of `num_heads` floats. An
    encoder of `num_layers` blocks: (num_heads,) values, shared by every block, or
    (num_layers, num_heads) -> a (num_layers, num_heads) list of lists.
    """
    if head_mask is None:
        return None
    mask = np.asarray(head_mask, dtype="float64")
    shapes = [(num_heads,)] if num_layers is None else [(num_heads,), (num_layers, num_heads)]
    if mask.shape not in shapes:
        raise ValueError(
            f"`head_mask` must have shape {' or '.join(map(str, shapes))}: one value per head. "
            f"Received: head_mask of shape {mask.shape}"
        )
    if num_layers is not None:
        mask = np.broadcast_to(mask, (num_layers, num_heads))
    return mask.tolist()
