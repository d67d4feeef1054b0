"""`DeiTForMaskedImageModeling`: the SimMIM decoder on the patch tokens."""

import keras
from keras import ops

from keras_deit import keras_native
from keras_deit.checks import check_masked_image_inputs
from keras_deit.layers import DeiTMaskedImageModelingDecoder
from keras_deit.losses import masked_image_modeling_loss
from keras_deit.models.backbone import (
    build_backbone, bool_masked_pos_input, forward_extras, pixel_values_input,
)
from keras_deit.models.base import DeiTPreTrainedModel, as_config

@keras.saving.register_keras_serializable(package="keras_deit")
class DeiTForMaskedImageModeling(DeiTPreTrainedModel):
    """DeiT with the SimMIM decoder, reconstructing the image from the patch tokens.

    The decoder reads the patch tokens (`sequence[:, 2:]`, transformers v5; v4 and the TF class
    read `[:, 1:-1]`, a bug) and upsamples them with a 1x1 convolution and a PyTorch-order pixel
    shuffle. The loss is `keras_deit.losses.masked_image_modeling_loss`.

    Args:
        config: a `DeiTConfig` whose `encoder_stride` equals its `patch_size`.
        Other arguments as in `DeiTModel`.

    Inputs:
        dict: `pixel_values` (batch, H, W, C), `bool_masked_pos` (batch, num_patches) bool.

    Outputs:
        dict: `reconstruction`, the size and layout of `pixel_values`, plus `hidden_states` /
        `attentions` if requested.
    """

    def __init__(self, config, dtype=None, **kwargs):
        config = as_config(config)
        requested_dtype, dtype = dtype, keras_native.layer_policy(dtype)
        if config.patch_hw != (config.encoder_stride, config.encoder_stride):
            raise ValueError(
                "The SimMIM decoder upsamples each patch token by `encoder_stride`, so it must "
                f"equal the patch size. Received: encoder_stride={config.encoder_stride}, "
                f"patch_size={config.patch_size}"
            )
        options = self._take_options(kwargs)
        if options["include_preprocessing"]:
            raise ValueError(
                "DeiTForMaskedImageModeling reconstructs its input pixel values, so it cannot "
                "include the preprocessing: preprocess the images with DeiTImageProcessor. "
                f"Received: include_preprocessing={options['include_preprocessing']!r}."
            )
        interpolate_pos_encoding = options["interpolate_pos_encoding"]
        data_format = options["data_format"]

        # === Layers ===
        deit = build_backbone(config, use_mask_token=True, dtype=dtype, **options)
        decoder = DeiTMaskedImageModelingDecoder(
            config.encoder_stride,
            config.num_channels,
            data_format=data_format,
            initializer_range=config.initializer_range,
            dtype=dtype,
            name="decoder",
        )

        # === Functional model ===
        inputs = {
            "pixel_values": pixel_values_input(config, interpolate_pos_encoding, data_format)[0],
            "bool_masked_pos": bool_masked_pos_input(config, interpolate_pos_encoding),
        }
        encoded = deit.encode(inputs)
        patch_tokens = encoded["last_hidden_state"][:, config.num_prefix_tokens:]
        reconstruction = decoder(patch_tokens, inputs["pixel_values"])
        outputs = forward_extras(encoded, {"reconstruction": reconstruction})
        super().__init__(inputs=inputs, outputs=outputs, dtype=requested_dtype, **kwargs)

        # === Config ===
        self.deit = deit
        self.decoder = decoder
        self._set_options(config, dict(options, head_mask=deit.head_mask))

    _primary_output = "reconstruction"

    def default_loss(self, x, y, y_pred, sample_weight=None):
        """SimMIM's L1 loss on the masked pixels (`losses.masked_image_modeling_loss`).

        The target is `pixel_values`, or `y` when given (e.g. unnormalized images), of the same
        shape. `sample_weight` is not used: the loss is one ratio over the whole batch.
        """
        target = x["pixel_values"] if y is None else y
        return masked_image_modeling_loss(
            ops.cast(target, "float32"),
            ops.cast(y_pred["reconstruction"], "float32"),
            x["bool_masked_pos"],
            self.config.encoder_stride,
            self.data_format,
        )
    def _check_inputs(self, inputs):
        super()._check_inputs(inputs)
        check_masked_image_inputs(inputs, self.config, self.data_format)

    def _check_targets(self, x, y):
        if y is None or not hasattr(y, "shape") or not isinstance(x, dict):
            return
        pixel_shape = getattr(x.get("pixel_values"), "shape", None)
        if pixel_shape is not None and tuple(y.shape) != tuple(pixel_shape):
            raise ValueError(
                "SimMIM reconstructs the images: a target `y` must have the shape of "
                f"`pixel_values` {tuple(pixel_shape)}. Received: y shape={tuple(y.shape)}. Leave "
                "y out to reconstruct `pixel_values` themselves."
            )
