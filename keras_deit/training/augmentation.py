"""The data side of DeiT's recipe (facebookresearch/deit `main.py`, timm's transforms), usable
inside `tf.data` on every backend.

| deit / timm                                 | here                                              |
|---|---|
| `RandomResizedCropAndInterpolation` bicubic | `crop_window` + `pil_bicubic` (`RandomResizedCrop`)|
| horizontal flip 0.5                         | `DeiTImageTransform`                              |
| `rand-m9-mstd0.5-inc1`                      | `rand_augment` (timm's, op for op)                |
| `RandomErasing(0.25, mode="pixel")`         | `erase_box` + `erase` (`RandomErasing`)           |
| `Mixup` (mixup 0.8, cutmix 1.0, switch 0.5, smoothing 0.1) | `MixupCutmix`                      |
| `RASampler` (3 repeats)                     | `keras_deit.training.image_folder.repeated_sample_indices`, |
|                                             | `repeated_augmentation` (tf.data, in memory)      |

The layers are Keras `DataLayer`s: inside `tf.data` they run with TensorFlow ops whatever the
backend, and their randomness comes from a `keras.random.SeedGenerator`; `DeiTImageTransform`
draws statelessly from a seed per image. The defaults come from
`keras_deit.training.recipe.DEIT_MAIN_DEFAULTS`.
"""

import math

import keras
import numpy as np

from keras_deit.keras_internals import DataLayer, tensorflow_ops  # Keras internals
from keras_deit.training.recipe import DEIT_MAIN_DEFAULTS

# The ops namespace of TensorFlow whatever the backend: tf.data runs TensorFlow ops.
TF = tensorflow_ops()

# torchvision's RandomResizedCrop: attempts before falling back to a centre crop.
CROP_ATTEMPTS = 10


def _check_range(value, name, low=None, high=None):
    if (not isinstance(value, (tuple, list)) or len(value) != 2
            or not all(isinstance(v, (int, float)) for v in value) or value[0] > value[1]
            or (low is not None and value[0] < low) or (high is not None and value[1] > high)):
        raise ValueError(f"`{name}` must be two increasing numbers"
                         f"{'' if low is None else f' in [{low}, {high}]'}. "
                         f"Received: {name}={value!r}")
    return tuple(float(v) for v in value)


def crop_window(b, height, width, draws, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)):
    """torchvision's `RandomResizedCrop.get_params` from uniform draws, any batch shape.

    Up to 10 tries of an area fraction U(scale) and a log-uniform aspect ratio in `ratio`:
    w = round(sqrt(area * r)), h = round(sqrt(area / r)); the first with 0 < w <= width and
    0 < h <= height is cut at uniform integer offsets; if none fits, the centre crop of the
    whole image with its ratio clamped to `ratio`.

    Args:
        b: the ops namespace (a layer's `self.backend`, or `TF` inside tf.data).
        height, width: float32 image sides, shape (...).
        draws: (..., 2 * CROP_ATTEMPTS + 2) uniforms in [0, 1).
    Returns:
        (top, left, crop_height, crop_width), int32, each of shape (...).
    """
    height, width = b.cast(height, "float32"), b.cast(width, "float32")
    draws = b.convert_to_tensor(draws, "float32")
    tries = draws[..., :CROP_ATTEMPTS]
    area = (height * width)[..., None] * (scale[0] + (scale[1] - scale[0]) * tries)
    low, high = math.log(ratio[0]), math.log(ratio[1])
    aspect = b.numpy.exp(low + (high - low) * draws[..., CROP_ATTEMPTS:2 * CROP_ATTEMPTS])
    w = b.numpy.round(b.numpy.sqrt(area * aspect))
    h = b.numpy.round(b.numpy.sqrt(area / aspect))
    fits = (w > 0) & (w <= width[..., None]) & (h > 0) & (h <= height[..., None])
    first = b.numpy.argmax(b.cast(fits, "int32"), axis=-1)  # 0 when nothing fits
    pick = b.nn.one_hot(first, CROP_ATTEMPTS, dtype="float32")
    w, h = b.numpy.sum(w * pick, axis=-1), b.numpy.sum(h * pick, axis=-1)
    any_fits = b.numpy.any(fits, axis=-1)
    # torchvision's fallback: the whole image, cut to the nearest allowed ratio.
    in_ratio = width / height
    fallback_w = b.numpy.where(in_ratio > ratio[1], b.numpy.round(height * ratio[1]), width)
    fallback_h = b.numpy.where(in_ratio < ratio[0], b.numpy.round(width / ratio[0]), height)
    w = b.numpy.where(any_fits, w, fallback_w)
    h = b.numpy.where(any_fits, h, fallback_h)
    offsets = draws[..., 2 * CROP_ATTEMPTS:]
    top = b.numpy.floor(b.numpy.where(any_fits, offsets[..., 0] * (height - h + 1),
                                      (height - h) / 2))
    left = b.numpy.floor(b.numpy.where(any_fits, offsets[..., 1] * (width - w + 1),
                                       (width - w) / 2))
    return tuple(b.cast(v, "int32") for v in (top, left, h, w))


