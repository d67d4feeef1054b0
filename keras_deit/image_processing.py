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

from keras_deit import atomic
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
_RESAMPLE_BY_NAME = {
    "nearest": _Resampling.NEAREST,
    "lanczos": _Resampling.LANCZOS,
    "bilinear": _Resampling.BILINEAR,
    "bicubic": _Resampling.BICUBIC,
    "box": _Resampling.BOX,
    "hamming": _Resampling.HAMMING,
}
_DATA_FORMATS = ("channels_first", "channels_last")
_NUM_CHANNELS = (1, 3, 4)


# ---------------------------------------------------------------------------
# Argument normalisation
# ---------------------------------------------------------------------------


def _resample_int(resample):
    """PIL resampling filter as a plain int, from an int, a PIL enum or a name."""
    if isinstance(resample, str):
        if resample.lower() not in _RESAMPLE_BY_NAME:
            raise ValueError(
                f"resample must be one of {sorted(_RESAMPLE_BY_NAME)}, got {resample!r}."
            )
        return int(_RESAMPLE_BY_NAME[resample.lower()])
    try:
        return int(_Resampling(resample))
    except (ValueError, TypeError):
        raise ValueError(
            f"resample must be a PIL resampling filter (0-5) or a name, got {resample!r}."
        ) from None



def _copy_list(value):
    return list(value) if isinstance(value, list) else value


def _data_format(value, name, allow_none=False):
    value = getattr(value, "value", value)  # transformers' ChannelDimension enum
    if value is None and allow_none:
        return None
    if value not in _DATA_FORMATS:
        allowed = _DATA_FORMATS + ((None,) if allow_none else ())
        raise ValueError(f"{name} must be one of {allowed}, got {value!r}.")
    return value


# ---------------------------------------------------------------------------
# Image operations on (height, width, channels) NumPy arrays
# ---------------------------------------------------------------------------


def _to_hwc(image, input_data_format):
    """Returns a numeric (H, W, C) array from a 2-D, HWC or CHW array."""
    if image.dtype.kind not in "uif":
        raise ValueError(f"Images must hold integers or floats, got dtype {image.dtype}.")
    if image.ndim == 2:
        return image[..., None]
    if image.ndim != 3:
        raise ValueError(
            "An image array must have 2 (H, W) or 3 (H, W, C) / (C, H, W) dimensions, "
            f"got shape {image.shape}."
        )
    if input_data_format is None:
        # Same rule as transformers: when both ends could be channels, channels first wins.
        if image.shape[0] in _NUM_CHANNELS:
            input_data_format = "channels_first"
        elif image.shape[-1] in _NUM_CHANNELS:
            input_data_format = "channels_last"
        else:
            raise ValueError(
                "Images must have 1, 3 or 4 channels on their first or last axis, "
                f"got shape {image.shape}."
            )
    image = np.moveaxis(image, 0, -1) if input_data_format == "channels_first" else image
    if image.shape[-1] not in _NUM_CHANNELS:
        raise ValueError(
            f"Images must have 1, 3 or 4 channels, got {image.shape[-1]} "
            f"({input_data_format} image of shape {image.shape})."
        )
    return image


# Pillow modes with more than 8 bits per sample. `convert("RGB")` clips them at 255 instead of
# scaling (a 16-bit photo turns white, a [0, 1] float image black), so they are scaled here to
# the 8 bits a viewer shows: 16-bit (and 32-bit int, which Pillow uses for 16-bit data) by
# 65535 / 255, float as [0, 1] intensities, the convention of float image files.
_WIDE_INT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")


def _wide_to_gray8(image):
    """An 8-bit "L" image from a 16-bit, 32-bit int or float one, scaled (rounded) and clipped."""
    values = np.asarray(image)
    if image.mode == "F":
        values = np.nan_to_num(values.astype(np.float64), nan=0.0, posinf=1.0, neginf=0.0)
        scaled = np.clip(values, 0.0, 1.0) * 255.0
    else:
        scaled = np.clip(values.astype(np.float64), 0, 65535) / 257.0
    return PIL.Image.fromarray(np.round(scaled).astype(np.uint8), "L")


def _pil_to_rgb(image):
    """RGB array (H, W, 3) uint8 from any PIL image, as an image viewer shows it.

    16-bit, 32-bit int and float samples are scaled to 8 bits (see `_WIDE_INT_MODES`), not
    clipped; transparency is composited on white (what transformers does, instead of
    dropping alpha); palette, CMYK and the other 8-bit modes go through Pillow's conversion.
    """
    if image.mode in _WIDE_INT_MODES or image.mode == "F":
        image = _wide_to_gray8(image)
    if "A" in image.getbands() or image.info.get("transparency") is not None:
        rgba = image.convert("RGBA")
        white = PIL.Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = PIL.Image.alpha_composite(white, rgba)
    return np.asarray(image.convert("RGB"))


