"""Random patch masks for SimMIM pre-training (`DeiTForMaskedImageModeling`).

SimMIM masks square blocks of `mask_patch_size` pixels (32 in the paper), larger than the
model's patches: it draws exactly `ceil(mask_ratio * blocks)` blocks at random on the coarse
grid, then repeats each block over the model patches it covers. The result is one boolean per
model patch, row-major: the model's `bool_masked_pos`.
"""

import math

import numpy as np

from keras_deit.checks import pair


def _square(value, name):
    height, width = pair(value, name)
    if height != width:
        raise ValueError(
            f"SimMIM masks use square patches. Received: {name}={value!r}. Use a square size."
        )
    return height


class MaskGenerator:
    """Draws SimMIM masks: `bool_masked_pos` arrays for `DeiTForMaskedImageModeling`.

    Args:
        input_size: int or (height, width), the image size in pixels.
        mask_patch_size: int, the side of a masked block in pixels (SimMIM: 32); a multiple of
            the model patch size that divides the image size.
        model_patch_size: int, the model's patch size (`config.patch_size`).
        mask_ratio: float in [0, 1], the share of blocks masked (SimMIM: 0.6); exactly
            `ceil(blocks * mask_ratio)` blocks are masked in every mask.
        seed: optional int, for reproducible masks (numpy and tf.data alike).

    Attributes:
        num_patches: model patches per image (the length of a mask).
        mask_count: masked blocks per image; `mask_count * (mask_patch_size //
            model_patch_size) ** 2` masked model patches.

    Example:
        ```python
        generator = MaskGenerator.from_config(model.config, mask_patch_size=32, seed=0)
        masks = generator(batch_size=len(images))           # numpy, (batch, num_patches) bool
        model.fit({"pixel_values": images, "bool_masked_pos": masks}, ...)
        dataset = images_dataset.map(generator.tf_map_fn())   # tf.data: adds the masks
        ```
    """

    def __init__(self, input_size=192, mask_patch_size=32, model_patch_size=4, mask_ratio=0.6,
                 seed=None):
        height, width = pair(input_size, "input_size")
        mask_patch = _square(mask_patch_size, "mask_patch_size")
        model_patch = _square(model_patch_size, "model_patch_size")
        if height % mask_patch or width % mask_patch:
            raise ValueError(
                f"`input_size` {(height, width)} must be divisible by `mask_patch_size` "
                f"{mask_patch}. Received: input_size={input_size!r}, "
                f"mask_patch_size={mask_patch_size!r}. Pick a block size that divides the image."
            )
        if mask_patch % model_patch:
            raise ValueError(
                f"`mask_patch_size` must be a multiple of the model patch size {model_patch}. "
                f"Received: mask_patch_size={mask_patch_size!r}, "
                f"model_patch_size={model_patch_size!r}."
            )
        if not isinstance(mask_ratio, (int, float)) or not 0.0 <= mask_ratio <= 1.0:
            raise ValueError(f"`mask_ratio` must be in [0, 1]. Received: mask_ratio={mask_ratio!r}")
        self.input_size = (height, width)
        self.mask_patch_size = mask_patch
        self.model_patch_size = model_patch
        self.mask_ratio = float(mask_ratio)
        self.seed = seed
        self.coarse_grid = (height // mask_patch, width // mask_patch)
        self.scale = mask_patch // model_patch
        self.block_count = self.coarse_grid[0] * self.coarse_grid[1]
        self.mask_count = int(math.ceil(self.block_count * self.mask_ratio))
        self.num_patches = self.block_count * self.scale * self.scale
        self._rng = np.random.default_rng(seed)

    @classmethod
    def from_config(cls, config, mask_patch_size=32, mask_ratio=0.6, seed=None, image_size=None):
        """A generator for a `DeiTConfig`'s image and patch size (or another `image_size`)."""
        return cls(image_size or config.image_hw, mask_patch_size,
                   _square(config.patch_hw, "patch_size"), mask_ratio, seed)

    def __call__(self, batch_size=None):
        """Draws masks with numpy.

        Args:
            batch_size: None for one mask (num_patches,), or an int for (batch_size,
                num_patches).

        Returns:
            A bool numpy array, True where a patch is masked.
        """
        count = 1 if batch_size is None else batch_size
        scores = self._rng.random((count, self.block_count))
        # The `mask_count` smallest scores of each row are masked: a uniform random subset.
        chosen = np.argsort(scores, axis=1)[:, : self.mask_count]
        coarse = np.zeros((count, self.block_count), bool)
        np.put_along_axis(coarse, chosen, True, axis=1)
        masks = self._upsample(coarse, np)
        return masks[0] if batch_size is None else masks

    def _upsample(self, coarse, xp):
        """(n, blocks) coarse masks -> (n, num_patches) model-patch masks, row-major."""
        rows, cols = self.coarse_grid
        grid = xp.reshape(coarse, (-1, rows, 1, cols, 1))
        tiles = (1, 1, self.scale, 1, self.scale)
        grid = xp.tile(grid, tiles)
        return xp.reshape(grid, (-1, self.num_patches))

    def tf_masks(self, batch_size=None, generator=None):
        """Draws masks with TensorFlow ops, for use inside `tf.data` pipelines.

        Args:
            batch_size: None, an int or a scalar tensor, as in `__call__`.
            generator: optional `tf.random.Generator` (by default one seeded with `seed`,
                created on first use).

        Returns:
            A bool tf.Tensor, (num_patches,) or (batch_size, num_patches).
        """
        import tensorflow as tf

        generator = generator or self._tf_generator()
        count = 1 if batch_size is None else batch_size
        scores = generator.uniform((count, self.block_count))
        # Rank of each score in its row; the `mask_count` lowest ranks are masked.
        ranks = tf.argsort(tf.argsort(scores, axis=1), axis=1)
        coarse = ranks < self.mask_count
        masks = self._upsample(coarse, tf)
        return masks[0] if batch_size is None else masks

    def tf_map_fn(self):
        """A function for `dataset.map` that adds masks to images.

        It maps `images` -> `{"pixel_values": images, "bool_masked_pos": masks}` and
        `(images, *rest)` -> `({"pixel_values": images, "bool_masked_pos": masks}, *rest)`, for
        single images (H, W, C) and batches (batch, H, W, C) alike (channels_first too).
        """
        import tensorflow as tf

        generator = self._tf_generator()

        def add_masks(images, *rest):
            if images.shape.rank == 4:
                masks = self.tf_masks(tf.shape(images)[0], generator)
            else:
                masks = self.tf_masks(None, generator)
            inputs = {"pixel_values": images, "bool_masked_pos": masks}
            return (inputs, *rest) if rest else inputs

        return add_masks

    def _tf_generator(self):
        import tensorflow as tf

        if self.seed is None:
            return tf.random.Generator.from_non_deterministic_state()
        return tf.random.Generator.from_seed(self.seed)

    def __repr__(self):
        return (
            f"MaskGenerator(input_size={self.input_size}, mask_patch_size={self.mask_patch_size}, "
            f"model_patch_size={self.model_patch_size}, mask_ratio={self.mask_ratio}, "
            f"seed={self.seed})"
        )
