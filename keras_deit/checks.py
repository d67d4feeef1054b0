"""The input checks, each with its one message: image sizes and batches (used by the models,
`DeiTDistiller` and the layers), SimMIM inputs, and the trainer entry points that check before
any step runs.

Nothing here imports the rest of keras_deit, so every layer of the package may use it, nor
Keras at import time (the models that run the trainer checks have imported it), so the
keras-free readers of `keras_deit.conversion` share `is_int`.
"""

import inspect


def pair(value, name, error=ValueError):
    """`value` (an int or a pair of ints) as a (height, width) tuple of positive ints; raises
    `error` naming the argument `name` otherwise."""
    if is_int(value):
        value = (value, value)
    if (not isinstance(value, (tuple, list)) or len(value) != 2
            or not all(is_int(v) and v > 0 for v in value)):
        raise error(
            f"`{name}` must be a positive int or a pair of positive ints. Received: {name}={value!r}"
        )
    return tuple(value)


def is_int(value):
    """Whether `value` is a Python int, bool excluded (`True` is an int to Python)."""
    return isinstance(value, int) and not isinstance(value, bool)


def check_image_shape(shape, num_channels, patch_hw, data_format="channels_last",
                      image_hw=None):
    """Raises one ValueError naming the problem and the fix for an image batch `shape`.

    Args:
        shape: the batch's shape, (batch, H, W, C) or (batch, C, H, W); None entries are free.
        num_channels: int, the channels the model takes.
        patch_hw: (height, width) of a patch; H and W must be multiples of it.
        data_format: "channels_last" or "channels_first", the layout of `shape`.
        image_hw: the (height, width) the model takes, or None when any size is accepted
            (`interpolate_pos_encoding=True`).
    """
    shape = tuple(shape)
    channels_first = data_format == "channels_first"
    layout = ("(batch, channels, height, width)" if channels_first
              else "(batch, height, width, channels)")
    if len(shape) != 4:
        raise ValueError(
            f"Expected a batch of images of shape {layout}, got rank {len(shape)}. "
            f"Received: shape={shape}. Add a batch axis for a single image."
        )
    channels, spatial = (shape[1], shape[2:]) if channels_first else (shape[3], shape[1:3])
    if channels is not None and channels != num_channels:
        other = shape[3] if channels_first else shape[1]
        hint = (
            " The images look like they are in the other layout: build the model with "
            f"data_format={'channels_last' if channels_first else 'channels_first'!r}."
            if other == num_channels
            else " Convert grayscale or RGBA images to RGB first."
        )
        raise ValueError(
            f"Expected {num_channels} channels in a {data_format} batch {layout}. "
            f"Received: shape={shape}.{hint}"
        )
    for size, patch, axis in zip(spatial, patch_hw, ("height", "width")):
        if size is not None and size % patch:
            raise ValueError(
                f"Image {axis} {size} is not divisible by the patch size {patch}. "
                f"Received: shape={shape}. Resize or crop to a multiple of {patch}."
            )
    if image_hw is not None and None not in spatial and tuple(spatial) != tuple(image_hw):
        image_hw = tuple(image_hw)
        raise ValueError(
            f"Input image size {tuple(spatial)} doesn't match the model's {image_hw}. "
            f"Received: shape={shape}. Resize the images to {image_hw}, or build the "
            "model with interpolate_pos_encoding=True to resample the position embeddings."
        )


def check_model_images(inputs, config, data_format, interpolate_pos_encoding,
                       raw_images=False):
    """`check_image_shape` for a model's inputs (an array, a tensor or the dict with
    `pixel_values`), after refusing Python lists and empty batches; datasets and generators
    (no shape) pass. `raw_images`: the model includes its preprocessing, so it takes uint8
    images of any size (`check_raw_images`)."""
    pixel_values = inputs.get("pixel_values") if isinstance(inputs, dict) else inputs
    if isinstance(pixel_values, (list, tuple)) and not (
            len(pixel_values) == 1 and hasattr(pixel_values[0], "shape")):
        # Keras would read a list as several model inputs and fail on the count.
        raise ValueError(
            f"Expected a batch of images as one array or tensor, got a Python "
            f"{type(pixel_values).__name__} of {len(pixel_values)} items. Pass "
            "np.stack(images) (or the image processor's pixel_values)."
        )
    shape = getattr(pixel_values, "shape", None)  # None for datasets and generators
    if shape is None:
        return
    shape = tuple(shape)
    if shape and shape[0] == 0:
        raise ValueError(f"Expected at least one image, got an empty batch. Received: "
                         f"shape={shape}. Pass one image or more.")
    if raw_images:
        return check_raw_images(shape, config.num_channels)
    check_image_shape(shape, config.num_channels, config.patch_hw, data_format,
                      None if interpolate_pos_encoding else config.image_hw)