def pil_bicubic(b, image, height, width):
    """(batch, H, W, C) float in [0, 255] -> (batch, height, width, C) as PIL's bicubic resize:
    the Keys kernel with a = -0.5, widened by the reduction factor when shrinking
    (antialiased; TF's, JAX's and PyTorch's antialiased bicubic are this filter), clipped to
    [0, 255]. Different: PIL resizes the width first and rounds to uint8 before the height
    (one pass here, twice as fast: a level or two apart on photographs, more where the
    kernel's overshoot at hard edges is clipped), and rounds the output (the fraction kept)."""
    image = b.image.resize(image, (height, width), interpolation="bicubic", antialias=True)
    return b.numpy.clip(image, 0.0, 255.0)


@keras.saving.register_keras_serializable(package="keras_deit")
class RandomResizedCrop(DataLayer):
    """A random crop of random area and aspect ratio, resized bicubically (torchvision's
    `RandomResizedCrop` as timm uses it on PIL images): `crop_window`, then `pil_bicubic`.

    Same as deit on the window; the resize differs from PIL's only by PIL's rounding to uint8
    (and float rounding). A batch of images is cropped image by image, so its size must be
    known (in tf.data, map this layer over single images, as deit does).

    Args:
        height, width: ints, the output size.
        scale: (min, max) fraction of the image area (deit: (0.08, 1.0)).
        ratio: (min, max) aspect ratio width / height (deit: (3/4, 4/3)).
        value_range: (min, max) of the pixel values; (0, 255) (PIL's range, for the clip).
        seed: optional int.

    Inputs: (batch, H, W, C) or (H, W, C), channels last, any float or int dtype.
    Outputs: (batch, height, width, C) or (height, width, C), the layer's compute dtype.
    """

    def __init__(self, height, width, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3),
                 value_range=(0, 255), seed=None, **kwargs):
        super().__init__(**kwargs)
        for name, value in (("height", height), ("width", width)):
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"`{name}` must be a positive int. Received: {name}={value!r}")
        self.height, self.width = height, width
        self.scale = _check_range(scale, "scale", 0.0, 1.0)
        self.ratio = _check_range(ratio, "ratio")
        if self.ratio[0] <= 0:
            raise ValueError(f"`ratio` must be positive. Received: ratio={ratio!r}")
        self.value_range = _check_range(value_range, "value_range")
        if self.value_range != (0.0, 255.0):
            raise ValueError(f"`value_range` must be (0, 255), PIL's. Received: "
                             f"value_range={value_range!r}; rescale after the crop.")
        self.seed = seed
        self.generator = keras.random.SeedGenerator(seed)

    def call(self, images):
        b = self.backend
        images = b.cast(images, self.compute_dtype)
        if len(images.shape) == 3:
            return self._crop_one(images, self._draws(()))
        if not isinstance(images.shape[0], int):
            raise ValueError("RandomResizedCrop needs a known batch size. Received: images of "
                             f"shape {tuple(images.shape)}; map it over single images.")
        draws = self._draws((images.shape[0],))
        return b.numpy.stack([self._crop_one(images[i], draws[i])
                              for i in range(images.shape[0])])

    def _draws(self, shape):
        seed = self._get_seed_generator(self.backend._backend)
        return self.backend.random.uniform((*shape, 2 * CROP_ATTEMPTS + 2), seed=seed)

    def _crop_one(self, image, draws):
        b = self.backend
        shape = b.shape(image)
        top, left, h, w = crop_window(b, shape[0], shape[1], draws, self.scale, self.ratio)
        window = image[None, top:top + h, left:left + w]
        return b.cast(pil_bicubic(b, window, self.height, self.width)[0], self.compute_dtype)

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-3], self.height, self.width, input_shape[-1])

    def get_config(self):
        config = super().get_config()
        config.update(height=self.height, width=self.width, scale=self.scale, ratio=self.ratio,
                      value_range=self.value_range, seed=self.seed)
        return config