def load_image(path):
    """The image file at `path` as an RGB PIL image, the 8-bit picture a viewer shows (first
    frame of an animation; 16-bit and float files scaled; transparency on white).

    Raises:
        FileNotFoundError: no such file.
        ValueError: a folder, not an image, or larger than Pillow's decompression-bomb limit;
            one line naming the path and the fix.
    """
    if os.path.isdir(path):
        raise ValueError(f"{path} is a folder, not an image: pass the image files in it "
                         f"(e.g. {os.path.join(path, '*.png')}).")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no such image: {path}")
    try:
        with warnings.catch_warnings():
            # Pillow only warns between its limit and twice it: refuse both alike.
            warnings.simplefilter("error", PIL.Image.DecompressionBombWarning)
            with PIL.Image.open(path) as image:
                image.seek(0)
                return PIL.Image.fromarray(_pil_to_rgb(image), "RGB")
    except (PIL.Image.DecompressionBombError, PIL.Image.DecompressionBombWarning):
        raise ValueError(
            f"{path} is refused: its size exceeds Pillow's limit of "
            f"{PIL.Image.MAX_IMAGE_PIXELS} pixels (a decompression bomb, or a picture far larger "
            "than any model input); downscale it first, or raise PIL.Image.MAX_IMAGE_PIXELS if "
            "you trust the file."
        ) from None
    except (PIL.UnidentifiedImageError, OSError, ValueError, EOFError) as e:
        reason = " ".join(str(e).split()) or type(e).__name__
        raise ValueError(f"cannot read {path} as an image ({reason})") from None


def _array_to_rgb(image):
    """(H, W, 3) from (H, W, 1|3|4); transparency is composited on white, as transformers does."""
    channels = image.shape[-1]
    if channels == 1:
        return np.repeat(image, 3, axis=-1)
    if channels == 3:
        return image
    if np.issubdtype(image.dtype, np.floating) and (image.min() < 0.0 or image.max() > 1.0):
        raise ValueError(
            "A float RGBA image must hold values in [0, 1] to be composited on white, "
            f"got [{image.min()}, {image.max()}]."
        )
    white = 255 if np.issubdtype(image.dtype, np.integer) else 1.0
    alpha = image[..., 3:4] / white
    rgb = alpha * image[..., :3] + (1 - alpha) * white
    return np.round(rgb).astype(image.dtype) if white == 255 else rgb.astype(image.dtype)



def _pil_resize(image, height, width, resample):
    """Resizes an (H, W, C) array with Pillow, quantising to uint8 like transformers.

    Pillow only resizes 8-bit images here, so, like transformers, float images
    in [0, 1] are scaled to [0, 255], truncated to uint8, resized and scaled
    back to [0, 1] (float32); other images must already hold integers in [0, 255].
    """
    back_to_unit_range = False
    if image.dtype != np.uint8:
        if np.allclose(image, image.astype(int)):
            if image.min() < 0 or image.max() > 255:
                raise ValueError(
                    "An integer-valued image must lie in [0, 255] to be resized, "
                    f"got [{image.min()}, {image.max()}]."
                )
        elif image.min() >= 0 and image.max() <= 1:
            back_to_unit_range = True
            # float32 before uint8 matters: it can round x * 255 up to the next integer.
            image = (image.astype(np.float64) * 255).astype(np.float32)
        else:
            raise ValueError(
                "A float image must lie in [0, 1] or hold integers in [0, 255] to be "
                f"resized, got [{image.min()}, {image.max()}]."
            )
        image = image.astype(np.uint8)
    pil_image = PIL.Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image)
    resized = np.asarray(pil_image.resize((width, height), resample=resample))
    resized = resized[..., None] if resized.ndim == 2 else resized
    if back_to_unit_range:
        resized = (resized.astype(np.float64) * (1 / 255)).astype(np.float32)
    return resized


