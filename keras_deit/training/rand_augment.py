"""timm's RandAugment `rand-m9-mstd0.5-inc1` (deit's `--aa`), op for op, in TensorFlow ops.

timm runs Pillow on PIL images; here every op is written with TensorFlow ops on uint8 tensors
and reproduces Pillow's arithmetic: its affine transform (input = matrix x (output + 0.5),
bicubic with coefficient -1 in Horner form, edge pixels repeated, truncated to uint8, pixels
mapped from outside the image filled), `ImageEnhance` (a float32 blend with a degenerate image,
truncated), `ImageOps` look-up tables. Structured as timm's `auto_augment.py`: an op table
(`_OPS`), a magnitude -> argument table (`_LEVELS`) and the policy (`RandAugment`).

TensorFlow ops so that it runs inside `tf.data` whatever the Keras backend (and eagerly when
TensorFlow is installed).
"""

import math

import tensorflow as tf

# deit's settings: the fill is the ImageNet mean x 255, rounded (timm's `img_mean`).
FILL = (124, 116, 104)
LEVEL_DENOM = 10.0  # timm's magnitude scale: 10 is the strongest
TRANSLATE_PCT = 0.45  # of the image side, at magnitude 10
MAX_DEGREES = 30.0
MAX_SHEAR = 0.3
# L = (19595 R + 38470 G + 7471 B + 2^15) >> 16: Pillow's RGB -> L, in integers.
_LUMA = (19595, 38470, 7471)


def _blend(degenerate, image, factor):
    """Pillow's `Image.blend(degenerate, image, factor)`: float32 arithmetic, clipped, truncated."""
    factor = tf.cast(tf.cast(factor, tf.float32), tf.float64)
    degenerate = tf.cast(degenerate, tf.float32)
    difference = tf.cast(tf.cast(image, tf.float32) - degenerate, tf.float64)
    # The product is exact in float64 (24 x 9 bits), so its rounding to float32 is float32's
    # product, which XLA then cannot fuse with the sum into one multiply-add (Pillow does not).
    product = tf.cast(factor * difference, tf.float32)
    return tf.saturate_cast(degenerate + product, tf.uint8)  # clips, truncates as Pillow's cast


def _luma(image):
    """(H, W) int32 Pillow "L" of a uint8 (H, W, 3) image."""
    rgb = tf.cast(image, tf.int32)
    return tf.bitwise.right_shift(
        rgb[..., 0] * _LUMA[0] + rgb[..., 1] * _LUMA[1] + rgb[..., 2] * _LUMA[2] + 32768, 16)


def _histograms(image):
    """(3, 256) int32 counts of each channel's values."""
    values = tf.cast(image, tf.int32) + tf.range(3) * 256
    # A segment sum: XLA cannot compile tf.math.bincount.
    counts = tf.math.unsorted_segment_sum(tf.ones_like(values), values, 768)
    return tf.reshape(counts, [3, 256])


def _apply_luts(image, luts):
    """Maps each channel of `image` through its row of the (3, 256) int32 `luts`."""
    luts = tf.cast(tf.clip_by_value(luts, 0, 255), tf.uint8)
    return tf.gather(tf.reshape(luts, [-1]), tf.cast(image, tf.int32) + tf.range(3) * 256)


def _identity_lut():
    return tf.broadcast_to(tf.range(256), [3, 256])


def _times(ix, value):
    """Python's (float64) `ix * value` for integers `ix` in [0, 255], whatever fused
    multiply-adds XLA makes: `value`'s high 37 bits and its low 16 bits each times `ix` are
    exact, so any rounding of their sum is the rounded product."""
    high = tf.bitcast(tf.bitwise.bitwise_and(tf.bitcast(value, tf.int64), ~0xFFFF), tf.float64)
    return ix * high + ix * (value - high)


def auto_contrast(image):
    """`ImageOps.autocontrast`: each channel's [lowest, highest] value stretched to [0, 255]."""
    present = _histograms(image) > 0
    lo = tf.cast(tf.argmax(tf.cast(present, tf.int32), axis=1), tf.float64)[:, None]
    hi = 255.0 - tf.cast(tf.argmax(tf.cast(present[:, ::-1], tf.int32), axis=1),
                         tf.float64)[:, None]
    # float64 as Python's: ix * scale + offset lands on 255.0 exactly at ix = hi.
    scale = 255.0 / tf.maximum(hi - lo, 1.0)
    stretched = _times(tf.range(256, dtype=tf.float64)[None, :], scale) - _times(lo, scale)
    luts = tf.where(hi > lo, tf.cast(tf.floor(tf.clip_by_value(stretched, 0.0, 255.0)),
                                     tf.int32), _identity_lut())
    return _apply_luts(image, luts)