def rand_augment(magnitude=9, magnitude_std=0.5, num_ops=2, seed=None):
    """timm's `rand-m{magnitude}-mstd{magnitude_std}-n{num_ops}-inc1` (deit's `--aa`): a
    `keras_deit.training.rand_augment.RandAugment`, TensorFlow ops (imported here, when called).

    On single uint8 (H, W, 3) images, before normalisation, eagerly or in `tf.data.map`: per
    image `num_ops` of timm's 15 ops drawn with replacement, each run with probability 0.5 at a
    magnitude ~ N(magnitude, magnitude_std) clipped to [0, 10], with a random sign.
    """
    from keras_deit.training.rand_augment import RandAugment

    return RandAugment(magnitude, magnitude_std, num_ops, seed)


def rand_augment_op(images, name, magnitude, sign=1):
    """One of timm's RandAugment ops on uint8 (H, W, 3) or (batch, H, W, 3) images:
    `keras_deit.training.rand_augment.rand_augment_op` (TensorFlow ops, imported here, when called)."""
    from keras_deit.training.rand_augment import rand_augment_op as run_op

    return run_op(images, name, magnitude, sign)


# timm's RandomErasing: tries to fit a rectangle, its area and aspect ratio ranges.
ERASE_ATTEMPTS = 10
ERASE_AREA = (0.02, 1 / 3)
ERASE_LOG_ASPECT = (math.log(0.3), math.log(1 / 0.3))


def erase_box(b, height, width, draws):
    """timm's `RandomErasing` rectangle from uniform draws, any batch shape.

    Up to 10 tries of an area U(0.02, 1/3) of the image and a log-uniform aspect ratio in
    (0.3, 1/0.3): h = round(sqrt(area * ar)), w = round(sqrt(area / ar)); the first with
    w < width and h < height is placed at uniform integer top/left; none fits: no box.

    Args:
        b: the ops namespace.
        height, width: the image sides (python numbers or float32 tensors).
        draws: (..., 2 * ERASE_ATTEMPTS + 2) uniforms in [0, 1).
    Returns:
        (top, left, box_height, box_width), float32 of shape (...); height 0 when none fits.
    """
    height, width = b.cast(height, "float32"), b.cast(width, "float32")
    area = height * width * (ERASE_AREA[0] + (ERASE_AREA[1] - ERASE_AREA[0])
                             * draws[..., :ERASE_ATTEMPTS])
    low, high = ERASE_LOG_ASPECT
    aspect = b.numpy.exp(low + (high - low) * draws[..., ERASE_ATTEMPTS:2 * ERASE_ATTEMPTS])
    h = b.numpy.round(b.numpy.sqrt(area * aspect))
    w = b.numpy.round(b.numpy.sqrt(area / aspect))
    fits = (w < width) & (h < height)
    pick = b.nn.one_hot(b.numpy.argmax(b.cast(fits, "int32"), axis=-1), ERASE_ATTEMPTS,
                        dtype="float32")
    any_fits = b.cast(b.numpy.any(fits, axis=-1), "float32")
    h, w = b.numpy.sum(h * pick, axis=-1) * any_fits, b.numpy.sum(w * pick, axis=-1)
    # random.randint(0, side - box) is inclusive of both ends.
    top = b.numpy.floor(draws[..., 2 * ERASE_ATTEMPTS] * (height - h + 1))
    left = b.numpy.floor(draws[..., 2 * ERASE_ATTEMPTS + 1] * (width - w + 1))
    return top, left, h, w


