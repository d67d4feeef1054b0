"""Losses of the DeiT heads, as transformers computes them."""

from keras import ops


def masked_image_modeling_loss(pixel_values, reconstruction, bool_masked_pos, patch_size,
                               data_format="channels_last"):
    """SimMIM's L1 loss on the masked pixels.

    `sum(|reconstruction - pixel_values| * mask) / (number of masked pixels + 1e-5) / channels`,
    where the patch mask is upsampled to pixels. Matches `DeiTForMaskedImageModeling`'s `loss` in
    transformers.

    Args:
        pixel_values: (batch, H, W, C) (or (batch, C, H, W) with data_format="channels_first").
        reconstruction: same shape as `pixel_values`.
        bool_masked_pos: (batch, (H // patch) * (W // patch)), True where a patch was masked.
        patch_size: int, the patch size.

    Returns:
        A scalar.
    """
    if data_format == "channels_first":
        pixel_values = ops.transpose(pixel_values, (0, 2, 3, 1))
        reconstruction = ops.transpose(reconstruction, (0, 2, 3, 1))
    batch, height, width, channels = ops.shape(pixel_values)
    mask = ops.cast(bool_masked_pos, reconstruction.dtype)
    mask = ops.reshape(mask, (batch, height // patch_size, width // patch_size, 1))
    mask = ops.repeat(ops.repeat(mask, patch_size, axis=1), patch_size, axis=2)
    per_pixel = ops.abs(ops.cast(pixel_values, reconstruction.dtype) - reconstruction)
    masked_sum = ops.sum(per_pixel * mask)
    return masked_sum / (ops.sum(mask) + 1e-5) / ops.cast(channels, reconstruction.dtype)
