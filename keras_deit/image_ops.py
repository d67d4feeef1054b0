"""The NumPy and Pillow operations of `DeiTImageProcessor`, one function each: reading an
image file, converting to RGB and to (height, width, channels), resizing with Pillow, center
cropping (zero padding), rescaling and normalizing; and the checks of their arguments.

Like the processor, this module imports no deep-learning framework.
"""

import os
import warnings

import numpy as np
import PIL.Image

_Resampling = PIL.Image.Resampling
RESAMPLE_BY_NAME = {
    "nearest": _Resampling.NEAREST,
    "lanczos": _Resampling.LANCZOS,
    "bilinear": _Resampling.BILINEAR,
    "bicubic": _Resampling.BICUBIC,
    "box": _Resampling.BOX,
    "hamming": _Resampling.HAMMING,
}
DATA_FORMATS = ("channels_first", "channels_last")
NUM_CHANNELS = (1, 3, 4)


# ---------------------------------------------------------------------------
# Argument normalisation
# ---------------------------------------------------------------------------


def resample_int(resample):
    """PIL resampling filter as a plain int, from an int, a PIL enum or a name."""
    if isinstance(resample, str):
        if resample.lower() not in RESAMPLE_BY_NAME:
            raise ValueError(
                f"resample must be one of {sorted(RESAMPLE_BY_NAME)}, got {resample!r}."
            )
        return int(RESAMPLE_BY_NAME[resample.lower()])
    try:
        return int(_Resampling(resample))
    except (ValueError, TypeError):
        raise ValueError(
            f"resample must be a PIL resampling filter (0-5) or a name, got {resample!r}."
        ) from None



def copy_list(value):
    return list(value) if isinstance(value, list) else value


def data_format_arg(value, name, allow_none=False):
    value = getattr(value, "value", value)  # transformers' ChannelDimension enum
    if value is None and allow_none:
        return None
    if value not in DATA_FORMATS:
        allowed = DATA_FORMATS + ((None,) if allow_none else ())
        raise ValueError(f"{name} must be one of {allowed}, got {value!r}.")
    return value


# ---------------------------------------------------------------------------
# Image operations on (height, width, channels) NumPy arrays
# ---------------------------------------------------------------------------


def to_hwc(image, input_data_format):
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
        if image.shape[0] in NUM_CHANNELS:
            input_data_format = "channels_first"
        elif image.shape[-1] in NUM_CHANNELS:
            input_data_format = "channels_last"
        else:
            raise ValueError(
                "Images must have 1, 3 or 4 channels on their first or last axis, "
                f"got shape {image.shape}."
            )
    image = np.moveaxis(image, 0, -1) if input_data_format == "channels_first" else image
    if image.shape[-1] not in NUM_CHANNELS:
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


def pil_to_rgb(image):
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
                return PIL.Image.fromarray(pil_to_rgb(image), "RGB")
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


def array_to_rgb(image):
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



def pil_resize(image, height, width, resample):
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


def center_crop(image, height, width):
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


def rescale(image, factor):
    # float64 then float32: the rounding transformers applies.
    return (image.astype(np.float64) * factor).astype(np.float32)


def normalize(image, mean, std):
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


def as_image_list(images):
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
