"""Patch embedding and the token embeddings (class, distillation and mask tokens, positions)."""

import keras
from keras import ops

from keras_deit import kernels
from keras_deit.checks import check_image_shape, pair
from keras_deit.config import num_position_prefix_tokens, num_prefix_tokens
from keras_deit.keras_internals import call_built
from keras_deit.layers.interpolation import bicubic_resize


@keras.saving.register_keras_serializable(package="keras_deit")
class DeiTPatchEmbeddings(keras.layers.Layer):
    """Cuts an image into non-overlapping patches and projects each to `hidden_size`.

    A Conv2D with kernel = stride = patch size, with bias; patches are read row-major.

    Args:
        hidden_size: int, width of the patch tokens.
        patch_size: int or (height, width).
        num_channels: int, channels of the input images.
        initializer_range: float, stddev of the truncated-normal kernel initializer.

    Call arguments:
        pixel_values: (batch, height, width, num_channels), height and width divisible by the
            patch size.

    Returns:
        (batch, height // patch_h, width // patch_w, hidden_size): the patch grid.
    """

    def __init__(self, hidden_size, patch_size, num_channels=3, initializer_range=0.02, **kwargs):
        super().__init__(**kwargs)
        self.hidden_size = hidden_size
        self.patch_size = patch_size
        self.num_channels = num_channels
        self.initializer_range = initializer_range

    def build(self, input_shape):
        ph, pw = pair(self.patch_size, "patch_size")
        self.kernel = self.add_weight(
            name="kernel",
            shape=(ph, pw, self.num_channels, self.hidden_size),
            initializer=keras.initializers.TruncatedNormal(stddev=self.initializer_range),
        )
        self.bias = self.add_weight(name="bias", shape=(self.hidden_size,), initializer="zeros")

    def call(self, pixel_values):
        self._check_input_shape(pixel_values.shape)
        return kernels.patch_embedding(
            pixel_values,
            kernels.read(self.kernel, pixel_values),
            kernels.read(self.bias, pixel_values),
            pair(self.patch_size, "patch_size"),
        )

    def _check_input_shape(self, shape):
        check_image_shape(shape, self.num_channels, pair(self.patch_size, "patch_size"))

    def compute_output_shape(self, input_shape):
        ph, pw = pair(self.patch_size, "patch_size")
        h, w = input_shape[1], input_shape[2]
        return (
            input_shape[0],
            None if h is None else h // ph,
            None if w is None else w // pw,
            self.hidden_size,
        )

    def get_config(self):
        config = super().get_config()
        config.update(
            hidden_size=self.hidden_size,
            patch_size=self.patch_size,
            num_channels=self.num_channels,
            initializer_range=self.initializer_range,
        )
        return config


