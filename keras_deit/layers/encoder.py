"""The transformer encoder: MLP, pre-norm block, and the stack of blocks."""

import keras
from keras import ops

from keras_deit import kernels
from keras_deit.keras_internals import call_built
from keras_deit.layers import projection
from keras_deit.layers.activations import get_activation
from keras_deit.layers.attention import DeiTAttention, head_mask_values


@keras.saving.register_keras_serializable(package="keras_deit")
class DeiTMLP(keras.layers.Layer):
    """Two-layer feed-forward network: Dense(intermediate) -> activation -> Dense(hidden).

    The two projections are `keras.layers.Dense` sublayers `fc1` and `fc2`.

    Args:
        hidden_size: int, input and output width.
        intermediate_size: int, inner width (4 x hidden_size in DeiT).
        hidden_act: str, an HF activation name ("gelu" is the exact form).
        dropout: float, dropout on the output (training only).
        initializer_range: float, stddev of the truncated-normal kernel initializer.

    Call arguments:
        hidden_states: (batch, seq_len, hidden_size).

    Returns:
        (batch, seq_len, hidden_size).
    """

    def __init__(self, hidden_size, intermediate_size, hidden_act="gelu", dropout=0.0,
                 initializer_range=0.02, **kwargs):
        super().__init__(**kwargs)
        self.hidden_size = hidden_size
        self.intermediate_size = intermediate_size
        self.hidden_act = hidden_act
        self.dropout = dropout
        self.initializer_range = initializer_range
        self.activation = get_activation(hidden_act)
        self.dropout_layer = (
            keras.layers.Dropout(dropout, dtype=self.dtype_policy) if dropout else None
        )
        self.fc1 = projection.projection(
            intermediate_size, initializer_range, self.dtype_policy, "fc1"
        )
        self.fc2 = projection.projection(hidden_size, initializer_range, self.dtype_policy, "fc2")

    def build(self, input_shape):
        self.fc1.build(input_shape)
        self.fc2.build((*input_shape[:-1], self.intermediate_size))

    def load_own_variables(self, store):
        # keras-deit 0.1.0 kept the four projection variables on this layer.
        projection.load_legacy_variables(store, [self.fc1, self.fc2], self)

    def call(self, hidden_states, training=None):
        x = self.activation(kernels.dense(self.fc1, hidden_states))
        x = kernels.dense(self.fc2, x)
        if self.dropout_layer is not None:
            x = self.dropout_layer(x, training=training)
        return x

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(
            hidden_size=self.hidden_size,
            intermediate_size=self.intermediate_size,
            hidden_act=self.hidden_act,
            dropout=self.dropout,
            initializer_range=self.initializer_range,
        )
        return config