@keras.saving.register_keras_serializable(package="keras_deit")
class RandomErasing(DataLayer):
    """timm's `RandomErasing(probability, mode="pixel", max_count=1)`, as deit uses it after
    normalisation: with `probability` per image, one `erase_box` rectangle filled with
    unclipped per-pixel, per-channel N(0, 1) noise.

    Args:
        probability: float in [0, 1] (deit: 0.25).
        seed: optional int.

    Inputs: (batch, H, W, C) or (H, W, C) float images. Outputs: the same shape and dtype.
    """

    def __init__(self, probability=DEIT_MAIN_DEFAULTS["reprob"], seed=None, **kwargs):
        super().__init__(**kwargs)
        if not isinstance(probability, (int, float)) or not 0.0 <= probability <= 1.0:
            raise ValueError(f"`probability` must be in [0, 1]. Received: "
                             f"probability={probability!r}")
        self.probability = float(probability)
        self.seed = seed
        self.generator = keras.random.SeedGenerator(seed)

    def call(self, images):
        b = self.backend
        images = b.cast(images, self.compute_dtype)
        seed = self._get_seed_generator(b._backend)
        shape = b.shape(images)
        batch = () if len(images.shape) == 3 else (shape[0],)
        draws = b.random.uniform((*batch, 2 * ERASE_ATTEMPTS + 3), seed=seed)
        noise = b.random.normal(shape, seed=seed, dtype=self.compute_dtype)
        return erase(b, images, draws, noise, self.probability)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(probability=self.probability, seed=self.seed)
        return config


def erase(b, images, draws, noise, probability):
    """`images` (..., H, W, C) with an `erase_box` of `noise` where draws[..., -1] <
    `probability`; draws: (..., 2 * ERASE_ATTEMPTS + 3) uniforms."""
    shape = b.shape(images)
    top, left, h, w = erase_box(b, shape[-3], shape[-2], draws)
    h = b.numpy.where(draws[..., -1] < probability, h, 0.0)
    ys = b.cast(b.numpy.arange(shape[-3]), "float32")
    xs = b.cast(b.numpy.arange(shape[-2]), "float32")
    inside_y = (ys >= top[..., None]) & (ys < (top + h)[..., None])  # (..., H)
    inside_x = (xs >= left[..., None]) & (xs < (left + w)[..., None])  # (..., W)
    mask = inside_y[..., :, None, None] & inside_x[..., None, :, None]
    return b.numpy.where(mask, b.cast(noise, images.dtype), images)


def random_erasing(probability=DEIT_MAIN_DEFAULTS["reprob"], seed=None):
    """deit's `RandomErasing(0.25, mode="pixel", max_count=1)`: a `RandomErasing` layer."""
    return RandomErasing(probability, seed=seed)


def smooth_labels(labels, num_classes, smoothing, backend=keras.ops):
    """timm's `one_hot` with smoothing: off = smoothing / num_classes, on = 1 - smoothing + off.

    Args:
        labels: (batch,) integer class ids.
    Returns:
        (batch, num_classes) float32 rows summing to 1.
    """
    off = smoothing / num_classes
    one_hot = backend.nn.one_hot(backend.cast(labels, "int32"), num_classes, dtype="float32")
    return one_hot * (1.0 - smoothing) + off


