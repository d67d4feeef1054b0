"""Preprocessing inside a model: the `include_preprocessing` option of the DeiT models.

A model built with it takes uint8 images of any size, channels-last `(batch, H, W, C)`, and
runs the checkpoint's own resize / center crop / rescale / normalize (a `DeiTPreprocessing`
layer) in its graph, so `predict` on raw images equals processor-then-model and the model
saves, loads and exports as one file. The option's value, kept in `get_config`, is the
processor's `preprocessor_config.json` dict.
"""

import os
import warnings
import weakref

import keras

from keras_deit import presets
from keras_deit.image_processing import CONFIG_NAME, DeiTImageProcessor

# Models already warned about uint8 input (once per model).
_warned = weakref.WeakSet()


def default_processor(config):
    """transformers' `DeiTImageProcessor` defaults at the config's resolution: resize to
    256/224 of the crop, center-crop `config.image_size`, mean = std = 0.5."""
    height, width = config.image_hw
    return DeiTImageProcessor(
        size={"height": height * 256 // 224, "width": width * 256 // 224},
        crop_size={"height": height, "width": width},
    )


def processor_for(folder, preset, config):
    """The processor a checkpoint was evaluated with: `folder/preprocessor_config.json`, else
    the preset's recipe, else the original DeiT recipe (timm) at the config's resolution.

    Args:
        folder: the checkpoint's folder, or None for a lone file.
        preset: the preset name it belongs to, or None.
        config: its `DeiTConfig`.
    """
    if folder and os.path.isfile(os.path.join(folder, CONFIG_NAME)):
        return DeiTImageProcessor.from_pretrained(folder)
    if preset is not None and presets.is_preset(str(preset)):
        recipe = presets.get_preset(preset)["preprocessing"]
        return DeiTImageProcessor.from_timm_recipe(
            image_size=recipe["image_size"], crop_pct=recipe["crop_pct"],
            interpolation=recipe["interpolation"], mean=recipe["mean"], std=recipe["std"],
        )
    return DeiTImageProcessor.from_timm_recipe(image_size=config.image_hw[0])


def resolve(value, config, interpolate_pos_encoding):
    """The option's stored form: None (off), or a `preprocessor_config.json` dict.

    Args:
        value: None / False (off), True (`default_processor(config)`), a `DeiTImageProcessor`
            or its dict.
        config: the model's `DeiTConfig`; the crop must give its image size unless
            `interpolate_pos_encoding`.
    """
    if value is None or value is False:
        return None
    if value is True:
        processor = default_processor(config)
    elif isinstance(value, DeiTImageProcessor):
        processor = value
    elif isinstance(value, dict):
        processor = DeiTImageProcessor.from_dict(value)
    else:
        raise ValueError(
            "`include_preprocessing` must be True, False, a DeiTImageProcessor or its dict. "
            f"Received: include_preprocessing of type {type(value).__name__}."
        )
    crop = processor.crop_size
    if not interpolate_pos_encoding and (
            not processor.do_center_crop or (crop["height"], crop["width"]) != config.image_hw):
        got = f"{crop['height']}x{crop['width']}" if processor.do_center_crop else "no crop"
        raise ValueError(
            f"The preprocessing must crop to the model's image size {config.image_hw}. "
            f"Received: {got}. Pass a processor with that crop_size, or build the model with "
            "interpolate_pos_encoding=True."
        )
    return processor.to_dict()


def raw_images_input(preprocessing, config, data_format):
    """(the uint8 `images` Input, the preprocessed pixel values in `data_format`).

    Args:
        preprocessing: a dict from `resolve`.
    """
    images = keras.Input(shape=(None, None, config.num_channels), dtype="uint8", name="images")
    layer = DeiTImageProcessor.from_dict(preprocessing).to_keras_layer(name="preprocessing")
    pixel_values = layer(images)
    if data_format == "channels_first":
        # The rest of the graph reads the layout the model was built for.
        pixel_values = keras.layers.Permute((3, 1, 2), name="to_channels_first")(pixel_values)
    return images, pixel_values


def warn_if_raw_images(model, pixel_values):
    """Warns once per model when a model without preprocessing receives uint8 images."""
    dtype = getattr(pixel_values, "dtype", None)
    if dtype is None or model in _warned:
        return
    if keras.backend.standardize_dtype(dtype) == "uint8":
        _warned.add(model)
        warnings.warn(
            f"{type(model).__name__} received uint8 images, but it takes preprocessed float "
            "pixel values: preprocess them with DeiTImageProcessor, or build the model with "
            "include_preprocessing=True (from_pretrained(source, include_preprocessing=True)) "
            "to take raw images.",
            stacklevel=3,
        )


def split(model):
    """(the same model without its preprocessing, on the same weights, the `DeiTPreprocessing`
    layer), or (model, None) when it has none; export runs the two parts itself."""
    preprocessing = getattr(model, "include_preprocessing", None)
    if not preprocessing:
        return model, None
    config = dict(model.get_config(), include_preprocessing=None)
    plain = type(model).from_config(config)
    plain.set_weights(model.get_weights())
    return plain, model.get_layer("preprocessing")