def check_raw_images(shape, num_channels):
    """One line naming the problem when `shape` is no channels-last image batch (the input of
    a model that includes its preprocessing: uint8 images of any size)."""
    if len(shape) != 4 or shape[3] not in (None, num_channels):
        raise ValueError(
            "This model includes its preprocessing: it takes uint8 images, channels-last "
            f"(batch, height, width, {num_channels}). Received: shape={tuple(shape)}."
        )


def check_masked_image_inputs(inputs, config, data_format):
    """SimMIM's inputs: a dict with `pixel_values` and a `bool_masked_pos` of shape
    (batch, num_patches); arrays without it are refused, naming `MaskGenerator`."""
    if not isinstance(inputs, dict):
        if getattr(inputs, "shape", None) is not None:
            raise ValueError(
                "DeiTForMaskedImageModeling takes a dict {'pixel_values': images, "
                "'bool_masked_pos': masks}. Received: an array of shape "
                f"{tuple(inputs.shape)}. Draw masks with keras_deit.masking.MaskGenerator."
            )
        return
    pixel_values, mask = inputs.get("pixel_values"), inputs.get("bool_masked_pos")
    pixel_shape, mask_shape = getattr(pixel_values, "shape", None), getattr(mask, "shape", None)
    if mask is None:
        raise ValueError(
            "DeiTForMaskedImageModeling needs `bool_masked_pos` (batch, num_patches) next to "
            f"`pixel_values`. Received: keys {sorted(inputs)}. Draw masks with "
            "keras_deit.masking.MaskGenerator."
        )
    if pixel_shape is None or mask_shape is None:
        return
    pixel_shape, mask_shape = tuple(pixel_shape), tuple(mask_shape)
    if len(pixel_shape) != 4:
        return  # `check_model_images` named the problem.
    spatial = pixel_shape[2:] if data_format == "channels_first" else pixel_shape[1:3]
    if None in spatial:
        num_patches = None
    else:
        (ph, pw) = config.patch_hw
        num_patches = (spatial[0] // ph) * (spatial[1] // pw)
    expected = (pixel_shape[0], num_patches)
    if len(mask_shape) != 2 or any(
        e is not None and m is not None and e != m for e, m in zip(expected, mask_shape)
    ):
        raise ValueError(
            f"`bool_masked_pos` must have shape (batch, num_patches) = {expected}: one entry "
            f"per {config.patch_hw} patch of the {tuple(spatial)} images, row-major. "
            f"Received: bool_masked_pos shape={mask_shape}, pixel_values shape={pixel_shape}. "
            "Use keras_deit.masking.MaskGenerator(input_size, model_patch_size="
            f"{config.patch_size}, ...)."
        )


class TrainerEntryChecks:
    """Mixin for a `keras.Model`: every trainer entry point (fit, evaluate, predict and the
    *_on_batch methods) calls `self._check_entry(method, arguments)` before Keras runs a step.

    Why before: on JAX, Keras takes the variables out of the model for the loop and does not
    put them back if a step raises. `arguments` maps `keras.Model`'s parameter names (`x`, `y`,
    `validation_data`, ...) to what the caller passed; it may replace `arguments["x"]` (a
    dataset with a check of its own in flight), which the method then runs on.
    """

    def _check_entry(self, method, arguments):
        raise NotImplementedError

    def _checked(self, method, x, args, kwargs):
        import keras

        arguments = inspect.signature(getattr(keras.Model, method)).bind(
            self, x, *args, **kwargs
        ).arguments
        self._check_entry(method, arguments)
        return arguments.get("x", x)

    def fit(self, x=None, *args, **kwargs):
        x = self._checked("fit", x, args, kwargs)
        return super().fit(x, *args, **kwargs)

    def evaluate(self, x=None, *args, **kwargs):
        x = self._checked("evaluate", x, args, kwargs)
        return super().evaluate(x, *args, **kwargs)

    def predict(self, x, *args, **kwargs):
        x = self._checked("predict", x, args, kwargs)
        return super().predict(x, *args, **kwargs)

    def train_on_batch(self, x, *args, **kwargs):
        x = self._checked("train_on_batch", x, args, kwargs)
        return super().train_on_batch(x, *args, **kwargs)

    def test_on_batch(self, x, *args, **kwargs):
        x = self._checked("test_on_batch", x, args, kwargs)
        return super().test_on_batch(x, *args, **kwargs)

    def predict_on_batch(self, x):
        self._checked("predict_on_batch", x, (), {})
        return super().predict_on_batch(x)

    def compile_from_config(self, config):
        """Compiles a loaded model from its saved compile config (`compile` is overridden, so
        Keras leaves this to the class)."""
        import keras

        self.compile(**keras.saving.deserialize_keras_object(config))
        if self.built and getattr(self, "optimizer", None) is not None:
            self.optimizer.build(self.trainable_variables)
