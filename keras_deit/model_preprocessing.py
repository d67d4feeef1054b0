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
import numpy as np

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
    # The image the model sees: the crop, or without one the resize to (height, width).
    size = processor.size if not processor.do_center_crop and processor.do_resize else {}
    seen = ((crop["height"], crop["width"]) if processor.do_center_crop
            else (size.get("height"), size.get("width")))
    if not interpolate_pos_encoding and seen != config.image_hw:
        got = f"{seen[0]}x{seen[1]}" if None not in seen else "no crop"
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
    """Warns once per model when a model without preprocessing receives raw images: uint8, or
    float values of 0-255 pixels (what `keras.utils.image_dataset_from_directory` yields) in a
    NumPy array or an eager tensor (symbolic tensors are not read; `watch_for_raw_images`
    reads a dataset's first batch as it flows)."""
    dtype = getattr(pixel_values, "dtype", None)
    if dtype is None or model in _warned:
        return
    dtype = keras.backend.standardize_dtype(dtype)
    if dtype == "uint8":
        received = "uint8 images"
    elif "float" in dtype and _looks_like_0_255(pixel_values):
        received = "float images of 0-255 pixel values"
    else:
        return
    _warned.add(model)
    warnings.warn(
        f"{type(model).__name__} received {received}, but it takes preprocessed float "
        "pixel values: preprocess them with DeiTImageProcessor, or build the model with "
        "include_preprocessing=True (from_pretrained(source, include_preprocessing=True)) "
        "to take raw images.",
        stacklevel=3,
    )


# Normalised pixels stay within a few units of 0 (ImageNet statistics: -2.2 to 2.7; random
# erasing's N(0, 1) noise rarely passes 5); 0-255 images of anything but a black frame pass 20.
RAW_PIXEL_THRESHOLD = 20.0


def watch_for_raw_images(model, dataset):
    """`dataset` (a `tf.data.Dataset` of `x`, `(x, y)` or `(x, y, w)`) with `warn_if_raw_images`
    run on its first float batch as it flows through `fit`, `evaluate` or `predict`.

    Read in flight rather than peeked: iterating a dataset ahead of Keras would start an epoch
    of its own (a shuffle draw, or a streamed epoch with its skip counts).
    """
    import tensorflow as tf

    spec = dataset.element_spec
    pixels_spec = spec[0] if isinstance(spec, tuple) else spec
    if isinstance(pixels_spec, dict):
        pixels_spec = pixels_spec.get("pixel_values")
    if model in _warned or not isinstance(pixels_spec, tf.TensorSpec) \
            or not pixels_spec.dtype.is_floating:
        return dataset

    def warn(largest):
        if float(largest) > RAW_PIXEL_THRESHOLD:
            warn_if_raw_images(model, np.asarray([float(largest)], "float32"))
        return True

    def look(index, element):
        # Once per pass, on its first batch: no variable, so no strategy scope to mind.
        x = element[0] if isinstance(element, tuple) else element
        pixels = x["pixel_values"] if isinstance(x, dict) else x

        def first():
            return tf.py_function(warn, [tf.reduce_max(tf.cast(pixels, tf.float32))], tf.bool)

        done = tf.cond(tf.equal(index, 0), first, lambda: tf.constant(True))
        with tf.control_dependencies([done]):
            return tf.nest.map_structure(tf.identity, element)

    return dataset.enumerate().map(look)


def _looks_like_0_255(pixel_values):
    try:  # a NumPy array or an eager tensor; a symbolic one or a spec is not read
        values = np.asarray(pixel_values if isinstance(pixel_values, np.ndarray)
                            else keras.ops.convert_to_numpy(pixel_values))
    except Exception:  # noqa: BLE001  (each backend raises its own tracer error)
        return False
    return values.dtype.kind == "f" and values.size > 0 and float(np.max(values)) > \
        RAW_PIXEL_THRESHOLD


def with_preprocessing(model, preprocessing):
    """The same model (same weights) built with `include_preprocessing=preprocessing` (anything
    `resolve` takes): it then takes raw uint8 images of any size."""
    config = dict(model.get_config(), include_preprocessing=preprocessing)
    rebuilt = type(model).from_config(config)
    rebuilt.set_weights(model.get_weights())
    return rebuilt


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
