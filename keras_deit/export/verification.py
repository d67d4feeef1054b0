"""Verification: the inputs (random, sample photos or the caller's images), the Keras model's
reference outputs, and the comparison with what the artifact computes."""

import dataclasses

import numpy as np

from keras_deit.export.common import ExportError, MissingDependencyError, _serving_function

@dataclasses.dataclass
class Verification:
    """How the exported artifact compares with the Keras model on the same inputs.

    Attributes:
        max_abs: largest absolute difference over all outputs.
        per_output: max-abs difference per output name.
        tolerance: the gate (None for quantized files, which are measured only).
        passed: True when `max_abs <= tolerance` (always True when there is no gate).
        top1_agreement: fraction of inputs whose `logits` argmax is the same (None without
            `logits`).
        num_inputs: batch size of the verification inputs.
        backend: the Keras backend the reference outputs come from.
        preprocessing_max_abs: with preprocessing inside and the artifact built by another
            framework, the max-abs difference between `DeiTPreprocessing` on `backend` and on
            that framework, on the same images (not gated: resize kernels and rounding differ
            slightly per backend, see the layer). The gate itself feeds the Keras model with the
            builder's preprocessing, so it checks both parts of the artifact exactly.
    """

    max_abs: float
    per_output: dict
    tolerance: float | None
    passed: bool
    top1_agreement: float | None
    num_inputs: int
    backend: str
    preprocessing_max_abs: float | None = None


def _default_verification_data(spec, count=4):
    """Deterministic inputs for a spec: N(0, 1) pixel values, or uniform uint8 images whose
    free height/width differ from each other (so a transposed axis would show)."""
    rng = np.random.default_rng(0)
    free = iter((56, 48))
    shape = [count] + [d if d is not None else next(free) for d in spec["shape"][1:]]
    if spec["dtype"] == "uint8":
        return rng.integers(0, 256, shape, dtype=np.uint8)
    return rng.standard_normal(shape).astype("float32")


def _check_verification_data(data, spec):
    data = np.asarray(data)
    shape = spec["shape"]
    if data.ndim != len(shape) or any(d is not None and d != s for d, s in zip(shape[1:],
                                                                              data.shape[1:])):
        raise ValueError(f"verification_data must have shape {tuple(shape)} (None: any). "
                         f"Received: shape={data.shape}")
    return data.astype(spec["dtype"])


def _reference_outputs(model, preprocessing, data, preprocessed=False):
    """The Keras model's flat outputs on `data` as numpy arrays: `data` goes through
    `preprocessing` first, if given; `preprocessed=True` marks channels_last pixel values
    that came out of a `DeiTPreprocessing` (transposed for a channels_first model)."""
    import keras

    if preprocessed and getattr(model, "data_format", "") == "channels_first":
        data = np.transpose(data, (0, 3, 1, 2))
    serve = _serving_function(model, preprocessing)
    return {k: np.asarray(keras.ops.convert_to_numpy(v)) for k, v in serve(data).items()}


def _compare_outputs(outputs, reference, tolerance, backend=None):
    """A `Verification` of `outputs` against `reference` (both {name: array})."""
    import keras

    if set(outputs) != set(reference):
        raise ExportError(f"the artifact's outputs {sorted(outputs)} are not the model's "
                          f"{sorted(reference)}")
    per_output = {k: float(np.max(np.abs(outputs[k].astype("float64") -
                                         reference[k].astype("float64"))))
                  for k in sorted(reference)}
    max_abs = max(per_output.values())
    agreement = None
    if "logits" in reference and reference["logits"].ndim == 2:
        agreement = float(np.mean(outputs["logits"].argmax(-1) == reference["logits"].argmax(-1)))
    return Verification(
        max_abs=max_abs, per_output=per_output, tolerance=tolerance,
        passed=tolerance is None or max_abs <= tolerance, top1_agreement=agreement,
        num_inputs=len(next(iter(reference.values()))),
        backend=backend or keras.backend.backend(),
    )


def sample_photos(count=8, size=(224, 224), seed=0):
    """`count` real uint8 photos (batch, height, width, 3): crops and flips of scikit-learn's two
    sample images, resized to `size` with Pillow (bicubic)."""
    from PIL import Image

    try:
        from sklearn.datasets import load_sample_images
    except ImportError:
        raise MissingDependencyError(
            "sample photos come from scikit-learn, which is not installed. Install it "
            "(pip install scikit-learn) or pass your own images."
        ) from None
    rng = np.random.default_rng(seed)
    photos = load_sample_images().images  # two 427x640 RGB photos
    out = []
    for i in range(count):
        photo = photos[i % len(photos)]
        h, w = photo.shape[:2]
        side = int(rng.integers(min(h, w) // 2, min(h, w) + 1))
        top, left = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
        crop = photo[top:top + side, left:left + side]
        if i % 2:
            crop = crop[:, ::-1]
        image = Image.fromarray(np.ascontiguousarray(crop)).resize(size[::-1], Image.BICUBIC)
        out.append(np.asarray(image))
    return np.stack(out)


def verification_images(spec, processor, pictures):
    """Real images for verifying an artifact of input `spec` (the `keras-deit export` command's):
    `pictures` (PIL images), else sample photos, shaped as the artifact's input: uint8 images,
    or pixel values from `processor`. None (random inputs) without either."""
    from PIL import Image

    free = spec["shape"][1:3]
    if spec["dtype"] == "uint8":
        size = tuple(d if d is not None else s for d, s in zip(free, (56, 48)))
    else:
        size = (256, 256)  # the processor resizes and crops to the model's input
    if pictures:
        arrays = np.stack([np.asarray(p.resize(size[::-1], Image.BICUBIC)) for p in pictures])
    else:
        try:
            arrays = sample_photos(8, size)
        except MissingDependencyError:
            return None
    if spec["dtype"] == "uint8":
        return arrays
    return processor(list(arrays))["pixel_values"]
