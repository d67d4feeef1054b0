"""`DeiTImageProcessor`: image preprocessing for DeiT with NumPy and Pillow.

It reproduces the numbers of Hugging Face `transformers.DeiTImageProcessor` (its PIL backend):
resize, center crop (zero padding when the image is too small), rescale and normalize, and
reads and writes `preprocessor_config.json`. The same steps inside a model (for export) are the
Keras layer `keras_deit.layers.preprocessing.DeiTPreprocessing`. This module imports no
deep-learning framework.
"""

import inspect
import json
import numbers
import os
import warnings

import numpy as np
import PIL.Image

from keras_deit import atomic, image_ops
from keras_deit.image_ops import load_image  # noqa: F401  (public here too)
from keras_deit.config import read_json_object
from keras_deit.preprocessing_spec import (  # the constants stay public here
    IMAGENET_DEFAULT_MEAN,
    IMAGENET_DEFAULT_STD,
    IMAGENET_STANDARD_MEAN,
    IMAGENET_STANDARD_STD,
    _mean_or_std,
    _positive_int,
    _resize_output_size,
    _size_dict,
)


CONFIG_NAME = "preprocessor_config.json"

_Resampling = PIL.Image.Resampling


class BatchFeature(dict):
    """A dict of model inputs (`pixel_values`) that also allows attribute access."""

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


# ---------------------------------------------------------------------------
# The processor
# ---------------------------------------------------------------------------