def _center_crop(image, height, width):
    """Center crop of an (H, W, C) array to (height, width, C), zero-padding small images.

    Padding puts the extra row/column (odd difference) at the top/left, and the
    crop offset is floored, exactly as transformers' `center_crop`.
    """
    pad_h = max(height - image.shape[0], 0)
    pad_w = max(width - image.shape[1], 0)
    if pad_h or pad_w:
        image = np.pad(
            image,
            (((pad_h + 1) // 2, pad_h // 2), ((pad_w + 1) // 2, pad_w // 2), (0, 0)),
        )
    top = (image.shape[0] - height) // 2
    left = (image.shape[1] - width) // 2
    return image[top : top + height, left : left + width]


def _rescale(image, factor):
    # float64 then float32: the rounding transformers applies.
    return (image.astype(np.float64) * factor).astype(np.float32)


def _normalize(image, mean, std):
    channels = image.shape[-1]
    if not np.issubdtype(image.dtype, np.floating):
        image = image.astype(np.float32)
    arrays = []
    for value, name in ((mean, "image_mean"), (std, "image_std")):
        values = [value] * channels if isinstance(value, float) else value
        if len(values) != channels:
            raise ValueError(
                f"{name} has {len(values)} values but the image has {channels} channels "
                "(set do_convert_rgb to get 3-channel images)."
            )
        arrays.append(np.asarray(values, dtype=image.dtype))
    return (image - arrays[0]) / arrays[1]


def _as_image_list(images):
    """A non-empty list of PIL images / NumPy arrays from one image, a list or a 4-D batch."""
    if isinstance(images, (list, tuple)):
        if not images:
            raise ValueError("Expected at least one image, got an empty list.")
        items = list(images)
    elif isinstance(images, PIL.Image.Image):
        items = [images]
    elif hasattr(images, "__array__") and not isinstance(images, (str, bytes)):
        array = np.asarray(images)
        if array.ndim == 4:
            items = list(array)
        else:
            items = [array]
    else:
        raise ValueError(
            "images must be a PIL image, a NumPy array (H, W), (H, W, C), (C, H, W) or "
            f"(N, H, W, C) / (N, C, H, W), or a list of them; got {type(images).__name__}."
        )
    for i, item in enumerate(items):
        if isinstance(item, PIL.Image.Image):
            continue
        if not hasattr(item, "__array__") or isinstance(item, (str, bytes, list, tuple)):
            raise ValueError(
                f"Image {i} must be a PIL image or a NumPy array, got {type(item).__name__}."
            )
        items[i] = np.asarray(item)
    return items


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
        self.resample = _resample_int(resample)
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
        self.data_format = _data_format(data_format, "data_format")
        self.input_data_format = _data_format(
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
        processed = [processor._process_one(image) for image in _as_image_list(images)]
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
            image = _pil_to_rgb(image) if convert else _to_hwc(np.asarray(image), "channels_last")
        else:
            image = _to_hwc(image, self.input_data_format)
            convert = self.do_convert_rgb or (self.do_convert_rgb is None and image.shape[-1] != 3)
            image = _array_to_rgb(image) if convert else image

        if self.do_resize:
            height, width = _resize_output_size(image.shape[0], image.shape[1], self.size)
            image = _pil_resize(image, height, width, self.resample)
        if self.do_center_crop:
            image = _center_crop(image, self.crop_size["height"], self.crop_size["width"])
        if self.do_rescale:
            image = _rescale(image, self.rescale_factor)
        if self.do_normalize:
            image = _normalize(image, self.image_mean, self.image_std)

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
        resized = _pil_resize(image, height, width, _resample_int(resample))
        return self._in_layout(resized, data_format, layout)

    def center_crop(self, image, size, data_format=None, input_data_format=None):
        """Crops one image to `size` ({"height", "width"}, an int or a pair) around its
        center, zero-padding it first where it is smaller (extra row / column top / left)."""
        image, layout = self._layout_of(image, input_data_format)
        size = _size_dict(size, allow_shortest_edge=False)
        cropped = _center_crop(image, size["height"], size["width"])
        return self._in_layout(cropped, data_format, layout)

    def rescale(self, image, scale, data_format=None, input_data_format=None):
        """`image * scale` as float32 (computed in float64, as transformers)."""
        image, layout = self._layout_of(image, input_data_format)
        return self._in_layout(_rescale(image, float(scale)), data_format, layout)

    def normalize(self, image, mean, std, data_format=None, input_data_format=None):
        """`(image - mean) / std` per channel; integer images become float32, float images
        keep their dtype."""
        image, layout = self._layout_of(image, input_data_format)
        normalized = _normalize(image, _mean_or_std(mean, "mean"), _mean_or_std(std, "std"))
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
        layout = _data_format(input_data_format, "input_data_format", allow_none=True)
        if layout is None:
            layout = "channels_first" if image.shape[0] in _NUM_CHANNELS else "channels_last"
        return _to_hwc(image, layout), layout

    @staticmethod
    def _in_layout(image, data_format, input_layout):
        """An (H, W, C) result in `data_format`, or in the input's layout when it is None."""
        layout = _data_format(data_format, "data_format", allow_none=True) or input_layout
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
                "image_mean": _copy_list(self.image_mean),
                "image_std": _copy_list(self.image_std),
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