@keras.saving.register_keras_serializable(package="keras_deit")
class MixupCutmix(DataLayer):
    """timm's `Mixup` as deit sets it up (mode "batch", prob 1.0), on a batch dict.

    Per batch: with probability `switch_prob` cutmix (a box of area fraction 1 - lambda, lambda
    ~ Beta(cutmix_alpha, cutmix_alpha), cut at a uniform centre and clipped to the image), else
    mixup (lambda ~ Beta(mixup_alpha, mixup_alpha)); every image is mixed with the batch's
    reversed order, and the targets are `lambda * y + (1 - lambda) * y_reversed` of the
    smoothed one-hot labels, lambda corrected to the box's clipped area for cutmix. Keras'
    `MixUp` and `CutMix` draw one lambda per image and pair by a random permutation, and
    neither switches between the two or smooths: hence this layer. An alpha of 0 turns that
    mix off (both 0: smoothing only).

    Args:
        num_classes: int.
        mixup_alpha, cutmix_alpha: floats >= 0 (deit: 0.8, 1.0).
        switch_prob: float in [0, 1], chance of cutmix when both are on (0.5).
        label_smoothing: float in [0, 1) (0.1).
        seed: optional int.

    Inputs: {"images": (batch, H, W, C) float, "labels": (batch,) int}.
    Outputs: {"images": same shape, "labels": (batch, num_classes) float32}.
    """

    def __init__(self, num_classes, mixup_alpha=DEIT_MAIN_DEFAULTS["mixup"],
                 cutmix_alpha=DEIT_MAIN_DEFAULTS["cutmix"],
                 switch_prob=DEIT_MAIN_DEFAULTS["mixup_switch_prob"],
                 label_smoothing=DEIT_MAIN_DEFAULTS["smoothing"], seed=None, **kwargs):
        super().__init__(**kwargs)
        if not isinstance(num_classes, int) or num_classes < 2:
            raise ValueError(f"`num_classes` must be an int >= 2. Received: "
                             f"num_classes={num_classes!r}")
        for name, value in (("mixup_alpha", mixup_alpha), ("cutmix_alpha", cutmix_alpha)):
            if not isinstance(value, (int, float)) or value < 0:
                raise ValueError(f"`{name}` must be a number >= 0. Received: {name}={value!r}")
        if not 0.0 <= switch_prob <= 1.0:
            raise ValueError(f"`switch_prob` must be in [0, 1]. Received: "
                             f"switch_prob={switch_prob!r}")
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"`label_smoothing` must be in [0, 1). Received: "
                             f"label_smoothing={label_smoothing!r}")
        self.num_classes = num_classes
        self.mixup_alpha, self.cutmix_alpha = float(mixup_alpha), float(cutmix_alpha)
        self.switch_prob = float(switch_prob)
        self.label_smoothing = float(label_smoothing)
        self.seed = seed
        self.generator = keras.random.SeedGenerator(seed)

    def call(self, data):
        b = self.backend
        images = b.cast(data["images"], self.compute_dtype)
        targets = smooth_labels(data["labels"], self.num_classes, self.label_smoothing, b)
        if self.mixup_alpha == 0 and self.cutmix_alpha == 0:
            return {"images": images, "labels": targets}
        seed = self._get_seed_generator(b._backend)
        if self.mixup_alpha > 0 and self.cutmix_alpha > 0:
            use_cutmix = b.random.uniform((), 0.0, 1.0, seed=seed) < self.switch_prob
        else:
            use_cutmix = b.convert_to_tensor(self.cutmix_alpha > 0)
        # Beta needs positive parameters: a switched-off mix draws with 1 and is not used.
        lam_mixup = b.random.beta((), self.mixup_alpha or 1.0, self.mixup_alpha or 1.0,
                                  seed=seed)
        lam_cutmix = b.random.beta((), self.cutmix_alpha or 1.0, self.cutmix_alpha or 1.0,
                                   seed=seed)
        reversed_images = b.numpy.flip(images, axis=0)
        mask, box_lam = self._cutmix_box(b.shape(images), lam_cutmix, seed)
        lam = b.numpy.where(use_cutmix, box_lam, b.cast(lam_mixup, "float32"))
        # One of the two mixes is computed: each is a pass over the whole batch.
        images = b.core.cond(
            use_cutmix, lambda: b.numpy.where(mask[None, :, :, None], reversed_images, images),
            lambda: b.cast(images * lam_mixup + reversed_images * (1.0 - lam_mixup),
                           self.compute_dtype))
        targets = targets * lam + b.numpy.flip(targets, axis=0) * (1.0 - lam)
        return {"images": images, "labels": targets}

    def _cutmix_box(self, shape, lam, seed):
        """The (H, W) boolean box (timm's `rand_bbox`) and its corrected lambda."""
        b = self.backend
        height, width = b.cast(shape[1], "float32"), b.cast(shape[2], "float32")
        cut = b.numpy.sqrt(1.0 - b.cast(lam, "float32"))
        cut_h, cut_w = b.numpy.floor(height * cut), b.numpy.floor(width * cut)
        centre = b.numpy.floor(b.random.uniform((2,), 0.0, 1.0, seed=seed)
                               * b.numpy.stack([height, width]))
        top = b.numpy.clip(centre[0] - b.numpy.floor(cut_h / 2), 0.0, height)
        bottom = b.numpy.clip(centre[0] + b.numpy.floor(cut_h / 2), 0.0, height)
        left = b.numpy.clip(centre[1] - b.numpy.floor(cut_w / 2), 0.0, width)
        right = b.numpy.clip(centre[1] + b.numpy.floor(cut_w / 2), 0.0, width)
        ys = b.cast(b.numpy.arange(shape[1]), "float32")
        xs = b.cast(b.numpy.arange(shape[2]), "float32")
        inside_y = (ys >= top) & (ys < bottom)
        inside_x = (xs >= left) & (xs < right)
        mask = inside_y[:, None] & inside_x[None, :]
        box_lam = 1.0 - (bottom - top) * (right - left) / (height * width)
        return mask, box_lam

    def compute_output_shape(self, input_shape):
        return {"images": input_shape["images"],
                "labels": (*input_shape["labels"], self.num_classes)}

    def get_config(self):
        config = super().get_config()
        config.update(num_classes=self.num_classes, mixup_alpha=self.mixup_alpha,
                      cutmix_alpha=self.cutmix_alpha, switch_prob=self.switch_prob,
                      label_smoothing=self.label_smoothing, seed=self.seed)
        return config


