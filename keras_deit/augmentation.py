"""The data side of DeiT's recipe (facebookresearch/deit `main.py`, timm's transforms), from
Keras' own layers, usable inside `tf.data` on every backend.

| deit / timm                                 | here                                              |
|---|---|
| `RandomResizedCropAndInterpolation` bicubic | `RandomResizedCrop` (ours: Keras has none)        |
| horizontal flip 0.5                         | `keras.layers.RandomFlip("horizontal")`           |
| `rand-m9-mstd0.5-inc1`                      | `rand_augment` (ours: timm's, op for op)          |
| `RandomErasing(0.25, mode="pixel")`         | `keras.layers.RandomErasing` (see `random_erasing`)|
| `Mixup` (mixup 0.8, cutmix 1.0, switch 0.5, smoothing 0.1) | `MixupCutmix` (ours, see below)    |
| `RASampler` (3 repeats)                     | `repeated_augmentation` (tf.data)                 |

The layers are Keras `DataLayer`s: inside `tf.data` they run with TensorFlow ops whatever the
backend, and their randomness comes from a `keras.random.SeedGenerator`. The defaults come from
`keras_deit.recipe.DEIT_MAIN_DEFAULTS`.
"""

import math

import keras
import numpy as np
# Keras exports no public base for layers that switch to TensorFlow ops inside tf.data on every
# backend (its own RandAugment, MixUp, ... derive from this one); pinned by keras>=3.15.
from keras.src.layers.preprocessing.data_layer import DataLayer

from keras_deit.recipe import DEIT_MAIN_DEFAULTS

# PIL's bicubic coefficient (timm resizes PIL images); PyTorch's tensors use -0.75.
PIL_CUBIC_A = -0.5
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


@keras.saving.register_keras_serializable(package="keras_deit")
class RandomResizedCrop(DataLayer):
    """A random crop of random area and aspect ratio, resized bicubically (torchvision's
    `RandomResizedCrop` as timm uses it on PIL images).

    Per image: up to 10 draws of an area fraction in `scale` and a log-uniform aspect ratio in
    `ratio`; the first that fits is cut at a uniform position; if none fits, the centre crop of
    the ratio clamped to `ratio`. The crop is resized with PIL's bicubic filter (A = -0.5,
    widened by the reduction factor when shrinking, i.e. antialiased, as PIL does), written as
    two per-image interpolation matrices, so that it is plain matrix products on every backend.
    The output is clipped to `value_range` (PIL rounds to uint8, which clips too).

    Args:
        height, width: ints, the output size.
        scale: (min, max) fraction of the image area (deit: (0.08, 1.0)).
        ratio: (min, max) aspect ratio width / height (deit: (3/4, 4/3)).
        value_range: (min, max) of the pixel values, for the clip.
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
        self.seed = seed
        self.generator = keras.random.SeedGenerator(seed)

    def call(self, images):
        b = self.backend
        unbatched = len(images.shape) == 3
        images = b.cast(images, self.compute_dtype)
        if unbatched:
            images = b.numpy.expand_dims(images, 0)
        shape = b.shape(images)
        batch = shape[0]
        in_h, in_w = b.cast(shape[1], "float32"), b.cast(shape[2], "float32")
        top, left, crop_h, crop_w = self._crop_boxes(batch, in_h, in_w)
        rows = _pil_bicubic_matrix(b, top, crop_h, shape[1], self.height)  # (batch, out, H)
        cols = _pil_bicubic_matrix(b, left, crop_w, shape[2], self.width)  # (batch, out, W)
        rows, cols = b.cast(rows, self.compute_dtype), b.cast(cols, self.compute_dtype)
        out = b.numpy.einsum("boh,bhwc->bowc", rows, images)
        out = b.numpy.einsum("bpw,bowc->bopc", cols, out)
        out = b.numpy.clip(out, self.value_range[0], self.value_range[1])
        return out[0] if unbatched else out

    def _crop_boxes(self, batch, in_h, in_w):
        """(top, left, height, width) of each image's crop, float32 pixels, shape (batch,)."""
        b = self.backend
        seed = self._get_seed_generator(b._backend)
        draws = (batch, CROP_ATTEMPTS)
        area = in_h * in_w * b.random.uniform(draws, self.scale[0], self.scale[1], seed=seed)
        log_ratio = b.random.uniform(draws, math.log(self.ratio[0]), math.log(self.ratio[1]),
                                     seed=seed)
        aspect = b.numpy.exp(log_ratio)
        w = b.numpy.round(b.numpy.sqrt(area * aspect))
        h = b.numpy.round(b.numpy.sqrt(area / aspect))
        fits = (w > 0) & (w <= in_w) & (h > 0) & (h <= in_h)
        first = b.numpy.argmax(b.cast(fits, "int32"), axis=1)  # 0 when nothing fits
        pick = b.nn.one_hot(first, CROP_ATTEMPTS, dtype="float32")
        w, h = b.numpy.sum(w * pick, axis=1), b.numpy.sum(h * pick, axis=1)
        any_fits = b.numpy.any(fits, axis=1)
        # torchvision's fallback: the whole image, cut to the nearest allowed ratio.
        in_ratio = in_w / in_h
        fallback_w = b.numpy.where(in_ratio > self.ratio[1],
                                   b.numpy.round(in_h * self.ratio[1]), in_w)
        fallback_h = b.numpy.where(in_ratio < self.ratio[0],
                                   b.numpy.round(in_w / self.ratio[0]), in_h)
        w = b.numpy.where(any_fits, w, fallback_w)
        h = b.numpy.where(any_fits, h, fallback_h)
        offsets = b.random.uniform((batch, 2), 0.0, 1.0, seed=seed)
        top = b.numpy.where(any_fits, b.numpy.floor(offsets[:, 0] * (in_h - h + 1)),
                            b.numpy.round((in_h - h) / 2))
        left = b.numpy.where(any_fits, b.numpy.floor(offsets[:, 1] * (in_w - w + 1)),
                             b.numpy.round((in_w - w) / 2))
        return top, left, h, w

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-3], self.height, self.width, input_shape[-1])

    def get_config(self):
        config = super().get_config()
        config.update(height=self.height, width=self.width, scale=self.scale, ratio=self.ratio,
                      value_range=self.value_range, seed=self.seed)
        return config