@keras.saving.register_keras_serializable(package="keras_deit")
class DeiTEmbeddings(keras.layers.Layer):
    """Patch tokens plus the class (and distillation) token and position embeddings.

    The sequence is `[CLS, DIST, patch_1 .. patch_N]` (`[CLS, patch_1 ..]` without a
    distillation token). DeiT v1 and ViT add position embeddings to the whole sequence; DeiT III
    (`class_token_position_embedding=False`) adds them to the patches only, then prepends the
    prefix tokens. Masked patches (SimMIM) are replaced by the learned mask token before the
    position embeddings are added.

    Args:
        hidden_size, patch_size, num_channels: as in `DeiTPatchEmbeddings`.
        image_size: int or (height, width), the size the position embeddings were trained for.
        use_distillation_token: bool, whether a distillation token follows the class token.
        use_mask_token: bool, whether to create the SimMIM mask token.
        class_token_position_embedding: bool, see above.
        dropout: float, dropout rate on the embeddings (training only).
        initializer_range: float, stddev of the truncated-normal initializers.

    Call arguments:
        pixel_values: (batch, height, width, num_channels).
        bool_masked_pos: optional (batch, num_patches) bool, True where a patch is masked.
        interpolate_pos_encoding: bool. If True, inputs of any size divisible by the patch are
            accepted and the position embeddings are resized with PyTorch's bicubic kernel, as
            transformers does; if False, the input must have the configured `image_size`.

    Returns:
        (batch, num_prefix_tokens + num_patches, hidden_size).
    """

    def __init__(
        self,
        hidden_size,
        patch_size,
        image_size,
        num_channels=3,
        use_distillation_token=True,
        use_mask_token=False,
        class_token_position_embedding=True,
        dropout=0.0,
        initializer_range=0.02,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.hidden_size = hidden_size
        self.patch_size = patch_size
        self.image_size = image_size
        self.num_channels = num_channels
        self.use_distillation_token = use_distillation_token
        self.use_mask_token = use_mask_token
        self.class_token_position_embedding = class_token_position_embedding
        self.dropout = dropout
        self.initializer_range = initializer_range
        self.patch_embeddings = DeiTPatchEmbeddings(
            hidden_size, patch_size, num_channels, initializer_range, dtype=self.dtype_policy,
            name="patch_embeddings",
        )
        self.dropout_layer = (
            keras.layers.Dropout(dropout, dtype=self.dtype_policy) if dropout else None
        )
        (h, w), (ph, pw) = pair(image_size, "image_size"), pair(patch_size, "patch_size")
        self.grid_size = (h // ph, w // pw)
        self.num_prefix_tokens = num_prefix_tokens(use_distillation_token)

    def build(self, input_shape):
        self.patch_embeddings.build(input_shape)
        init = keras.initializers.TruncatedNormal(stddev=self.initializer_range)
        d = self.hidden_size
        self.cls_token = self.add_weight(name="cls_token", shape=(1, 1, d), initializer=init)
        if self.use_distillation_token:
            self.distillation_token = self.add_weight(
                name="distillation_token", shape=(1, 1, d), initializer=init
            )
        if self.use_mask_token:
            self.mask_token = self.add_weight(name="mask_token", shape=(1, 1, d), initializer="zeros")
        num_positions = self.grid_size[0] * self.grid_size[1]
        if self.class_token_position_embedding:
            num_positions += self.num_prefix_tokens
        self.position_embeddings = self.add_weight(
            name="position_embeddings", shape=(1, num_positions, d), initializer=init
        )

    def call(self, pixel_values, bool_masked_pos=None, interpolate_pos_encoding=False, training=None):
        shape = pixel_values.shape
        if not interpolate_pos_encoding:
            self._check_image_size(shape)
        # Built in `build` and run in this call's scopes: its `call` directly, as DeiTLayer
        # calls its sublayers, saves a `Layer.__call__` (~45 us on PyTorch).
        grid = call_built(self.patch_embeddings, pixel_values)
        rows, cols = ops.shape(grid)[1], ops.shape(grid)[2]
        batch = ops.shape(grid)[0]
        patches = ops.reshape(grid, (batch, -1, self.hidden_size))

        if bool_masked_pos is not None:
            if not self.use_mask_token:
                raise ValueError(
                    "`bool_masked_pos` was given but this layer has no mask token: build it "
                    "with use_mask_token=True."
                )
            mask = ops.cast(bool_masked_pos, self.compute_dtype)[:, :, None]
            patches = patches * (1.0 - mask) + ops.cast(self.mask_token, self.compute_dtype) * mask

        prefix = [self.cls_token]
        if self.use_distillation_token:
            prefix.append(self.distillation_token)
        prefix = ops.broadcast_to(
            ops.concatenate([ops.cast(t, self.compute_dtype) for t in prefix], axis=1),
            (batch, self.num_prefix_tokens, self.hidden_size),
        )
        positions = ops.cast(self.position_embeddings, self.compute_dtype)
        if interpolate_pos_encoding:
            positions = self._resize_positions(positions, (rows, cols))
        if self.class_token_position_embedding:
            embeddings = ops.concatenate([prefix, patches], axis=1) + positions
        else:
            embeddings = ops.concatenate([prefix, patches + positions], axis=1)
        if self.dropout_layer is not None:
            embeddings = self.dropout_layer(embeddings, training=training)
        return embeddings

    def _resize_positions(self, positions, grid):
        """Resizes the patch part of `positions` to `grid` = (rows, cols)."""
        if all(isinstance(n, int) for n in grid) and tuple(grid) == self.grid_size:
            return positions  # Same grid: the resize would be the identity.
        prefix = num_position_prefix_tokens(self.use_distillation_token,
                                            self.class_token_position_embedding)
        return resample_position_embeddings(positions, self.grid_size, grid, prefix)

    def _check_image_size(self, shape):
        check_image_shape(shape, self.num_channels, pair(self.patch_size, "patch_size"),
                          image_hw=pair(self.image_size, "image_size"))

    def compute_output_shape(self, input_shape, *args, **kwargs):
        rows, cols = self.patch_embeddings.compute_output_shape(input_shape)[1:3]
        length = None if rows is None or cols is None else rows * cols + self.num_prefix_tokens
        return (input_shape[0], length, self.hidden_size)

    def get_config(self):
        config = super().get_config()
        config.update(
            hidden_size=self.hidden_size,
            patch_size=self.patch_size,
            image_size=self.image_size,
            num_channels=self.num_channels,
            use_distillation_token=self.use_distillation_token,
            use_mask_token=self.use_mask_token,
            class_token_position_embedding=self.class_token_position_embedding,
            dropout=self.dropout,
            initializer_range=self.initializer_range,
        )
        return config


def resample_position_embeddings(position_embeddings, old_grid, new_grid, num_prefix_tokens):
    """Resizes the patch part of position embeddings to a new patch grid.

    The prefix entries (class and distillation tokens) are kept; the patch grid is resized
    with PyTorch's bicubic kernel (`bicubic_resize`), as transformers'
    `interpolate_pos_encoding` does. The one resampler: `DeiTEmbeddings` uses it on the fly,
    `keras_deit.training.fine_tuning` to move weights between image sizes.

    Args:
        position_embeddings: (1, num_prefix_tokens + rows * cols, hidden).
        old_grid: (rows, cols) of the stored embeddings.
        new_grid: (new_rows, new_cols); ints, or traced sizes inside a layer.
        num_prefix_tokens: int, entries before the patches (0 for DeiT III).

    Returns:
        (1, num_prefix_tokens + new_rows * new_cols, hidden), a tensor.
    """
    position_embeddings = ops.convert_to_tensor(position_embeddings)
    rows, cols = old_grid
    length, hidden = position_embeddings.shape[1], position_embeddings.shape[2]
    if length != num_prefix_tokens + rows * cols:
        raise ValueError(
            f"The position embeddings hold {length} entries, not num_prefix_tokens + rows * "
            f"cols = {num_prefix_tokens} + {rows} * {cols}. Received: shape="
            f"{tuple(position_embeddings.shape)}, old_grid={tuple(old_grid)}. Pass the grid and "
            "prefix count of the model they come from."
        )
    if all(isinstance(n, int) for n in new_grid) and tuple(old_grid) == tuple(new_grid):
        return position_embeddings
    prefix = position_embeddings[:, :num_prefix_tokens]
    patches = ops.reshape(position_embeddings[:, num_prefix_tokens:], (1, rows, cols, hidden))
    patches = ops.reshape(bicubic_resize(patches, tuple(new_grid)), (1, -1, hidden))
    return ops.concatenate([prefix, patches], axis=1)
