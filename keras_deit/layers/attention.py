"""Multi-head self-attention with fused q/k/v."""

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="keras_deit")
class DeiTAttention(keras.layers.Layer):
    """Multi-head self-attention: fused q/k/v projection, attention, output projection.

    Two paths compute the same function:
    - fast: `keras.ops.dot_product_attention` (PyTorch SDPA, XLA's fused attention, ...), used
      when nothing but the output is needed;
    - explicit: softmax(q k^T * scale) in float32, then attention dropout and the head mask,
      used when the attention probabilities are requested, a head mask is set, or attention
      dropout is active.

    Args:
        hidden_size: int, model width; divisible by `num_heads`.
        num_heads: int.
        qkv_bias: bool, whether q, k and v have biases (the output projection always has one).
        attention_dropout: float, dropout on the attention probabilities (training only).
        dropout: float, dropout on the output (training only).
        head_mask: optional list of `num_heads` floats (1 keeps a head, 0 silences it),
            multiplied into the attention probabilities as in transformers.
        initializer_range: float, stddev of the truncated-normal kernel initializer.

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
        **kwargs,
    ):
        super().__init__(**kwargs)
        if hidden_size % num_heads:
            raise ValueError(
                "`hidden_size` must be divisible by `num_heads`. "
                f"Received: hidden_size={hidden_size}, num_heads={num_heads}"
            )
        if head_mask is not None:
            head_mask = [float(v) for v in head_mask]
            if len(head_mask) != num_heads:
                raise ValueError(
                    f"`head_mask` needs one value per head ({num_heads}). "
                    f"Received: head_mask={head_mask}"
                )
        self.hidden_size = hidden_size
        self.num_heads = num_heads
        self.qkv_bias = qkv_bias
        self.attention_dropout = attention_dropout
        self.dropout = dropout
        self.head_mask = head_mask
        self.initializer_range = initializer_range
        self.head_dim = hidden_size // num_heads
        self.scale = self.head_dim**-0.5
        self.attention_dropout_layer = (
            keras.layers.Dropout(attention_dropout) if attention_dropout else None
        )
        self.dropout_layer = keras.layers.Dropout(dropout) if dropout else None

    def build(self, input_shape):
        d = self.hidden_size
        init = keras.initializers.TruncatedNormal(stddev=self.initializer_range)
        # Columns [0:d] are the query, [d:2d] the key, [2d:3d] the value projection.
        self.qkv_kernel = self.add_weight(name="qkv_kernel", shape=(d, 3 * d), initializer=init)
        self.qkv_bias_weight = (
            self.add_weight(name="qkv_bias", shape=(3 * d,), initializer="zeros")
            if self.qkv_bias
            else None
        )
        self.output_kernel = self.add_weight(name="output_kernel", shape=(d, d), initializer=init)
        self.output_bias = self.add_weight(name="output_bias", shape=(d,), initializer="zeros")

    def call(self, hidden_states, return_attention_scores=False, training=None):
        # ops.matmul, not `@`: on TensorFlow it contracts (batch, len, d) x (d, e) as one 2-D
        # GEMM, where `@` becomes a broadcasting batch matmul, ~25% slower on deit-base.
        # Reading `.value` skips a conversion that costs more than a small matmul on PyTorch.
        qkv = ops.matmul(hidden_states, self.qkv_kernel.value)
        if self.qkv_bias_weight is not None:
            qkv = qkv + self.qkv_bias_weight.value
        batch, length = ops.shape(hidden_states)[:2]
        qkv = ops.reshape(qkv, (batch, length, 3, self.num_heads, self.head_dim))
        query, key, value = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]  # (batch, len, heads, dim)

        explicit = (
            return_attention_scores
            or self.head_mask is not None
            or (training and self.attention_dropout_layer is not None)
            # float16 (mixed_float16): XLA:CPU has no F16_F16_F32 dot for the fused kernel
            # under jit, and the explicit path keeps the softmax in float32 everywhere.
            or keras.backend.standardize_dtype(query.dtype) == "float16"
        )
        probs = None
        if explicit:
            context, probs = self._explicit_attention(query, key, value, training)
        else:
            context = ops.dot_product_attention(query, key, value, scale=self.scale)
        context = ops.reshape(context, (batch, length, self.hidden_size))
        output = ops.matmul(context, self.output_kernel.value) + self.output_bias.value
        if self.dropout_layer is not None:
            output = self.dropout_layer(output, training=training)
        if return_attention_scores:
            return output, probs
        return output

    def _explicit_attention(self, query, key, value, training):
        """softmax(q k^T * scale) v with the probabilities kept; inputs (batch, len, heads, dim)."""
        query = ops.transpose(query, (0, 2, 1, 3))
        key = ops.transpose(key, (0, 2, 3, 1))
        value = ops.transpose(value, (0, 2, 1, 3))
        scores = ops.matmul(query, key) * self.scale
        # Softmax in float32 for stability under mixed precision, as transformers does.
        probs = ops.cast(ops.softmax(ops.cast(scores, "float32"), axis=-1), query.dtype)
        if self.attention_dropout_layer is not None:
            probs = self.attention_dropout_layer(probs, training=training)
        if self.head_mask is not None:
            probs = probs * ops.cast(ops.reshape(self.head_mask, (1, -1, 1, 1)), probs.dtype)
        context = ops.matmul(probs, value)
        return ops.transpose(context, (0, 2, 1, 3)), probs

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
        )
        return config