def _pil_bicubic_matrix(b, start, length, in_size, out_size):
    """(batch, out_size, in_size) weights resizing [start, start + length) of an axis to
    `out_size` as PIL's bicubic resize with a box does: taps at pixel centres, the kernel
    widened by the reduction factor, rows normalised (taps outside the image dropped)."""
    step = length / out_size  # (batch,)
    support = b.numpy.maximum(step, 1.0)
    centres = start[:, None] + (b.cast(b.numpy.arange(out_size), "float32")[None, :] + 0.5) \
        * step[:, None]  # (batch, out)
    pixels = b.cast(b.numpy.arange(in_size), "float32") + 0.5  # (in,)
    x = b.numpy.abs(pixels[None, None, :] - centres[:, :, None]) / support[:, None, None]
    a = PIL_CUBIC_A
    near = ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0
    far = ((a * x - 5.0 * a) * x + 8.0 * a) * x - 4.0 * a
    weights = b.numpy.where(x < 1.0, near, b.numpy.where(x < 2.0, far, 0.0))
    return weights / b.numpy.sum(weights, axis=-1, keepdims=True)


def rand_augment(magnitude=9, magnitude_std=0.5, num_ops=2, seed=None):
    """timm's `rand-m{magnitude}-mstd{magnitude_std}-n{num_ops}-inc1` (deit's `--aa`): a
    `keras_deit.rand_augment.RandAugment`, TensorFlow ops (imported here, when called).

    On single uint8 (H, W, 3) images, before normalisation, eagerly or in `tf.data.map`: per
    image `num_ops` of timm's 15 ops drawn with replacement, each run with probability 0.5 at a
    magnitude ~ N(magnitude, magnitude_std) clipped to [0, 10], with a random sign.
    """
    from keras_deit.rand_augment import RandAugment

    return RandAugment(magnitude, magnitude_std, num_ops, seed)