def repeated_augmentation(dataset, repeats=DEIT_MAIN_DEFAULTS["repeated_aug_repeats"], seed=None):
    """deit's `RASampler` on one device, for a finite, unbatched `tf.data.Dataset`.

    Each epoch: shuffle, repeat every element `repeats` times in a row, keep the first
    len(dataset) elements (about len / repeats distinct samples, each `repeats` times); augment
    after this, so every copy gets its own augmentation. deit also rounds the epoch down to a
    multiple of 256 and spreads the copies over devices; here the epoch keeps the length.

    Args:
        dataset: a `tf.data.Dataset` with a known cardinality.
        repeats: int >= 1.
        seed: optional int for the shuffle.
    Returns:
        A `tf.data.Dataset` of the same elements and length.
    """
    import tensorflow as tf

    length = int(dataset.cardinality())
    if length < 0:
        raise ValueError("repeated_augmentation needs a dataset of known, finite length. "
                         f"Received: cardinality={length}; use `dataset.apply("
                         "tf.data.experimental.assert_cardinality(n))`.")
    if not isinstance(repeats, int) or repeats < 1:
        raise ValueError(f"`repeats` must be an int >= 1. Received: repeats={repeats!r}")
    dataset = dataset.shuffle(length, seed=seed, reshuffle_each_iteration=True)

    def repeat(*element):  # tuples arrive unpacked; one tensor or a dict as one argument
        return tf.data.Dataset.from_tensors(element if len(element) > 1 else element[0]).repeat(
            repeats)

    dataset = dataset.flat_map(repeat)
    return dataset.take(length).apply(tf.data.experimental.assert_cardinality(length))