def equalize(image):
    """`ImageOps.equalize`: each channel through its cumulative histogram, in Pillow's integers."""
    counts = _histograms(image)
    highest = 255 - tf.argmax(tf.cast(counts[:, ::-1] > 0, tf.int32), axis=1, output_type=tf.int32)
    last = tf.gather(counts, highest, axis=1, batch_dims=1)  # count of the highest value
    step = (tf.reduce_sum(counts, axis=1) - last) // 255
    used = tf.reduce_sum(tf.cast(counts > 0, tf.int32), axis=1)
    safe_step = tf.maximum(step, 1)[:, None]
    luts = (safe_step // 2 + tf.cumsum(counts, axis=1, exclusive=True)) // safe_step
    keep = ((used > 1) & (step > 0))[:, None]
    return _apply_luts(image, tf.where(keep, luts, _identity_lut()))


def _apply_lut(image, lut):
    """Maps every value of `image` through the (256,) int32 `lut`."""
    lut = tf.cast(tf.clip_by_value(lut, 0, 255), tf.uint8)
    return tf.gather(lut, tf.cast(image, tf.int32))


def invert(image):
    """`ImageOps.invert`."""
    return 255 - image


def posterize(image, bits):
    """`ImageOps.posterize`: keeps the `bits` highest bits (0 bits: black, as Pillow 11)."""
    kept = tf.bitwise.left_shift(1, 8 - tf.cast(bits, tf.int32))  # values per level
    return _apply_lut(image, tf.range(256) // kept * kept)


def solarize(image, threshold):
    """`ImageOps.solarize`: values >= threshold inverted."""
    values = tf.range(256)
    return _apply_lut(image, tf.where(values < tf.cast(threshold, tf.int32), values,
                                      255 - values))


def solarize_add(image, add, threshold=128):
    """timm's `solarize_add`: `add` to the values below `threshold`, capped at 255."""
    values = tf.range(256)
    return _apply_lut(image, tf.where(values < threshold, values + tf.cast(add, tf.int32),
                                      values))


def color(image, factor):
    """`ImageEnhance.Color`: blend with the grey ("L") image."""
    grey = _luma(image)[..., None]
    return _blend(tf.broadcast_to(grey, tf.shape(image)), image, factor)


def contrast(image, factor):
    """`ImageEnhance.Contrast`: blend with the mean grey, rounded to an integer."""
    mean = tf.reduce_mean(tf.cast(_luma(image), tf.float64))
    return _blend(tf.floor(mean + 0.5), image, factor)


def brightness(image, factor):
    """`ImageEnhance.Brightness`: blend with black."""
    return _blend(tf.zeros([], tf.float32), image, factor)


def sharpness(image, factor):
    """`ImageEnhance.Sharpness`: blend with Pillow's SMOOTH filter (3x3 [1 1 1; 1 5 1; 1 1 1] / 13,
    rounded, border pixels kept)."""
    values = tf.cast(image, tf.float32)
    height, width = tf.shape(image)[0], tf.shape(image)[1]
    # Nine shifted slices (integers: exact in any order) rather than a convolution, which XLA's
    # CPU backend runs ~20x slower.
    total = 4.0 * values[1:-1, 1:-1]
    for dy in range(3):
        for dx in range(3):
            total += values[dy:height - 2 + dy, dx:width - 2 + dx]
    change = tf.round(total / 13.0) - values[1:-1, 1:-1]
    return _blend(values + tf.pad(change, [[1, 1], [1, 1], [0, 0]]), image, factor)


def _cubic(v1, v2, v3, v4, d):
    """Pillow's bicubic (coefficient -1) at fraction `d` between v2 and v3, in its Horner form
    (exact on flat areas, so that they keep their value after the truncation)."""
    return v2 + d * ((v3 - v1) + d * ((2.0 * (v1 - v2) + v3 - v4) + d * (-v1 + v2 - v3 + v4)))


def _affine(image, matrix, moves_x=True, moves_y=True):
    """Pillow's `transform(size, AFFINE, matrix, BICUBIC, fillcolor=FILL)` of a (H, W, 3) uint8
    image: output pixel (x, y) samples the input at matrix x (x + 0.5, y + 0.5, 1).

    `moves_x`/`moves_y` False promise that the map keeps that coordinate, so that its four
    taps collapse to one (shears and translations need 4 gathers, rotations 16)."""
    a, b, c, d, e, f = [tf.cast(v, tf.float64) for v in matrix]
    height, width = tf.shape(image)[0], tf.shape(image)[1]
    ys = tf.range(tf.cast(height, tf.float64))[:, None] + 0.5
    xs = tf.range(tf.cast(width, tf.float64))[None, :] + 0.5

    def axis(start, size):
        """Inside mask, first tap and fraction of one input coordinate (float64, as Pillow)."""
        inside = (start >= 0.0) & (start < tf.cast(size, tf.float64))
        start = start - 0.5
        first = tf.floor(start)
        return inside, tf.cast(first, tf.int32), (start - first)[..., None]

    # A coordinate the map keeps is the output's own: always inside, no fraction, so skipped.
    inside_x, x0, dx = axis(a * xs + b * ys + c, width) if moves_x \
        else (True, tf.range(width)[None, :], None)
    inside_y, y0, dy = axis(d * xs + e * ys + f, height) if moves_y \
        else (True, tf.range(height)[:, None], None)
    inside = inside_x & inside_y
    # One flat gather per tap: faster on CPUs than gathers along an axis or with batch_dims.
    flat = tf.reshape(tf.cast(image, tf.float64), [-1, 3])
    x_taps = [tf.clip_by_value(x0 + i, 0, width - 1) for i in range(-1, 3)] if moves_x \
        else [tf.clip_by_value(x0, 0, width - 1)]
    y_taps = [tf.clip_by_value(y0 + j, 0, height - 1) * width for j in range(-1, 3)] if moves_y \
        else [tf.clip_by_value(y0, 0, height - 1) * width]
    rows = []
    for row in y_taps:
        taps = [tf.gather(flat, row + column) for column in x_taps]
        rows.append(_cubic(*taps, dx) if moves_x else taps[0])
    out = _cubic(*rows, dy) if moves_y else rows[0]
    # Arithmetic rather than tf.where, whose broadcasting is slow on CPUs.
    inside = tf.cast(inside, tf.uint8)[..., None]
    fill = (1 - inside) * tf.constant(FILL, tf.uint8)
    return tf.saturate_cast(out, tf.uint8) * inside + fill  # saturate: clip, truncate


def rotate(image, degrees):
    """`Image.rotate(degrees, BICUBIC)` about the centre, counter-clockwise, size kept."""
    angle = -tf.cast(degrees, tf.float64) * (math.pi / 180.0)
    cos, sin = tf.cos(angle), tf.sin(angle)
    cx = tf.cast(tf.shape(image)[1], tf.float64) / 2.0
    cy = tf.cast(tf.shape(image)[0], tf.float64) / 2.0
    return _affine(image, (cos, sin, cos * -cx + sin * -cy + cx,
                           -sin, cos, -sin * -cx + cos * -cy + cy))


def shear_x(image, factor):
    return _affine(image, (1.0, factor, 0.0, 0.0, 1.0, 0.0), moves_y=False)


def shear_y(image, factor):
    return _affine(image, (1.0, 0.0, 0.0, factor, 1.0, 0.0), moves_x=False)


def translate_x_rel(image, fraction):
    pixels = tf.cast(fraction, tf.float64) * tf.cast(tf.shape(image)[1], tf.float64)
    return _affine(image, (1.0, 0.0, pixels, 0.0, 1.0, 0.0), moves_y=False)


def translate_y_rel(image, fraction):
    pixels = tf.cast(fraction, tf.float64) * tf.cast(tf.shape(image)[0], tf.float64)
    return _affine(image, (1.0, 0.0, 0.0, 0.0, 1.0, pixels), moves_x=False)


# The magnitude -> argument table (timm's LEVEL_TO_ARG, "increasing" variants), in float64 as
# timm's Python floats; int() of timm is a floor here (the values are >= 0). `sign` (+-1) is
# timm's `_randomly_negate`, drawn by the policy.
def _fraction(magnitude):
    return tf.cast(magnitude, tf.float64) / LEVEL_DENOM


def _no_argument(magnitude, sign):
    return ()


def _rotate_level(magnitude, sign):
    return (_fraction(magnitude) * MAX_DEGREES * sign,)


def _posterize_increasing_level(magnitude, sign):
    return (4.0 - tf.floor(_fraction(magnitude) * 4.0),)


def _solarize_increasing_level(magnitude, sign):
    return (256.0 - tf.floor(_fraction(magnitude) * 256.0),)


def _solarize_add_level(magnitude, sign):
    return (tf.floor(_fraction(magnitude) * 110.0),)


def _enhance_increasing_level(magnitude, sign):
    return (tf.maximum(1.0 + _fraction(magnitude) * 0.9 * sign, 0.1),)


def _shear_level(magnitude, sign):
    return (_fraction(magnitude) * MAX_SHEAR * sign,)


def _translate_rel_level(magnitude, sign):
    return (_fraction(magnitude) * TRANSLATE_PCT * sign,)


# timm's `_RAND_INCREASING_TRANSFORMS`, in its order: name -> (op, level).
_OPS = {
    "AutoContrast": (auto_contrast, _no_argument),
    "Equalize": (equalize, _no_argument),
    "Invert": (invert, _no_argument),
    "Rotate": (rotate, _rotate_level),
    "PosterizeIncreasing": (posterize, _posterize_increasing_level),
    "SolarizeIncreasing": (solarize, _solarize_increasing_level),
    "SolarizeAdd": (solarize_add, _solarize_add_level),
    "ColorIncreasing": (color, _enhance_increasing_level),
    "ContrastIncreasing": (contrast, _enhance_increasing_level),
    "BrightnessIncreasing": (brightness, _enhance_increasing_level),
    "SharpnessIncreasing": (sharpness, _enhance_increasing_level),
    "ShearX": (shear_x, _shear_level),
    "ShearY": (shear_y, _shear_level),
    "TranslateXRel": (translate_x_rel, _translate_rel_level),
    "TranslateYRel": (translate_y_rel, _translate_rel_level),
}
OP_NAMES = tuple(_OPS)


def _run(image, name, magnitude, sign):
    """One op on one (H, W, 3) uint8 image; magnitude and sign may be tensors."""
    op, level = _OPS[name]
    return op(image, *level(tf.cast(magnitude, tf.float64), tf.cast(sign, tf.float64)))


def _check_uint8(images, ranks=(3, 4)):
    images = tf.convert_to_tensor(images)
    if images.dtype != tf.uint8 or images.shape.rank not in ranks or images.shape[-1] != 3:
        raise ValueError(f"`images` must be uint8 RGB of rank {' or '.join(map(str, ranks))} "
                         f"(H, W, 3 last); cast and round first. "
                         f"Received: dtype={images.dtype.name}, shape={tuple(images.shape)}")
    return images


def rand_augment_op(images, name, magnitude, sign=1):
    """One of timm's RandAugment ops, as timm applies it at `magnitude` (timm's Pillow code).

    Args:
        images: uint8 (H, W, 3) or (batch, H, W, 3) (anything `tf.convert_to_tensor` takes).
        name: one of `OP_NAMES` (timm's 15 "increasing" ops).
        magnitude: number in [0, 10].
        sign: +1 or -1, the direction of Rotate, Shear*, Translate* and the *Increasing
            enhancements (timm's random negation); the other ops ignore it.
    Returns:
        uint8 tensor of the input's shape.
    """
    if name not in _OPS:
        raise ValueError(f"`name` must be one of {', '.join(OP_NAMES)}. Received: name={name!r}")
    if not isinstance(magnitude, (int, float)) or not 0 <= magnitude <= LEVEL_DENOM:
        raise ValueError(f"`magnitude` must be a number in [0, 10]. "
                         f"Received: magnitude={magnitude!r}")
    if sign not in (1, -1):
        raise ValueError(f"`sign` must be 1 or -1. Received: sign={sign!r}")
    images = _check_uint8(images)
    return _compiled_op(name)(images, tf.constant(magnitude, tf.float64),
                              tf.constant(sign, tf.float64))


# The ops and the policy run XLA-compiled: XLA fuses an op's dozens of elementwise steps (each
# over the whole image) and gathers into a few loops. On CPUs, in a tf.data map of 224x224
# images (shared, loaded machine): Rotate ~16 -> ~2-3.6 CPU-ms, shears and translations ~4 ->
# ~1.5-2, the policy ~5-7 -> ~2.7-3 (benchmarks/rand_augment_speed.py --ops). Most of the
# policy's time is now its two 16-branch conditionals: ~2.5 CPU-ms per image even when every
# draw is "no op" (it grows with the branches' size; it is not XLA's conditional code motion).
# XLA compiles once per image shape. Its CPU backend always fuses a * b + c into one
# multiply-add, rounded once: where Pillow's two roundings matter (blends, AutoContrast's
# table) the products are made exact (`_blend`, `_times`); the bicubic is in float64 as Pillow's.
_COMPILED = {}


def _compiled_op(name):
    """`name`'s op as an XLA-compiled function of (images (H, W, 3) or (batch, H, W, 3) uint8,
    magnitude float64, sign float64)."""
    if name not in _COMPILED:
        def run(images, magnitude, sign):
            if images.shape.rank == 3:
                return _run(images, name, magnitude, sign)
            return tf.map_fn(lambda image: _run(image, name, magnitude, sign), images,
                             fn_output_signature=tf.uint8)
        _COMPILED[name] = tf.function(run, jit_compile=True)
    return _COMPILED[name]


class RandAugment:
    """timm's `RandAugment` for `rand-m{magnitude}-mstd{magnitude_std}-n{num_ops}-inc1`.

    Per image, `num_ops` times: an op drawn uniformly from the 15 (with replacement), run with
    probability 0.5, at its own magnitude ~ N(magnitude, magnitude_std) clipped to [0, 10] and a
    random sign; the image is uint8 after every op. Only the drawn op is computed
    (`tf.switch_case`, XLA-compiled). Randomness from a `tf.random.Generator`, so
    it runs in `tf.data.map`.

    Args:
        magnitude: number in [0, 10] (deit: 9).
        magnitude_std: number >= 0 (deit: 0.5).
        num_ops: int >= 1 (deit: 2).
        seed: optional int.

    Call: uint8 (H, W, 3) -> uint8 (H, W, 3) tensor.
    """

    def __init__(self, magnitude=9, magnitude_std=0.5, num_ops=2, seed=None):
        if not isinstance(magnitude, (int, float)) or not 0 <= magnitude <= LEVEL_DENOM:
            raise ValueError(f"`magnitude` must be a number in [0, 10]. "
                             f"Received: magnitude={magnitude!r}")
        if not isinstance(magnitude_std, (int, float)) or magnitude_std < 0:
            raise ValueError(f"`magnitude_std` must be a number >= 0. "
                             f"Received: magnitude_std={magnitude_std!r}")
        if not isinstance(num_ops, int) or isinstance(num_ops, bool) or num_ops < 1:
            raise ValueError(f"`num_ops` must be an int >= 1. Received: num_ops={num_ops!r}")
        self.magnitude, self.magnitude_std = float(magnitude), float(magnitude_std)
        self.num_ops, self.seed = num_ops, seed
        self.generator = (tf.random.Generator.from_non_deterministic_state() if seed is None
                          else tf.random.Generator.from_seed(seed))
        self._compiled_apply = tf.function(self._apply, jit_compile=True)

    def __call__(self, image):
        image = _check_uint8(image, ranks=(3,))
        draws = self.generator.uniform([3, self.num_ops])
        ops = tf.cast(tf.floor(draws[0] * len(OP_NAMES)), tf.int32)
        # timm skips an op when random() > 0.5: the last branch is the identity.
        ops = tf.where(draws[1] <= 0.5, tf.minimum(ops, len(OP_NAMES) - 1), len(OP_NAMES))
        magnitudes = tf.clip_by_value(
            self.magnitude + self.magnitude_std * self.generator.normal([self.num_ops]),
            0.0, LEVEL_DENOM)
        signs = tf.where(draws[2] > 0.5, -1.0, 1.0)
        return tf.ensure_shape(self._compiled_apply(image, ops, magnitudes, signs), image.shape)

    def _apply(self, image, ops, magnitudes, signs):
        """Runs op ops[i] (an OP_NAMES index; len(OP_NAMES): none) at magnitudes[i], signs[i]
        (each (num_ops,)) on the (H, W, 3) uint8 image, in turn; only drawn ops are computed."""
        for i in range(self.num_ops):
            branches = [lambda name=name: _run(image, name, magnitudes[i], signs[i])
                        for name in OP_NAMES] + [lambda: image]
            image = tf.switch_case(ops[i], branches)
        return image

    def get_config(self):
        return {"magnitude": self.magnitude, "magnitude_std": self.magnitude_std,
                "num_ops": self.num_ops, "seed": self.seed}

    @classmethod
    def from_config(cls, config):
        return cls(**config)