def rand_augment_op(images, name, magnitude, sign=1):
    """One of timm's RandAugment ops on uint8 (H, W, 3) or (batch, H, W, 3) images:
    `keras_deit.rand_augment.rand_augment_op` (TensorFlow ops, imported here, when called)."""
    from keras_deit.rand_augment import rand_augment_op as run_op

    return run_op(images, name, magnitude, sign)


def random_erasing(probability=DEIT_MAIN_DEFAULTS["reprob"], value_range=(-1.0, 1.0), seed=None):
    """Keras' `RandomErasing` as deit's `RandomErasing(0.25, mode="pixel", max_count=1)`.

    On normalised images, after normalisation (as deit). Same: probability per image, one
    rectangle, per-pixel N(0, 1) noise ("pixel" mode), area up to 1/3. Different: Keras draws
    each side as sqrt(U(0.02, 1/3)) of the image side, timm an area U(0.02, 1/3) with a
    log-uniform aspect ratio in (0.3, 3.3) (10 attempts to fit); Keras clips the noise to
    `value_range` (pass the normalised image's range).
    """
    # A (p, p) factor: Keras draws the probability uniformly in the factor's range.
    return keras.layers.RandomErasing(
        factor=(probability, probability), scale=(0.02, 1 / 3), fill_value=None,
        value_range=value_range, seed=seed,
    )


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
        cut = b.numpy.where(mask[None, :, :, None], reversed_images, images)
        mixed = images * lam_mixup + reversed_images * (1.0 - lam_mixup)
        lam = b.numpy.where(use_cutmix, box_lam, b.cast(lam_mixup, "float32"))
        images = b.numpy.where(use_cutmix, cut, b.cast(mixed, self.compute_dtype))
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


def deit_train_dataset(images, labels, num_classes, batch_size, image_size, mean, std,
                       recipe="deit", seed=None):
    """The training `tf.data.Dataset` of the DeiT recipe, on every backend.

    "deit": repeated augmentation (3), then per image `RandomResizedCrop` (bicubic, scale
    (0.08, 1), ratio (3/4, 4/3)), horizontal flip, RandAugment m9 mstd0.5, normalisation,
    random erasing 0.25; per batch mixup 0.8 / cutmix 1.0 (switch 0.5) with label smoothing
    0.1.

    Args:
        images: (n, H, W, 3) uint8 array, the images at the size to crop from.
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

    mean, std = np.asarray(mean, "float32"), np.asarray(std, "float32")
    dataset = tf.data.Dataset.from_tensor_slices((images, np.asarray(labels, "int32")))
    if recipe != "deit":
        raise ValueError(f"`recipe` must be 'deit'. Received: recipe={recipe!r}")
    seeds = np.random.default_rng(seed).integers(0, 2**31 - 1, size=5).tolist() \
        if seed is not None else [None] * 5
    crop = RandomResizedCrop(image_size, image_size, seed=seeds[0])
    flip = keras.layers.RandomFlip("horizontal", seed=seeds[1])
    augment = rand_augment(seed=seeds[2])
    low, high = float(np.min(-mean / std)), float(np.max((1 - mean) / std))
    erase = random_erasing(value_range=(low, high), seed=seeds[3])
    mix = MixupCutmix(num_classes, seed=seeds[4])

    def per_image(image, label):
        image = augment(tf.cast(tf.round(flip(crop(image))), tf.uint8))  # timm's: uint8 in
        image = (tf.cast(image, tf.float32) / 255.0 - mean) / std
        return erase(image), label

    def per_batch(images, labels):
        mixed = mix({"images": images, "labels": labels})
        return mixed["images"], mixed["labels"]

    dataset = repeated_augmentation(dataset, seed=seeds[0])
    parallel = tf.data.AUTOTUNE
    return (dataset.map(per_image, num_parallel_calls=parallel)
            .batch(batch_size, drop_remainder=True).map(per_batch, num_parallel_calls=parallel)
            .prefetch(tf.data.AUTOTUNE))