class DeiTImageTransform:
    """deit's per-image training transform for tf.data (TensorFlow ops on every backend):
    `window` picks the `RandomResizedCrop` window from the image's size (so that a JPEG file
    decodes only that window), `__call__` resizes the cut window bicubically to
    `image_size`, flips it horizontally with probability 0.5, applies `rand_augment`,
    normalises and applies `RandomErasing`. Draws are stateless, from a per-image seed pair.

    Args:
        image_size: int, the output side.
        mean, std: 3 floats each, the normalisation on [0, 1] pixels.
        seed: optional int for RandAugment (the other draws come from the per-image seeds).
    """

    def __init__(self, image_size, mean, std, seed=None):
        self.image_size = image_size
        self.mean, self.std = np.asarray(mean, "float32"), np.asarray(std, "float32")
        self.augment = rand_augment(seed=seed)
        self.erase_probability = DEIT_MAIN_DEFAULTS["reprob"]

    def window(self, height, width, seed):
        """(top, left, height, width) int32 scalars of the crop of a (height, width) image;
        seed: a (2,) int tensor."""
        import tensorflow as tf

        draws = tf.random.stateless_uniform((2 * CROP_ATTEMPTS + 2,), seed)
        return crop_window(TF, height, width, draws)

    def __call__(self, window, seed):
        """window: (h, w, 3) pixels in [0, 255]; seed: a (2,) int tensor. Returns
        (image_size, image_size, 3) float32."""
        import tensorflow as tf

        seeds = tf.random.experimental.stateless_split(seed, 3)
        image = pil_bicubic(TF, tf.cast(window, "float32")[None], self.image_size,
                            self.image_size)[0]
        image = tf.cast(tf.round(image), "uint8")  # timm's crop is a PIL (uint8) image
        flip = tf.random.stateless_uniform((), seeds[0]) < 0.5
        image = tf.cond(flip, lambda: image[:, ::-1], lambda: image)
        image = tf.cast(self.augment(image), "float32")
        image = (image / 255.0 - self.mean) / self.std
        draws = tf.random.stateless_uniform((2 * ERASE_ATTEMPTS + 3,), seeds[1])

        def erased():  # noise for the box only (TF's normals are slow), placed by padding
            size = self.image_size
            top, left, h, w = (tf.cast(v, "int32") for v in erase_box(TF, size, size, draws))
            noise = tf.random.stateless_normal(tf.stack([h, w, 3]), seeds[2])
            noise = tf.pad(noise, [[top, size - top - h], [left, size - left - w], [0, 0]])
            return erase(TF, image, draws, noise, self.erase_probability)

        return tf.cond(draws[-1] < self.erase_probability, erased, lambda: image)


def mixed_batches(dataset, num_classes, batch_size, seed=None):
    """(image, label) elements -> batches of `batch_size` (the last incomplete one dropped,
    deit's `drop_last`) through `MixupCutmix`, prefetched: (images, targets (batch,
    num_classes) float32)."""
    import tensorflow as tf

    mix = MixupCutmix(num_classes, seed=seed)

    def per_batch(images, labels):
        mixed = mix({"images": images, "labels": labels})
        return mixed["images"], mixed["labels"]

    return (dataset.batch(batch_size, drop_remainder=True)
            .map(per_batch, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE))


def deit_train_dataset(images, labels, num_classes, batch_size, image_size, mean, std,
                       recipe="deit", seed=None):
    """The training `tf.data.Dataset` of the DeiT recipe from images in memory, on every
    backend (`keras_deit.training.image_folder.ImageStream` streams a folder instead).

    "deit": repeated augmentation (3), then per image `DeiTImageTransform` (RandomResizedCrop
    of the image as given, bicubic, scale (0.08, 1), ratio (3/4, 4/3); horizontal flip;
    RandAugment m9 mstd0.5; normalisation; random erasing 0.25); per batch mixup 0.8 /
    cutmix 1.0 (switch 0.5) with label smoothing 0.1.

    Args:
        images: (n, H, W, 3) uint8 array (deit crops the original image: pass it
            unresized where the sizes allow).
        labels: (n,) int array.
        num_classes: int.
        batch_size: int; the last incomplete batch is dropped (deit's `drop_last`).
        image_size: int, the output side.
        mean, std: 3 floats each, the normalisation on [0, 1] pixels.
        recipe: "deit" (the one recipe so far; `keras-deit train --recipe light` skips this).
        seed: optional int.
    Returns:
        A dataset of (pixel_values (batch, image_size, image_size, 3) float32,
        targets (batch, num_classes) float32).
    """
    import tensorflow as tf

    if recipe != "deit":
        raise ValueError(f"`recipe` must be 'deit'. Received: recipe={recipe!r}")
    transform = DeiTImageTransform(image_size, mean, std, seed=seed)
    dataset = tf.data.Dataset.from_tensor_slices((images, np.asarray(labels, "int32")))
    dataset = repeated_augmentation(dataset, seed=seed)
    seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).batch(2)

    def per_image(element, seed_pair):
        (image, label) = element
        shape = tf.shape(image)
        top, left, h, w = transform.window(shape[0], shape[1], seed_pair)
        return transform(image[top:top + h, left:left + w], seed_pair), label

    dataset = tf.data.Dataset.zip(dataset, seeds).map(per_image,
                                                      num_parallel_calls=tf.data.AUTOTUNE)
    return mixed_batches(dataset, num_classes, batch_size, seed=seed)
