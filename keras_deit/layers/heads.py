"""Heads on top of the encoder: the pooler and the SimMIM decoder."""

import keras
from keras import ops

from keras_deit import kernels
from keras_deit.layers import projection
from keras_deit.layers.activations import get_activation


@keras.saving.register_keras_serializable(package="keras_deit")
class DeiTPooler(keras.layers.Layer):
    """Dense + activation on the class token (transformers' pooler; no pretrained weights).

    Args:
        output_size: int, width of the pooled vector.
        activation: str, an HF activation name ("tanh").
        initializer_range: float.

    Call arguments:
        hidden_states: (batch, seq_len, hidden_size).

    Returns:
        (batch, output_size).
    """

    def __init__(self, output_size, activation="tanh", initializer_range=0.02, **kwargs):
        super().__init__(**kwargs)
        self.output_size = output_size
        self.activation = activation
        self.initializer_range = initializer_range
        self.activation_fn = get_activation(activation)
        self.dense = projection.projection(output_size, initializer_range, self.dtype_policy,
                                           "dense")

    def build(self, input_shape):
        self.dense.build((input_shape[0], input_shape[-1]))

    def call(self, hidden_states):
        return self.activation_fn(self.dense(hidden_states[:, 0]))

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.output_size)

    def get_config(self):
        config = super().get_config()
        config.update(
            output_size=self.output_size,
            activation=self.activation,
            initializer_range=self.initializer_range,
        )
        return config


def pixel_shuffle(x, factor, num_channels):
    """PyTorch's `PixelShuffle` in channels_last layout.

    (batch, h, w, num_channels * factor**2) -> (batch, h * factor, w * factor, num_channels),
    where input channel `c * factor**2 + i * factor + j` lands at row offset i, column offset j
    of output channel c (PyTorch's order, which differs from `tf.nn.depth_to_space`).
    """
    batch, h, w = ops.shape(x)[0], ops.shape(x)[1], ops.shape(x)[2]
    x = ops.reshape(x, (batch, h, w, num_channels, factor, factor))
    x = ops.transpose(x, (0, 1, 4, 2, 5, 3))
    return ops.reshape(x, (batch, h * factor, w * factor, num_channels))


@keras.saving.register_keras_serializable(package="keras_deit")
class DeiTMaskedImageModelingDecoder(keras.layers.Layer):
    """SimMIM decoder: 1x1 convolution to `encoder_stride**2 * num_channels`, pixel shuffle.

    The 1x1 convolution is the same dense map on every patch token, so it is a
    `keras.layers.Dense` sublayer `dense` (quantizable, LoRA-ready like the encoder's).

    Args:
        encoder_stride: int, the upsampling factor (the patch size, to rebuild the full image).
        num_channels: int, channels of the reconstructed image.
        data_format: "channels_last" or "channels_first", the layout of `pixel_values` and of
            the reconstruction.
        initializer_range: float.

    Call arguments:
        patch_tokens: (batch, rows * cols, hidden_size), the encoder's patch tokens (no prefix),
            row-major over the patch grid.
        pixel_values: the encoded images, (batch, height, width, channels) or channels first;
            only their size is read: the grid is (height // stride, width // stride).

    Returns:
        The reconstruction, shaped like `pixel_values`.
    """

    def __init__(self, encoder_stride, num_channels=3, data_format="channels_last",
                 initializer_range=0.02, **kwargs):
        super().__init__(**kwargs)
        self.encoder_stride = encoder_stride
        self.num_channels = num_channels
        self.data_format = data_format
        self.initializer_range = initializer_range
        self.dense = projection.projection(
            encoder_stride**2 * num_channels, initializer_range, self.dtype_policy, "dense"
        )

    def build(self, patch_tokens_shape, pixel_values_shape=None):
        self.dense.build(patch_tokens_shape)

    def load_own_variables(self, store):
        # keras-deit 0.1.0 kept the kernel and bias on this layer.
        projection.load_legacy_variables(store, [self.dense], self)

    def call(self, patch_tokens, pixel_values):
        batch = ops.shape(patch_tokens)[0]
        height, width = self._spatial(ops.shape(pixel_values))
        rows, cols = height // self.encoder_stride, width // self.encoder_stride
        x = kernels.dense(self.dense, patch_tokens)
        x = ops.reshape(x, (batch, rows, cols, x.shape[-1]))
        x = pixel_shuffle(x, self.encoder_stride, self.num_channels)
        if self.data_format == "channels_first":
            x = ops.transpose(x, (0, 3, 1, 2))
        return x

    def _spatial(self, shape):
        return (shape[2], shape[3]) if self.data_format == "channels_first" else (shape[1], shape[2])

    def compute_output_shape(self, patch_tokens_shape, pixel_values_shape):
        h, w = self._spatial(pixel_values_shape)
        if self.data_format == "channels_first":
            return (patch_tokens_shape[0], self.num_channels, h, w)
        return (patch_tokens_shape[0], h, w, self.num_channels)

    def get_config(self):
        config = super().get_config()
        config.update(
            encoder_stride=self.encoder_stride,
            num_channels=self.num_channels,
            data_format=self.data_format,
            initializer_range=self.initializer_range,
        )
        return config