@keras.saving.register_keras_serializable(package="keras_deit")
class DeiTLayer(keras.layers.Layer):
    """One pre-norm transformer block.

    `x = x + ls1 * drop_path(attention(layernorm_before(x)))`, then
    `x = x + ls2 * drop_path(mlp(layernorm_after(x)))`; the LayerScale factors `ls1`/`ls2`
    exist only when `layer_scale_init_value` is set (DeiT III).

    Args:
        hidden_size, num_heads, intermediate_size, hidden_act, qkv_bias: the architecture.
        layer_norm_eps: float, epsilon of both LayerNorms (1e-12 in HF configs, 1e-6 in timm).
        hidden_dropout: float, dropout after the attention and MLP outputs.
        attention_dropout: float, dropout on the attention probabilities.
        drop_path_rate: float, probability of skipping the residual branches (per sample,
            training only; stochastic depth).
        layer_scale_init_value: None or float, initial LayerScale value.
        head_mask: optional list of `num_heads` floats, see `DeiTAttention`.
        initializer_range: float.
        attn_implementation: "sdpa", "eager" or None (the backend's fastest), see
            `DeiTAttention`.

    Call arguments:
        hidden_states: (batch, seq_len, hidden_size).
        return_attention_scores: bool.

    Returns:
        (batch, seq_len, hidden_size), and the attention probabilities
        (batch, num_heads, seq_len, seq_len) if `return_attention_scores`.
    """

    def __init__(
        self,
        hidden_size,
        num_heads,
        intermediate_size,
        hidden_act="gelu",
        qkv_bias=True,
        layer_norm_eps=1e-12,
        hidden_dropout=0.0,
        attention_dropout=0.0,
        drop_path_rate=0.0,
        layer_scale_init_value=None,
        head_mask=None,
        initializer_range=0.02,
        attn_implementation=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.hidden_size = hidden_size
        self.num_heads = num_heads
        self.intermediate_size = intermediate_size
        self.hidden_act = hidden_act
        self.qkv_bias = qkv_bias
        self.layer_norm_eps = layer_norm_eps
        self.hidden_dropout = hidden_dropout
        self.attention_dropout = attention_dropout
        self.drop_path_rate = drop_path_rate
        self.layer_scale_init_value = layer_scale_init_value
        self.head_mask = head_mask
        self.initializer_range = initializer_range
        self.attn_implementation = attn_implementation

        self.layernorm_before = keras.layers.LayerNormalization(
            epsilon=layer_norm_eps, dtype=self.dtype_policy, name="layernorm_before"
        )
        self.attention = DeiTAttention(
            hidden_size,
            num_heads,
            qkv_bias=qkv_bias,
            attention_dropout=attention_dropout,
            dropout=hidden_dropout,
            head_mask=head_mask,
            initializer_range=initializer_range,
            attn_implementation=attn_implementation,
            dtype=self.dtype_policy,
            name="attention",
        )
        self.layernorm_after = keras.layers.LayerNormalization(
            epsilon=layer_norm_eps, dtype=self.dtype_policy, name="layernorm_after"
        )
        self.mlp = DeiTMLP(
            hidden_size,
            intermediate_size,
            hidden_act,
            dropout=hidden_dropout,
            initializer_range=initializer_range,
            dtype=self.dtype_policy,
            name="mlp",
        )
        self.seed_generator = keras.random.SeedGenerator() if drop_path_rate else None

    def build(self, input_shape):
        for layer in (self.layernorm_before, self.attention, self.layernorm_after, self.mlp):
            layer.build(input_shape)
        self.ls1 = self.ls2 = None
        if self.layer_scale_init_value is not None:
            init = keras.initializers.Constant(self.layer_scale_init_value)
            self.ls1 = self.add_weight(name="ls1", shape=(self.hidden_size,), initializer=init)
            self.ls2 = self.add_weight(name="ls2", shape=(self.hidden_size,), initializer=init)

    def call(self, hidden_states, return_attention_scores=False, training=None):
        # The sublayers are built in `build` and run inside this layer's call context, so
        # their `call` is invoked directly: on the PyTorch backend each `Layer.__call__` costs
        # ~45 us of bookkeeping, a sizeable share of a small model's forward pass.
        attended = call_built(
            self.attention,
            kernels.layer_norm(self.layernorm_before, hidden_states),
            return_attention_scores=return_attention_scores,
            training=training,
        )
        probs = None
        if return_attention_scores:
            attended, probs = attended
        hidden_states = hidden_states + self._residual(attended, self.ls1, training)
        transformed = call_built(
            self.mlp, kernels.layer_norm(self.layernorm_after, hidden_states), training=training
        )
        hidden_states = hidden_states + self._residual(transformed, self.ls2, training)
        if return_attention_scores:
            return hidden_states, probs
        return hidden_states

    def _residual(self, branch, layer_scale, training):
        """Applies LayerScale and stochastic depth to a residual branch."""
        if layer_scale is not None:
            branch = branch * layer_scale
        if training and self.drop_path_rate:
            keep = 1.0 - self.drop_path_rate
            # One draw per sample, rescaled so the expected value is unchanged.
            shape = (ops.shape(branch)[0], 1, 1)
            draw = keras.random.uniform(shape, seed=self.seed_generator, dtype=branch.dtype)
            branch = branch * ops.floor(keep + draw) / keep
        return branch

    def compute_output_shape(self, input_shape, return_attention_scores=False):
        if return_attention_scores:
            return input_shape, (input_shape[0], self.num_heads, input_shape[1], input_shape[1])
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(
            hidden_size=self.hidden_size,
            num_heads=self.num_heads,
            intermediate_size=self.intermediate_size,
            hidden_act=self.hidden_act,
            qkv_bias=self.qkv_bias,
            layer_norm_eps=self.layer_norm_eps,
            hidden_dropout=self.hidden_dropout,
            attention_dropout=self.attention_dropout,
            drop_path_rate=self.drop_path_rate,
            layer_scale_init_value=self.layer_scale_init_value,
            head_mask=self.head_mask,
            initializer_range=self.initializer_range,
            attn_implementation=self.attn_implementation,
        )
        return config


@keras.saving.register_keras_serializable(package="keras_deit")
class DeiTEncoder(keras.layers.Layer):
    """A stack of `num_layers` `DeiTLayer` blocks (`layer_0` .. `layer_{n-1}`).

    Stochastic depth grows linearly from 0 at the first block to `drop_path_rate` at the last,
    as in facebookresearch/deit.

    Args:
        num_layers: int.
        head_mask: optional (num_layers, num_heads) nested list of floats, or (num_heads,)
            applied to every layer (transformers' convention).
        All other arguments as in `DeiTLayer`.

    Call arguments:
        hidden_states: (batch, seq_len, hidden_size), the embeddings.
        output_hidden_states: bool, also return the input and every block's output.
        output_attentions: bool, also return every block's attention probabilities.

    Returns:
        A dict with `last_hidden_state` (batch, seq_len, hidden_size) (before the final
        LayerNorm), and `hidden_states` (num_layers + 1 tensors) and `attentions` (num_layers
        tensors of shape (batch, num_heads, seq_len, seq_len)) when requested.
    """

    def __init__(
        self,
        num_layers,
        hidden_size,
        num_heads,
        intermediate_size,
        hidden_act="gelu",
        qkv_bias=True,
        layer_norm_eps=1e-12,
        hidden_dropout=0.0,
        attention_dropout=0.0,
        drop_path_rate=0.0,
        layer_scale_init_value=None,
        head_mask=None,
        initializer_range=0.02,
        attn_implementation=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.num_layers = num_layers
        self.hidden_size = hidden_size
        self.num_heads = num_heads
        self.intermediate_size = intermediate_size
        self.hidden_act = hidden_act
        self.qkv_bias = qkv_bias
        self.layer_norm_eps = layer_norm_eps
        self.hidden_dropout = hidden_dropout
        self.attention_dropout = attention_dropout
        self.drop_path_rate = drop_path_rate
        self.layer_scale_init_value = layer_scale_init_value
        self.initializer_range = initializer_range
        self.attn_implementation = attn_implementation
        self.head_mask = head_mask_values(head_mask, num_heads, num_layers)
        self.blocks = [
            DeiTLayer(
                hidden_size,
                num_heads,
                intermediate_size,
                hidden_act=hidden_act,
                qkv_bias=qkv_bias,
                layer_norm_eps=layer_norm_eps,
                hidden_dropout=hidden_dropout,
                attention_dropout=attention_dropout,
                drop_path_rate=drop_path_rate * i / max(num_layers - 1, 1),
                layer_scale_init_value=layer_scale_init_value,
                head_mask=self.head_mask[i] if self.head_mask else None,
                initializer_range=initializer_range,
                attn_implementation=attn_implementation,
                dtype=self.dtype_policy,
                name=f"layer_{i}",
            )
            for i in range(num_layers)
        ]

    def build(self, input_shape):
        for block in self.blocks:
            block.build(input_shape)

    def call(self, hidden_states, output_hidden_states=False, output_attentions=False,
             training=None):
        # Only what was asked for is kept: holding every block's output alive would grow the
        # heap by one activation per block on every call (at deit-tiny batch 8, 15 MB of
        # fresh pages and ~6,000 page faults per forward pass on PyTorch).
        all_hidden = [hidden_states] if output_hidden_states else None
        all_attentions = []
        for block in self.blocks:
            # Direct `call`, as in DeiTLayer: the blocks are built and share this call context.
            hidden_states = call_built(
                block, hidden_states, return_attention_scores=output_attentions, training=training
            )
            if output_attentions:
                hidden_states, probs = hidden_states
                all_attentions.append(probs)
            if output_hidden_states:
                all_hidden.append(hidden_states)
        outputs = {"last_hidden_state": hidden_states}
        if output_hidden_states:
            outputs["hidden_states"] = all_hidden
        if output_attentions:
            outputs["attentions"] = all_attentions
        return outputs

    def get_config(self):
        config = super().get_config()
        config.update(
            num_layers=self.num_layers,
            hidden_size=self.hidden_size,
            num_heads=self.num_heads,
            intermediate_size=self.intermediate_size,
            hidden_act=self.hidden_act,
            qkv_bias=self.qkv_bias,
            layer_norm_eps=self.layer_norm_eps,
            hidden_dropout=self.hidden_dropout,
            attention_dropout=self.attention_dropout,
            drop_path_rate=self.drop_path_rate,
            layer_scale_init_value=self.layer_scale_init_value,
            head_mask=self.head_mask,
            initializer_range=self.initializer_range,
            attn_implementation=self.attn_implementation,
        )
        return config
