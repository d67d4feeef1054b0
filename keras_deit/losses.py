"""Losses of the DeiT heads, as transformers computes them."""

import warnings

import keras
import numpy as np
from keras import ops

from keras_deit.config import PROBLEM_TYPES


def masked_image_modeling_loss(pixel_values, reconstruction, bool_masked_pos, patch_size,
                               data_format="channels_last"):
    """SimMIM's L1 loss on the masked pixels.

    `sum(|reconstruction - pixel_values| * mask) / (number of masked pixels + 1e-5) / channels`,
    where the patch mask is upsampled to pixels. Matches `DeiTForMaskedImageModeling`'s `loss` in
    transformers.

    Args:
        pixel_values: (batch, H, W, C) (or (batch, C, H, W) with data_format="channels_first").
        reconstruction: same shape as `pixel_values`.
        bool_masked_pos: (batch, (H // patch) * (W // patch)), True where a patch was masked.
        patch_size: int, the patch size.

    Returns:
        A scalar.
    """
    if data_format == "channels_first":
        pixel_values = ops.transpose(pixel_values, (0, 2, 3, 1))
        reconstruction = ops.transpose(reconstruction, (0, 2, 3, 1))
    batch, height, width, channels = ops.shape(pixel_values)
    mask = ops.cast(bool_masked_pos, reconstruction.dtype)
    mask = ops.reshape(mask, (batch, height // patch_size, width // patch_size, 1))
    mask = ops.repeat(ops.repeat(mask, patch_size, axis=1), patch_size, axis=2)
    per_pixel = ops.abs(ops.cast(pixel_values, reconstruction.dtype) - reconstruction)
    masked_sum = ops.sum(per_pixel * mask)
    return masked_sum / (ops.sum(mask) + 1e-5) / ops.cast(channels, reconstruction.dtype)


# ---- classification losses by problem type --------------------------------------------------

# The Keras loss names whose default (`from_logits=False`) would read our logits as
# probabilities; `as_logits_loss` swaps them for the logits form.
_LOGITS_LOSSES = {
    "sparse_categorical_crossentropy": "SparseCategoricalCrossentropy",
    "categorical_crossentropy": "CategoricalCrossentropy",
    "binary_crossentropy": "BinaryCrossentropy",
    "categorical_focal_crossentropy": "CategoricalFocalCrossentropy",
    "binary_focal_crossentropy": "BinaryFocalCrossentropy",
}


def _is_integer_dtype(dtype):
    return "int" in keras.backend.standardize_dtype(dtype)


def resolve_problem_type(problem_type, num_labels, labels_dtype):
    """The problem type transformers picks when `problem_type` is unset.

    `num_labels == 1` -> "regression"; integer labels -> "single_label_classification";
    anything else (float or bool labels) -> "multi_label_classification".

    Args:
        problem_type: None or one of `PROBLEM_TYPES` (returned unchanged when set).
        num_labels: int, width of the logits.
        labels_dtype: the labels' dtype (any form `keras.backend.standardize_dtype` reads).
    """
    if problem_type is not None:
        if problem_type not in PROBLEM_TYPES:
            raise ValueError(
                f"`problem_type` must be None or one of {PROBLEM_TYPES}. "
                f"Received: problem_type={problem_type!r}"
            )
        return problem_type
    if num_labels == 1:
        return "regression"
    if _is_integer_dtype(labels_dtype):
        return "single_label_classification"
    return "multi_label_classification"


def reads_float_rows_as_multi_label(problem_type, num_labels, labels_dtype):
    """Whether transformers' rule (`problem_type` unset) takes these labels as multi-label
    targets only because they are floats: rows that may as well be soft targets (mixup, cutmix,
    label smoothing), which single-label training reads with softmax cross-entropy.

    Bool labels are multi-hot by nature and give False, as do integer ids and regression.
    """
    dtype = keras.backend.standardize_dtype(labels_dtype)
    return (problem_type is None and dtype != "bool"
            and resolve_problem_type(None, num_labels, dtype) == "multi_label_classification")


def warn_float_rows_read_as_multi_label(owner, labels):
    """Warns once per `owner` (a model) when `reads_float_rows_as_multi_label` holds for its
    `config` and `labels`, naming both ways to say what the rows are.

    Args:
        owner: a model with a `config` (`problem_type`, `num_labels`); it records the warning.
        labels: the targets (anything with a `dtype`), or None.
    """
    config = owner.config
    if (getattr(owner, "_warned_float_rows", False) or labels is None
            or not hasattr(labels, "dtype")
            or not reads_float_rows_as_multi_label(config.problem_type, config.num_labels,
                                                   labels.dtype)):
        return
    owner._warned_float_rows = True
    warnings.warn(
        f"{type(owner).__name__} got float labels of shape {tuple(labels.shape)} and its "
        "problem_type is unset, so it trains as a multi-label classifier (sigmoid "
        "cross-entropy), as transformers does. For soft targets (mixup, cutmix, label "
        "smoothing) set problem_type='single_label_classification' (softmax cross-entropy); "
        "for multi-label targets set problem_type='multi_label_classification' to silence "
        "this warning. Set it in the config before compiling, e.g. "
        "`model.config.problem_type = ...` or `config.replace(problem_type=...)`.",
        UserWarning,
        stacklevel=2,
    )


def check_classification_labels(labels, num_labels, problem_type=None, batch_size=None,
                                check_values=True):
    """Raises a `ValueError` naming the problem and the fix when `labels` cannot train the head.

    Shapes are checked always; values too when `check_values` and `labels` is a concrete array
    (class ids in `[0, num_labels)`, multi-label targets in [0, 1]). Symbolic tensors (inside a
    traced step, or a dataset's `element_spec`) get the shape checks only.

    Args:
        labels: an array, a backend tensor, or anything with `shape` and `dtype`.
        num_labels: int, width of the logits.
        problem_type: None or one of `PROBLEM_TYPES`.
        batch_size: optional int, the number of images the labels go with.
        check_values: bool, also read the values (a device-to-host copy for backend tensors).

    Returns:
        The resolved problem type.
    """
    shape = tuple(labels.shape)
    dtype = keras.backend.standardize_dtype(labels.dtype)
    if num_labels == 0:
        raise ValueError(
            "This model has no classifier (num_labels=0): its `logits` are the class token's "
            "features. Build it with num_labels > 0 (e.g. `from_pretrained(..., num_labels=10)`) "
            "or compile it with a loss of your own."
        )
    kind = resolve_problem_type(problem_type, num_labels, dtype)
    batch = shape[0] if shape else None
    if batch_size is not None and batch is not None and batch != batch_size:
        raise ValueError(
            f"Got {batch_size} images but {batch} labels. Received: labels shape={shape}. "
            "Pass one label (row) per image."
        )
    per_sample = shape[1:]
    if kind == "single_label_classification":
        if _is_integer_dtype(dtype):
            if per_sample not in ((), (1,)):
                hint = (
                    " These look like one-hot or multi-hot rows: pass class ids "
                    "(`labels.argmax(-1)`), or float rows for soft targets (single-label) or "
                    "multi-label targets (problem_type='multi_label_classification')."
                    if per_sample == (num_labels,)
                    else ""
                )
                raise ValueError(
                    "Single-label classification takes one integer class id per image, shape "
                    f"(batch,) or (batch, 1). Received: labels shape={shape}, dtype={dtype}.{hint}"
                )
        elif per_sample != (num_labels,):
            raise ValueError(
                "Single-label classification takes integer class ids (batch,), or float "
                f"soft targets (batch, {num_labels}). Received: labels shape={shape}, "
                f"dtype={dtype}. Cast class ids to int (`labels.astype('int32')`)."
            )
    elif kind == "multi_label_classification":
        if per_sample != (num_labels,):
            hint = (
                " Float labels mean multi-label targets when `problem_type` is unset (the "
                "transformers rule): if these are class ids, cast them to int "
                "(`labels.astype('int32')`)."
                if per_sample in ((), (1,)) and problem_type is None
                else ""
            )
            raise ValueError(
                f"Multi-label classification takes (batch, {num_labels}) targets in [0, 1]. "
                f"Received: labels shape={shape}, dtype={dtype}.{hint}"
            )
    else:  # regression
        expected = ((), (1,)) if num_labels == 1 else ((num_labels,),)
        if per_sample not in expected:
            raise ValueError(
                f"Regression with num_labels={num_labels} takes targets of shape "
                f"{'(batch,) or (batch, 1)' if num_labels == 1 else f'(batch, {num_labels})'}. "
                f"Received: labels shape={shape}."
            )
    values = _concrete_values(labels) if check_values else None
    if values is None or values.size == 0:
        return kind
    if kind == "single_label_classification" and _is_integer_dtype(dtype):
        bad = values[(values < 0) | (values >= num_labels)]
        if bad.size:
            hint = (
                " -100 is PyTorch's ignore_index, which this loss does not use: drop those "
                "images, or give them a valid label and sample_weight 0."
                if (bad == -100).any()
                else f" Build the model with num_labels={max(int(values.max()) + 1, num_labels)} "
                "(e.g. `from_pretrained(source, num_labels=...)`) or remap the labels to "
                f"0..{num_labels - 1}."
            )
            raise ValueError(
                f"Class ids must be in [0, {num_labels}) for a head with num_labels={num_labels}. "
                f"Received: labels with values {sorted(set(bad.ravel().tolist()))[:10]}.{hint}"
            )
    if kind == "multi_label_classification":
        if values.min() < 0 or values.max() > 1:
            raise ValueError(
                "Multi-label targets must lie in [0, 1] (sigmoid cross-entropy). Received: "
                f"labels with values in [{values.min()}, {values.max()}]. For class ids, use "
                "integer labels (single-label classification)."
            )
    return kind


def _concrete_values(x):
    """A numpy copy of `x` when it holds values now (not a symbolic or traced tensor, nor a
    spec such as a dataset's `tf.TensorSpec`); None otherwise."""
    if isinstance(x, np.ndarray):
        return x
    if isinstance(x, keras.KerasTensor) or not hasattr(x, "shape"):
        return None
    try:
        values = np.asarray(keras.ops.convert_to_numpy(x))
    except Exception:  # A tf.function / jax tracer: shape checks only.
        return None
    # numpy wraps what it cannot read (a `tf.TensorSpec`) in a 0-d object array, which has no
    # values to compare: shape checks only.
    if values.dtype == object or values.shape != tuple(x.shape):
        return None
    return values


def is_dataset(x):
    """Whether `x` is a `tf.data.Dataset` (checked without importing TensorFlow)."""
    return hasattr(x, "element_spec") and type(x).__module__.startswith("tensorflow")


def dataset_spec(dataset):
    """The (inputs, targets) specs of a `tf.data.Dataset`'s elements, for checks before `fit`.

    An element is `x`, `(x,)`, `(x, y)` or `(x, y, sample_weight)`, as Keras reads it; `x` may
    be a dict. The specs (`tf.TensorSpec`) have a `shape` with `None` for unknown sizes (the
    batch) and a `dtype`, but no values: the checks that read values skip them.

    Returns:
        (x_spec, y_spec), y_spec None when the elements carry no targets.
    """
    spec = dataset.element_spec
    if isinstance(spec, tuple):
        return spec[0], spec[1] if len(spec) > 1 else None
    return spec, None


def _weighted_mean(per_sample, sample_weight):
    """Keras' "sum_over_batch_size" reduction: sum(loss * weight) / batch."""
    if sample_weight is not None:
        weight = ops.reshape(ops.cast(sample_weight, per_sample.dtype), (-1,))
        per_sample = per_sample * weight
    return ops.mean(per_sample)


def softmax_cross_entropy(labels, logits):
    """Per-sample softmax cross-entropy, float32.

    Args:
        labels: integer class ids (batch,) or (batch, 1), or float targets (batch, classes)
            (one-hot, label-smoothed or mixed-up rows).
        logits: (batch, classes).

    Returns:
        (batch,) losses.
    """
    log_probs = ops.log_softmax(ops.cast(logits, "float32"), axis=-1)
    if _is_integer_dtype(labels.dtype):
        labels = ops.one_hot(ops.reshape(labels, (-1,)), ops.shape(logits)[-1], dtype="float32")
    return -ops.sum(ops.cast(labels, "float32") * log_probs, axis=-1)


def sigmoid_cross_entropy(labels, logits):
    """Per-sample sigmoid cross-entropy, averaged over the labels (transformers' BCEWithLogits).

    Args:
        labels: (batch, classes) targets in [0, 1].
        logits: (batch, classes).

    Returns:
        (batch,) losses.
    """
    logits = ops.cast(logits, "float32")
    labels = ops.cast(labels, "float32")
    # max(x, 0) - x * z + log(1 + exp(-|x|)): no overflow for large |x|.
    per_label = ops.relu(logits) - logits * labels + ops.log1p(ops.exp(-ops.abs(logits)))
    return ops.mean(per_label, axis=-1)


def classification_loss(labels, logits, problem_type=None, sample_weight=None):
    """The loss transformers' classification heads compute, picked by problem type.

    - "regression": mean squared error (`num_labels == 1`: logits and labels squeezed);
    - "single_label_classification": softmax cross-entropy on integer class ids; float rows of
      shape (batch, num_labels) are taken as soft targets (mixup / label smoothing);
    - "multi_label_classification": sigmoid cross-entropy averaged over the labels.
    With `problem_type=None` the type follows `resolve_problem_type`. Computed in float32, so it
    is safe under mixed precision.

    Args:
        labels: (batch,) / (batch, 1) integer ids, or (batch, num_labels) targets.
        logits: (batch, num_labels).
        problem_type: None or one of `PROBLEM_TYPES`.
        sample_weight: optional (batch,) weights; reduced as Keras does (sum / batch).

    Returns:
        A float32 scalar.
    """
    num_labels = logits.shape[-1]
    # Shapes only: reading the values each step would cost a device sync.
    kind = check_classification_labels(labels, num_labels, problem_type, check_values=False)
    if kind == "regression":
        logits = ops.cast(logits, "float32")
        labels = ops.reshape(ops.cast(labels, "float32"), ops.shape(logits))
        per_sample = ops.mean(ops.square(logits - labels), axis=-1)
    elif kind == "single_label_classification":
        per_sample = softmax_cross_entropy(labels, logits)
    else:
        per_sample = sigmoid_cross_entropy(labels, logits)
    return _weighted_mean(per_sample, sample_weight)


def as_logits_loss(loss):
    """Maps Keras' cross-entropy loss names to their `from_logits=True` objects.

    The DeiT heads output logits, so `loss="sparse_categorical_crossentropy"` (whose default
    reads probabilities) becomes `SparseCategoricalCrossentropy(from_logits=True)`; likewise
    for "categorical_crossentropy", "binary_crossentropy" and the focal variants. Dicts and lists
    are mapped entry by entry; anything else is returned unchanged, and a cross-entropy object
    built with `from_logits=False` gets a warning.
    """
    if isinstance(loss, dict):
        return {key: as_logits_loss(value) for key, value in loss.items()}
    if isinstance(loss, (list, tuple)):
        return type(loss)(as_logits_loss(value) for value in loss)
    if isinstance(loss, str) and loss in _LOGITS_LOSSES:
        return getattr(keras.losses, _LOGITS_LOSSES[loss])(from_logits=True)
    if type(loss).__name__ in _LOGITS_LOSSES.values() and not getattr(loss, "from_logits", True):
        warnings.warn(
            f"{type(loss).__name__}(from_logits=False) reads the model's outputs as "
            "probabilities, but the DeiT heads output logits: pass from_logits=True.",
            stacklevel=3,
        )
    return loss