class DeiTImageProcessor:
    """Prepares images for DeiT models, numerically like `transformers.DeiTImageProcessor`.

    Per image: optional RGB conversion, resize (Pillow), center crop (zero padding
    when the image is smaller than the crop), rescale, then normalize. The
    results match transformers' PIL backend to float32 rounding.

    Args:
        do_resize: resize before cropping.
        size: `{"height": h, "width": w}` (exact size) or `{"shortest_edge": s}`
            (shorter side to `s`, aspect ratio kept, longer side truncated). An int
            means a square, a pair means `(height, width)`. Default 256x256.
        resample: Pillow filter (int, `PIL.Image.Resampling` or name such as
            `"bicubic"`). Default bicubic.
        do_center_crop: center crop after resizing.
        crop_size: `{"height": h, "width": w}`, an int or a pair. Default 224x224.
        do_rescale: multiply pixel values by `rescale_factor`.
        rescale_factor: default `1 / 255`.
        do_normalize: subtract `image_mean` and divide by `image_std`, per channel.
        image_mean: default `IMAGENET_STANDARD_MEAN` (0.5, 0.5, 0.5), the
            transformers default; the facebook/deit-* checkpoints use
            `IMAGENET_DEFAULT_MEAN`.
        image_std: default `IMAGENET_STANDARD_STD` (0.5, 0.5, 0.5); see `image_mean`.
        do_convert_rgb: `None` (default) converts images that are not 3-channel
            (grayscale, RGBA, palette, CMYK ...) to RGB and leaves RGB images
            untouched. `True` always converts, which also composites the
            transparency key of an "RGB" PIL image, like transformers'
            `do_convert_rgb=True`. `False` never converts. Transparency is
            composited on white.
        data_format: layout of `pixel_values`: `"channels_last"` (default here,
            `(N, H, W, 3)` as Keras models take) or `"channels_first"`
            (`(N, 3, H, W)`, transformers' layout).
        input_data_format: layout of array inputs, `"channels_first"`,
            `"channels_last"` or `None` (inferred: the axis of size 1, 3 or 4,
            channels first when both ends qualify, like transformers).

    Inputs may be a PIL image, a NumPy array `(H, W)`, `(H, W, C)`, `(C, H, W)`
    (uint8, integer-valued, or float in [0, 1] when resizing), a 4-D batch, or
    a list of these.
    """

    model_input_names = ["pixel_values"]

    def __init__(
        self,
        do_resize=True,
        size=None,
        resample=PIL.Image.Resampling.BICUBIC,
        do_center_crop=True,
        crop_size=None,
        rescale_factor=1 / 255,
        do_rescale=True,
        do_normalize=True,
        image_mean=None,
        image_std=None,
        do_convert_rgb=None,
        data_format="channels_last",
        input_data_format=None,
    ):
        self.do_resize = bool(do_resize)
        self.size = _size_dict({"height": 256, "width": 256} if size is None else size)
        self.resample = image_ops.resample_int(resample)
        self.do_center_crop = bool(do_center_crop)
        self.crop_size = _size_dict(
            {"height": 224, "width": 224} if crop_size is None else crop_size,
            name="crop_size",
            allow_shortest_edge=False,
        )
        if not isinstance(rescale_factor, numbers.Real) or isinstance(rescale_factor, bool):
            raise ValueError(f"rescale_factor must be a number, got {rescale_factor!r}.")
        self.rescale_factor = float(rescale_factor)
        self.do_rescale = bool(do_rescale)
        self.do_normalize = bool(do_normalize)
        self.image_mean = _mean_or_std(
            IMAGENET_STANDARD_MEAN if image_mean is None else image_mean, "image_mean"
        )
        self.image_std = _mean_or_std(
            IMAGENET_STANDARD_STD if image_std is None else image_std, "image_std"
        )
        if do_convert_rgb not in (None, True, False):
            raise ValueError(f"do_convert_rgb must be None, True or False, got {do_convert_rgb!r}.")
        self.do_convert_rgb = do_convert_rgb
        self.data_format = image_ops.data_format_arg(data_format, "data_format")
        self.input_data_format = image_ops.data_format_arg(
            input_data_format, "input_data_format", allow_none=True
        )
        # Keys of a loaded preprocessor_config.json this class does not use;
        # written back unchanged by `to_dict`.
        self.extra_config = {}

    # -- processing ---------------------------------------------------------

    def __call__(self, images, return_tensors=None, **overrides):
        """Same as `preprocess`."""
        return self.preprocess(images, return_tensors=return_tensors, **overrides)

    def preprocess(self, images, return_tensors=None, **overrides):
        """Preprocesses one image or a batch.

        Args:
            images: a PIL image, an array `(H, W)`, `(H, W, C)` or `(C, H, W)`,
                a batch array `(N, H, W, C)` / `(N, C, H, W)`, or a list of these.
            return_tensors: `None` or `"np"`. With `"np"` images must all end
                up the same size; with `None` a list of arrays is returned
                when they do not.
            **overrides: any constructor argument, for this call only.

        Returns:
            `BatchFeature` with `pixel_values`: float32 `(N, H, W, 3)`
            (channels_last) or `(N, 3, H, W)` (channels_first).
        """
        if return_tensors not in (None, "np"):
            raise ValueError(
                f"return_tensors must be None or 'np', got {return_tensors!r}; "
                "convert the NumPy output with keras.ops.convert_to_tensor."
            )
        processor = self._with_overrides(overrides) if overrides else self
        processed = [processor._process_one(image) for image in image_ops.as_image_list(images)]
        if len({image.shape for image in processed}) == 1:
            pixel_values = np.stack(processed)
        elif return_tensors == "np":
            shapes = sorted({image.shape for image in processed})
            raise ValueError(
                f"Processed images have different shapes {shapes} and cannot be stacked; "
                "enable center cropping or use return_tensors=None to get a list."
            )
        else:
            pixel_values = processed
        return BatchFeature(pixel_values=pixel_values)

    def _with_overrides(self, overrides):
        unknown = set(overrides) - set(self._init_kwargs())
        if unknown:
            raise ValueError(f"Unknown preprocessing arguments: {sorted(unknown)}.")
        # Not type(self): the deprecated alias would warn on every call.
        return DeiTImageProcessor(**{**self._init_kwargs(), **overrides})

    def _init_kwargs(self):
        return {
            "do_resize": self.do_resize,
            "size": self.size,
            "resample": self.resample,
            "do_center_crop": self.do_center_crop,
            "crop_size": self.crop_size,
            "rescale_factor": self.rescale_factor,
            "do_rescale": self.do_rescale,
            "do_normalize": self.do_normalize,
            "image_mean": self.image_mean,
            "image_std": self.image_std,
            "do_convert_rgb": self.do_convert_rgb,
            "data_format": self.data_format,
            "input_data_format": self.input_data_format,
        }

    def _process_one(self, image):
        """(H, W, 3) or (3, H, W) float32 array from one PIL image or array."""
        if isinstance(image, PIL.Image.Image):
            convert = self.do_convert_rgb or (self.do_convert_rgb is None and image.mode != "RGB")
            image = image_ops.pil_to_rgb(image) if convert else image_ops.to_hwc(np.asarray(image), "channels_last")
        else:
            image = image_ops.to_hwc(image, self.input_data_format)
            convert = self.do_convert_rgb or (self.do_convert_rgb is None and image.shape[-1] != 3)
            image = image_ops.array_to_rgb(image) if convert else image

        if self.do_resize:
            height, width = _resize_output_size(image.shape[0], image.shape[1], self.size)
            image = image_ops.pil_resize(image, height, width, self.resample)
        if self.do_center_crop:
            image = image_ops.center_crop(image, self.crop_size["height"], self.crop_size["width"])
        if self.do_rescale:
            image = image_ops.rescale(image, self.rescale_factor)
        if self.do_normalize:
            image = image_ops.normalize(image, self.image_mean, self.image_std)

        image = image.astype(np.float32)
        return np.moveaxis(image, -1, 0) if self.data_format == "channels_first" else image

    # -- transformers' per-image operations ----------------------------------
    # The public methods of transformers' image processors, with their arguments. Each takes
    # one (H, W, C) or (C, H, W) array and returns it in the same layout unless `data_format`
    # names another; `input_data_format=None` infers the layout (channels first when both
    # ends could be channels, as transformers).

    def resize(self, image, size, resample=_Resampling.BICUBIC, data_format=None,
               input_data_format=None):
        """Resizes one image with Pillow to `size` ({"height", "width"} or {"shortest_edge"}).

        uint8 and integer-valued images come back uint8; float images in [0, 1] are resized
        as uint8 and come back float32 in [0, 1], as in transformers.
        """
        image, layout = self._layout_of(image, input_data_format)
        size = _size_dict(size)
        height, width = _resize_output_size(image.shape[0], image.shape[1], size)
        resized = image_ops.pil_resize(image, height, width, image_ops.resample_int(resample))
        return self._in_layout(resized, data_format, layout)

    def center_crop(self, image, size, data_format=None, input_data_format=None):
        """Crops one image to `size` ({"height", "width"}, an int or a pair) around its
        center, zero-padding it first where it is smaller (extra row / column top / left)."""
        image, layout = self._layout_of(image, input_data_format)
        size = _size_dict(size, allow_shortest_edge=False)
        cropped = image_ops.center_crop(image, size["height"], size["width"])
        return self._in_layout(cropped, data_format, layout)

    def rescale(self, image, scale, data_format=None, input_data_format=None):
        """`image * scale` as float32 (computed in float64, as transformers)."""
        image, layout = self._layout_of(image, input_data_format)
        return self._in_layout(image_ops.rescale(image, float(scale)), data_format, layout)

    def normalize(self, image, mean, std, data_format=None, input_data_format=None):
        """`(image - mean) / std` per channel; integer images become float32, float images
        keep their dtype."""
        image, layout = self._layout_of(image, input_data_format)
        normalized = image_ops.normalize(image, _mean_or_std(mean, "mean"), _mean_or_std(std, "std"))
        return self._in_layout(normalized, data_format, layout)

    @staticmethod
    def _layout_of(image, input_data_format):
        """(the image as an (H, W, C) array, the layout it came in)."""
        image = np.asarray(image)
        if image.ndim != 3:
            raise ValueError(
                "Expected one image of shape (H, W, C) or (C, H, W). Received: shape="
                f"{image.shape}. Index a batch, or add a channel axis to a 2-D image."
            )
        layout = image_ops.data_format_arg(input_data_format, "input_data_format", allow_none=True)
        if layout is None:
            layout = "channels_first" if image.shape[0] in image_ops.NUM_CHANNELS else "channels_last"
        return image_ops.to_hwc(image, layout), layout

    @staticmethod
    def _in_layout(image, data_format, input_layout):
        """An (H, W, C) result in `data_format`, or in the input's layout when it is None."""
        layout = image_ops.data_format_arg(data_format, "data_format", allow_none=True) or input_layout
        return np.moveaxis(image, -1, 0) if layout == "channels_first" else image

    # -- alternative recipes and Keras -------------------------------------

    @classmethod
    def from_timm_recipe(
        cls,
        image_size=224,
        crop_pct=0.875,
        interpolation="bicubic",
        mean=IMAGENET_DEFAULT_MEAN,
        std=IMAGENET_DEFAULT_STD,
        **kwargs,
    ):
        """The evaluation recipe of facebookresearch/deit and timm.

        Resizes the shorter side to `int(image_size / crop_pct)` (256 for 224)
        keeping the aspect ratio, then center-crops `image_size` x `image_size`,
        rescales to [0, 1] and normalizes with ImageNet mean/std.

        One known difference: torchvision's `CenterCrop` rounds the crop offset
        (`round((H - 224) / 2)`, half to even) where this processor floors it
        like transformers, so when `H - 224` is odd the crop can sit one pixel
        up/left of torchvision's (e.g. a 427x640 photo: 383 wide after resize,
        offset 79 here, 80 in torchvision).

        Args:
            image_size: int, side of the square crop.
            crop_pct: float in (0, 1], crop side / resized shorter side.
            interpolation: Pillow filter name, e.g. `"bicubic"` or `"bilinear"`.
            mean, std: per-channel normalization constants.
            **kwargs: other constructor arguments (e.g. `data_format`).
        """
        image_size = _positive_int(image_size, "image_size")
        if not isinstance(crop_pct, numbers.Real) or not 0 < crop_pct <= 1:
            raise ValueError(f"crop_pct must be in (0, 1], got {crop_pct!r}.")
        return cls(
            size={"shortest_edge": int(image_size / crop_pct)},
            resample=interpolation,
            crop_size={"height": image_size, "width": image_size},
            image_mean=mean,
            image_std=std,
            **kwargs,
        )

    def to_keras_layer(self, **kwargs):
        """The equivalent `DeiTPreprocessing` layer (steps that are off are left out).

        Only bilinear and bicubic resampling have a Keras counterpart.
        `kwargs` go to the layer (e.g. `name`, `antialias`).
        """
        interpolation = {int(_Resampling.BILINEAR): "bilinear", int(_Resampling.BICUBIC): "bicubic"}
        if self.do_resize and self.resample not in interpolation:
            raise ValueError(
                "The Keras layer resizes with bilinear or bicubic interpolation only, "
                f"got resample={_Resampling(self.resample).name.lower()}."
            )
        from keras_deit.layers.preprocessing import DeiTPreprocessing

        return DeiTPreprocessing(
            size=self.size if self.do_resize else None,
            crop_size=self.crop_size if self.do_center_crop else None,
            rescale_factor=self.rescale_factor if self.do_rescale else None,
            image_mean=self.image_mean if self.do_normalize else None,
            image_std=self.image_std if self.do_normalize else None,
            interpolation=interpolation.get(self.resample, "bicubic"),
            **kwargs,
        )

    # -- serialisation -------------------------------------------------------

    def to_dict(self):
        """The `preprocessor_config.json` content as a dict.

        `data_format`, `input_data_format` and `do_convert_rgb` are written only
        when they differ from the defaults, so that transformers, whose default
        output layout is channels_first, reads the file with its own defaults.
        """
        config = dict(self.extra_config)
        config.update(
            {
                "do_resize": self.do_resize,
                "size": dict(self.size),
                "resample": self.resample,
                "do_center_crop": self.do_center_crop,
                "crop_size": dict(self.crop_size),
                "do_rescale": self.do_rescale,
                "rescale_factor": self.rescale_factor,
                "do_normalize": self.do_normalize,
                "image_mean": image_ops.copy_list(self.image_mean),
                "image_std": image_ops.copy_list(self.image_std),
                "image_processor_type": "DeiTImageProcessor",
            }
        )
        if self.do_convert_rgb is not None:
            config["do_convert_rgb"] = self.do_convert_rgb
        if self.data_format != "channels_last":
            config["data_format"] = self.data_format
        if self.input_data_format is not None:
            config["input_data_format"] = self.input_data_format
        return config

    @classmethod
    def from_dict(cls, config, **kwargs):
        """Builds a processor from a config dict (as in `preprocessor_config.json`).

        Accepts old hub configs (`"size": 256`, `"crop_size": 224`,
        `feature_extractor_type`). Keys this class does not use are kept in
        `extra_config`. `kwargs` override config values.
        """
        if not isinstance(config, dict):
            raise ValueError(f"config must be a dict, got {type(config).__name__}.")
        config = {**config, **kwargs}
        known = list(inspect.signature(DeiTImageProcessor.__init__).parameters)[1:]
        init_kwargs = {key: config.pop(key) for key in known if key in config}
        if "size" in init_kwargs and not isinstance(init_kwargs["size"], dict):
            # Old configs store an int; transformers reads it with default_to_square.
            init_kwargs["size"] = _size_dict(
                init_kwargs["size"], default_to_square=config.get("default_to_square", True)
            )
        config.pop("image_processor_type", None)
        processor = cls(**init_kwargs)
        processor.extra_config = config
        return processor

    @classmethod
    def from_json_file(cls, path):
        """Builds a processor from a `preprocessor_config.json` file."""
        return cls.from_dict(read_json_object(path, "preprocessor config"))

    def to_json_string(self):
        """`to_dict()` as indented JSON with sorted keys (transformers' layout)."""
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    def to_json_file(self, path):
        """Writes `to_json_string()` to `path`."""
        with atomic.replacing(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
            f.write(self.to_json_string())

    def save_pretrained(self, folder):
        """Writes `folder/preprocessor_config.json` (creating `folder`); returns `[path]`."""
        folder = os.fspath(folder)
        if os.path.isfile(folder):
            raise ValueError(f"save_pretrained expects a folder, got the file {folder!r}.")
        os.makedirs(folder, exist_ok=True)
        path = os.path.join(folder, CONFIG_NAME)
        self.to_json_file(path)
        return [path]

    @classmethod
    def from_pretrained(cls, source, **kwargs):
        """Loads a processor from a local folder holding `preprocessor_config.json`
        or from the path of such a JSON file. `kwargs` override config values.
        """
        path = os.fspath(source)
        if os.path.isdir(path):
            path = os.path.join(path, CONFIG_NAME)
            if not os.path.isfile(path):
                raise ValueError(f"No {CONFIG_NAME} in the folder {os.fspath(source)!r}.")
        elif not os.path.isfile(path):
            raise ValueError(
                f"from_pretrained got {source!r}, which is neither a local folder nor a "
                f"JSON file (Hugging Face Hub ids and presets are not supported here)."
            )
        return cls.from_dict(read_json_object(path, "preprocessor config"), **kwargs)

    def __repr__(self):
        return f"{type(self).__name__} {self.to_json_string()}"


class DeiTFeatureExtractor(DeiTImageProcessor):
    """Deprecated alias of `DeiTImageProcessor` (as in transformers); warns on construction."""

    def __init__(self, *args, **kwargs):
        warnings.warn(
            "DeiTFeatureExtractor is deprecated; use DeiTImageProcessor instead.",
            FutureWarning,
            stacklevel=2,
        )
        super().__init__(*args, **kwargs)
