"""`DeiTPreprocessing`: DeiT's resize, center crop, rescale and normalize as a Keras layer."""

import keras

from keras_deit.keras_internals import DataLayer
from keras_deit.preprocessing_spec import (
    IMAGENET_STANDARD_MEAN,
    IMAGENET_STANDARD_STD,
    _mean_or_std,
    _resize_output_size,
    _size_dict,
)


def _nonneg(value, backend):
    # Python ints stay ints so that jax/torch see static shapes; TF graph
    # tensors (unknown height/width) go through the backend's ops.
    return max(value, 0) if isinstance(value, int) else backend.numpy.maximum(value, 0)


@keras.saving.register_keras_serializable(package="keras_deit")
class DeiTPreprocessing(DataLayer):
    """DeiT preprocessing inside a Keras model: resize, center crop, rescale, normalize.

    Input: `(batch, height, width, 3)` or one `(height, width, 3)` uint8 or
    float image; height and width may vary between calls (or be `None` in
    `keras.Input`), except that `{"shortest_edge"}` resizing inside a
    TensorFlow graph (e.g. `model.predict` on the TensorFlow backend) needs
    them to be known. Output: float32 `(batch, crop_height, crop_width, 3)`
    (or `(crop_height, crop_width, 3)`).

    Like Keras' own preprocessing layers it runs inside `tf.data` (`map`,
    before or after `batch`) on every backend: there it computes with
    TensorFlow ops.

    Resizing uses `keras.ops.image.resize` (with antialiasing by default,
    as Pillow does when shrinking), so it is close to `DeiTImageProcessor`
    but not bit-identical with Pillow: the kernels and rounding differ
    slightly per backend. Integer inputs are rounded and clipped to
    [0, 255] after resizing, as Pillow's uint8 output is. When the input
    already has the target size, the resize is skipped and the output
    matches the processor to float32 rounding. Images smaller than the crop
    are zero-padded (before rescaling), like the processor.

    Args:
        size: `{"height", "width"}`, `{"shortest_edge"}`, an int (square) or
            `(height, width)`; `None` skips resizing. Default 256x256.
        crop_size: `{"height", "width"}`, an int or a pair; `None` skips
            cropping. Default 224x224.
        rescale_factor: multiplier applied after cropping; `None` skips it.
        image_mean, image_std: per-channel normalization; both `None` skip it.
        interpolation: `"bilinear"` or `"bicubic"`.
        antialias: antialias when shrinking (Pillow always does).
    """

    def __init__(
        self,
        size=(256, 256),
        crop_size=(224, 224),
        rescale_factor=1 / 255,
        image_mean=IMAGENET_STANDARD_MEAN,
        image_std=IMAGENET_STANDARD_STD,
        interpolation="bicubic",
        antialias=True,
        **kwargs,
    ):
        # The output is float32 whatever the global (e.g. mixed) policy.
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        self.size = None if size is None else _size_dict(size)
        self.crop_size = (
            None if crop_size is None
            else _size_dict(crop_size, name="crop_size", allow_shortest_edge=False)
        )
        self.rescale_factor = None if rescale_factor is None else float(rescale_factor)
        if (image_mean is None) != (image_std is None):
            raise ValueError(
                "image_mean and image_std must both be set or both be None, got "
                f"image_mean={image_mean!r}, image_std={image_std!r}."
            )
        self.image_mean = None if image_mean is None else _mean_or_std(image_mean, "image_mean")
        self.image_std = None if image_std is None else _mean_or_std(image_std, "image_std")
        if interpolation not in ("bilinear", "bicubic"):
            raise ValueError(
                f"interpolation must be 'bilinear' or 'bicubic', got {interpolation!r}."
            )
        self.interpolation = interpolation
        self.antialias = bool(antialias)

    def __call__(self, images, **kwargs):
        # Inside tf.data Keras' DataLayer casts the input to float32 before `call`: the
        # rounding rule of integer images is decided on the input as given.
        dtype = getattr(images, "dtype", None)
        if dtype is not None:
            kwargs.setdefault("integer_input", "int" in keras.backend.standardize_dtype(dtype))
        return super().__call__(images, **kwargs)

    def call(self, images, integer_input=None):
        b = self.backend
        if len(images.shape) not in (3, 4):
            raise ValueError(
                f"DeiTPreprocessing expects (batch, height, width, channels) images or one "
                f"(height, width, channels) image, got shape {tuple(images.shape)}."
            )
        if len(images.shape) == 3:
            return self._preprocess(b.numpy.expand_dims(images, 0), integer_input)[0]
        return self._preprocess(images, integer_input)

    def _preprocess(self, images, integer_input):
        """`call` on a (batch, height, width, channels) batch."""
        b = self.backend
        is_integer = integer_input
        if is_integer is None:
            is_integer = "int" in keras.backend.standardize_dtype(images.dtype)
        x = b.cast(images, "float32")
        if self.size is not None:
            x = self._resize(x, is_integer)
        if self.crop_size is not None:
            x = self._center_crop(x)
        if self.rescale_factor is not None:
            x = x * self.rescale_factor
        if self.image_mean is not None:
            mean = b.convert_to_tensor(self.image_mean, "float32")
            std = b.convert_to_tensor(self.image_std, "float32")
            x = (x - mean) / std
        return x

    def _resize(self, x, is_integer):
        b = self.backend
        shape = b.shape(x)
        height, width = shape[1], shape[2]
        if "shortest_edge" in self.size:
            if not (isinstance(height, int) and isinstance(width, int)):
                # keras.ops.image.resize needs a concrete output size, which a
                # TensorFlow graph with unknown height/width cannot provide.
                raise ValueError(
                    "DeiTPreprocessing with size={'shortest_edge': ...} needs a known "
                    f"height and width, got image shape {tuple(x.shape)} in a TensorFlow "
                    "graph. Use a fixed input shape, eager execution or a "
                    "{'height', 'width'} size."
                )
            target = _resize_output_size(height, width, self.size)
        else:
            target = (self.size["height"], self.size["width"])
        if isinstance(height, int) and isinstance(width, int) and (height, width) == target:
            return x
        x = b.image.resize(
            x, target, interpolation=self.interpolation, antialias=self.antialias
        )
        if is_integer:
            x = b.numpy.clip(b.numpy.round(x), 0.0, 255.0)
        return x

    def _center_crop(self, x):
        b = self.backend
        shape = b.shape(x)
        crop_h, crop_w = self.crop_size["height"], self.crop_size["width"]
        pad_h, pad_w = _nonneg(crop_h - shape[1], b), _nonneg(crop_w - shape[2], b)
        if not (isinstance(pad_h, int) and isinstance(pad_w, int) and pad_h == pad_w == 0):
            # Extra row/column at the top/left, as the processor (transformers) pads.
            pad_height = [(pad_h + 1) // 2, pad_h // 2]
            pad_width = [(pad_w + 1) // 2, pad_w // 2]
            x = b.numpy.pad(x, [[0, 0], pad_height, pad_width, [0, 0]])
        top = (shape[1] + pad_h - crop_h) // 2
        left = (shape[2] + pad_w - crop_w) // 2
        return x[:, top : top + crop_h, left : left + crop_w, :]

    def compute_output_shape(self, input_shape):
        if len(input_shape) == 3:
            return self.compute_output_shape((None, *input_shape))[1:]
        batch, height, width, channels = input_shape
        if self.crop_size is not None:
            return (batch, self.crop_size["height"], self.crop_size["width"], channels)
        if self.size is None:
            return (batch, height, width, channels)
        if "shortest_edge" in self.size and (height is None or width is None):
            return (batch, None, None, channels)
        height, width = _resize_output_size(height, width, self.size)
        return (batch, height, width, channels)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "size": self.size,
                "crop_size": self.crop_size,
                "rescale_factor": self.rescale_factor,
                "image_mean": self.image_mean,
                "image_std": self.image_std,
                "interpolation": self.interpolation,
                "antialias": self.antialias,
            }
        )
        return config
