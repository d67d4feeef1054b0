"""Training a distilled DeiT with a teacher: DeiT's distillation losses and `DeiTDistiller`.

The losses follow facebookresearch/deit's `DistillationLoss`: the class head learns the labels,
the distillation head learns the teacher, and the total is

    (1 - alpha) * CE(cls_logits, labels) + alpha * KD(distillation_logits, teacher_logits)

with KD either "hard" (cross-entropy on the teacher's argmax, the paper's best) or "soft"
(temperature-scaled KL divergence). The teacher is a training concern, not a model layer: it
lives in `DeiTDistiller`, which wraps the student and trains it with `fit`.
"""

import warnings

import keras
from keras import ops
# Keras' own per-replica loss scaling (its `Loss` applies it; a custom `compute_loss` must).
from keras_deit.keras_internals import scale_loss_for_distribution, unscale_loss_for_distribution

from keras_deit.checks import TrainerEntryChecks
from keras_deit.losses import (
    _weighted_mean,
    as_logits_loss,
    check_classification_labels,
    classification_loss,
    dataset_spec,
    is_dataset,
    resolve_problem_type,
    softmax_cross_entropy,
)

DISTILLATION_TYPES = ("none", "soft", "hard")
# The student is a single-label classifier (softmax heads, see `_check_student`), so float label
# rows are soft targets (mixup, cutmix, label smoothing), as deit's SoftTargetCrossEntropy reads
# them, never multi-label targets.
_PROBLEM_TYPE = "single_label_classification"
SOFT_NORMALIZATIONS = ("deit", "timm")


def soft_distillation_loss(student_logits, teacher_logits, tau=1.0, normalization="deit",
                           sample_weight=None):
    """Temperature-scaled KL divergence from the teacher's distribution to the student's.

    `sum KL(softmax(teacher / tau) || softmax(student / tau)) * tau**2`, computed from
    log-probabilities on both sides (deit's `F.kl_div(..., log_target=True)`), divided by
    `batch * classes` with `normalization="deit"` (facebookresearch/deit, the legacy PyTorch
    "mean") or by `batch` with `"timm"` (timm's token distillation, "batchmean").

    Args:
        student_logits: (batch, classes), the distillation head.
        teacher_logits: (batch, classes); no gradient flows into them.
        tau: float > 0, the temperature.
        normalization: "deit" or "timm".
        sample_weight: optional (batch,) weights on each sample's KL.

    Returns:
        A float32 scalar.
    """
    _check_normalization(normalization)
    student = ops.log_softmax(ops.cast(student_logits, "float32") / tau, axis=-1)
    teacher = ops.log_softmax(
        ops.stop_gradient(ops.cast(teacher_logits, "float32")) / tau, axis=-1
    )
    per_sample = ops.sum(ops.exp(teacher) * (teacher - student), axis=-1) * (tau * tau)
    if normalization == "deit":
        # Summed, then divided by the number of logits: mean over batch of KL / classes.
        per_sample = per_sample / ops.cast(ops.shape(student)[-1], "float32")
    return _weighted_mean(per_sample, sample_weight)


def hard_distillation_loss(student_logits, teacher_logits, sample_weight=None):
    """Cross-entropy of the student against the teacher's predicted class (hard labels).

    Args:
        student_logits: (batch, classes), the distillation head.
        teacher_logits: (batch, classes); only their argmax is used.
        sample_weight: optional (batch,) weights.

    Returns:
        A float32 scalar.
    """
    teacher_labels = ops.argmax(ops.stop_gradient(ops.convert_to_tensor(teacher_logits)), axis=-1)
    return _weighted_mean(softmax_cross_entropy(teacher_labels, student_logits), sample_weight)


def distillation_loss(labels, cls_logits, distillation_logits, teacher_logits=None,
                      distillation_type="hard", alpha=0.5, tau=1.0, soft_normalization="deit",
                      problem_type=_PROBLEM_TYPE, sample_weight=None):
    """DeiT's total training loss (facebookresearch/deit `DistillationLoss`).

    `"none"`: the label loss of the class head alone (deit returns its base loss of the class
    output, and the distillation head gets no gradient); `"soft"` / `"hard"`:
    `(1 - alpha) * base + alpha * KD`, see `soft_distillation_loss`, `hard_distillation_loss`.
    The base loss is `losses.classification_loss`, single-label by default (integer ids:
    cross-entropy; float rows (batch, classes): soft targets, for mixup / label smoothing).

    Args:
        labels: (batch,) class ids or (batch, classes) soft targets.
        cls_logits, distillation_logits: (batch, classes), the student's two heads.
        teacher_logits: (batch, classes), required unless `distillation_type="none"`.
        distillation_type: "none", "soft" or "hard".
        alpha: float in [0, 1], the weight of the distillation term.
        tau: float > 0, the soft-distillation temperature.
        soft_normalization: "deit" or "timm", see `soft_distillation_loss`.
        problem_type: the base loss's problem type ("single_label_classification"; None
            applies transformers' rule, which reads float rows as multi-label targets).
        sample_weight: optional (batch,) weights.

    Returns:
        A float32 scalar.
    """
    base = classification_loss(labels, cls_logits, problem_type, sample_weight)
    return _combine(base, distillation_logits, teacher_logits, distillation_type, alpha, tau,
                    soft_normalization, sample_weight)[0]


def _combine(base, distillation_logits, teacher_logits, distillation_type, alpha, tau,
             normalization, sample_weight):
    """(total, kd) from the base loss; kd is None for "none"."""
    if distillation_type == "none":
        return base, None
    if teacher_logits is None:
        raise ValueError(
            f"distillation_type={distillation_type!r} needs teacher logits. Received: "
            "teacher_logits=None. Pass a teacher, or use distillation_type='none'."
        )
    if distillation_type == "soft":
        kd = soft_distillation_loss(distillation_logits, teacher_logits, tau, normalization,
                                    sample_weight)
    else:
        kd = hard_distillation_loss(distillation_logits, teacher_logits, sample_weight)
    return base * (1.0 - alpha) + kd * alpha, kd


def _check_normalization(normalization):
    if normalization not in SOFT_NORMALIZATIONS:
        raise ValueError(
            f"`soft_normalization` must be one of {SOFT_NORMALIZATIONS}. Received: "
            f"soft_normalization={normalization!r}"
        )


def _pixel_values(inputs):
    return inputs["pixel_values"] if isinstance(inputs, dict) else inputs


def _first_logits(outputs):
    """The logits in what a teacher returns: a tensor, a dict with `logits`, or a sequence."""
    if isinstance(outputs, dict):
        if "logits" not in outputs:
            raise ValueError(
                "The teacher returned a dict without `logits`. Received: keys "
                f"{sorted(outputs)}. Wrap the teacher in a function that returns its logits."
            )
        return outputs["logits"]
    if isinstance(outputs, (list, tuple)):
        return outputs[0]
    return outputs


@keras.saving.register_keras_serializable(package="keras_deit")
class DeiTDistiller(TrainerEntryChecks, keras.Model):
    """Trains a `DeiTForImageClassificationWithTeacher` student against a frozen teacher.

    A `keras.Model` whose `call` is the student's; `compute_loss` adds the teacher (DeiT's
    `DistillationLoss`, see `distillation_loss`), so `compile`, `fit`, `evaluate`, `predict`
    and `.keras` saving work as usual on every backend. Compiled metrics see the student's
    averaged `logits`, the prediction used at inference; `base_loss` and `distillation_loss`
    (0 with "none") are reported too. After training, use `distiller.student` on its own.

    The teacher is frozen (`trainable = False` is set on a Keras teacher) and runs in inference
    mode on the same images the student sees, after `teacher_preprocessing` if given. Instead
    of a teacher, the data may carry precomputed logits: `x = {"pixel_values": images,
    "teacher_logits": logits}` (these win over the teacher when both exist).

    `distillation_type="none"` matches facebookresearch/deit: only the class head learns the
    labels, and the distillation head is left untrained (its half of `logits` stays as it
    was). To fine-tune both heads on the labels without a teacher, compile the student itself
    (see `DeiTForImageClassificationWithTeacher.default_loss`).

    Args:
        student: a `DeiTForImageClassificationWithTeacher` (any Keras model whose outputs hold
            `cls_logits` and `distillation_logits` works).
        teacher: None, a Keras model / layer, or any callable mapping images to logits (or to
            a dict with `logits`). Needed unless the data carry `teacher_logits` or
            `distillation_type="none"`. Only Keras teachers are saved with the distiller.
        distillation_type: "hard" (default; the paper's best), "soft" or "none".
        alpha: float in [0, 1], weight of the distillation term (0.5).
        tau: float > 0, soft-distillation temperature (1.0).
        soft_normalization: "deit" (KL summed / (batch * classes)) or "timm" (/ batch).
        teacher_preprocessing: optional callable applied to the student's images before the
            teacher (e.g. another normalization or size).

    Inputs:
        `pixel_values` (batch, H, W, C), or a dict with `pixel_values` and optionally
        `teacher_logits` (batch, num_labels).

    Outputs:
        The student's dict: `logits`, `cls_logits`, `distillation_logits`.

    Example:
        ```python
        distiller = DeiTDistiller(student, teacher, distillation_type="hard")
        distiller.compile(keras.optimizers.AdamW(5e-4), metrics=["accuracy"])
        distiller.fit(images, labels, epochs=...)
        student.predict(images)["logits"]
        ```
    """

    def __init__(self, student, teacher=None, distillation_type="hard", alpha=0.5, tau=1.0,
                 soft_normalization="deit", teacher_preprocessing=None, **kwargs):
        if distillation_type not in DISTILLATION_TYPES:
            raise ValueError(
                f"`distillation_type` must be one of {DISTILLATION_TYPES}. Received: "
                f"distillation_type={distillation_type!r}"
            )
        if not isinstance(alpha, (int, float)) or not 0.0 <= alpha <= 1.0:
            raise ValueError(f"`alpha` must be a number in [0, 1]. Received: alpha={alpha!r}")
        if not isinstance(tau, (int, float)) or tau <= 0:
            raise ValueError(f"`tau` must be a positive number. Received: tau={tau!r}")
        _check_normalization(soft_normalization)
        _check_student(student)
        if teacher is not None and not callable(teacher):
            raise ValueError(
                "`teacher` must be a Keras model or a callable returning logits. Received: "
                f"teacher of type {type(teacher).__name__}"
            )
        super().__init__(**kwargs)
        self.student = student
        self.teacher = teacher
        self.teacher_preprocessing = teacher_preprocessing
        self.distillation_type = distillation_type
        self.alpha = float(alpha)
        self.tau = float(tau)
        self.soft_normalization = soft_normalization
        if isinstance(teacher, keras.layers.Layer):
            _freeze(teacher)
        self.base_loss_tracker = keras.metrics.Mean(name="base_loss")
        self.distillation_loss_tracker = keras.metrics.Mean(name="distillation_loss")
        self._has_compiled_loss = False
        self._base_criterion = None
        # The teacher's class count, when it can be read from a symbolic call; else checked
        # on the first array batch (see `_check_teacher_classes`).
        self._teacher_classes = self._symbolic_teacher_classes()
        if self._teacher_classes is not None:
            self._check_teacher_classes(self._teacher_classes, "the teacher's output")
        # Student and teacher are built already, so the distiller has all its variables.
        self.built = True

    @property
    def num_labels(self):
        """The student's number of classes."""
        return _student_num_labels(self.student)

    # ---- forward --------------------------------------------------------------------------
    def call(self, inputs, training=None):
        return self.student(_pixel_values(inputs), training=training)

    def teacher_logits(self, inputs):
        """The teacher's float32 logits (batch, num_labels) for `inputs`, without gradient.

        Read from `inputs["teacher_logits"]` when present, else computed by the teacher on the
        (preprocessed) `pixel_values` in inference mode.
        """
        if isinstance(inputs, dict) and "teacher_logits" in inputs:
            logits = inputs["teacher_logits"]
        else:
            if self.teacher is None:
                raise ValueError(
                    f"distillation_type={self.distillation_type!r} needs a teacher or "
                    "precomputed logits. Received: teacher=None and no 'teacher_logits' in the "
                    "inputs. Pass `teacher=` or x={'pixel_values': ..., 'teacher_logits': ...}."
                )
            images = _pixel_values(inputs)
            if self.teacher_preprocessing is not None:
                images = self.teacher_preprocessing(images)
            if isinstance(self.teacher, keras.layers.Layer):
                logits = self.teacher(images, training=False)
            else:
                logits = self.teacher(images)
            logits = _first_logits(logits)
        return ops.stop_gradient(ops.cast(logits, "float32"))

    # ---- training -------------------------------------------------------------------------
    def compile(self, optimizer="rmsprop", loss=None, loss_weights=None, metrics=None,
                **kwargs):
        """`keras.Model.compile`; `metrics` apply to the student's averaged `logits`.

        With `loss=None` the class head's base loss is `losses.classification_loss` for the
        student's problem type; a loss given here (a single loss, applied to `cls_logits`)
        replaces it, like deit's `base_criterion`. Keras cross-entropy names read logits.
        """
        if isinstance(loss, (dict, list, tuple)):
            raise ValueError(
                "DeiTDistiller takes one base loss, applied to `cls_logits`. Received: "
                f"loss of type {type(loss).__name__}. Pass a single loss (or none)."
            )
        loss = as_logits_loss(loss)
        self._has_compiled_loss = loss is not None
        criterion = keras.losses.get(loss) if loss is not None else None
        if criterion is not None and not isinstance(criterion, keras.losses.Loss):
            criterion = keras.losses.LossFunctionWrapper(criterion)
        self._base_criterion = criterion
        # The loss is passed on so that it is saved with the compile config; it is applied
        # by `compute_loss` below, never through Keras' output-matching.
        super().compile(optimizer=optimizer, loss=loss, loss_weights=loss_weights,
                        metrics=metrics, **kwargs)

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        """`(1 - alpha) * base(cls_logits, y) + alpha * KD(distillation_logits, teacher)`."""
        cls_logits = y_pred["cls_logits"]
        if self._base_criterion is not None:
            # A Keras `Loss` already divides by the replicas; the total is divided once below.
            base = unscale_loss_for_distribution(
                ops.cast(self._base_criterion(y, cls_logits, sample_weight), "float32"))
        else:
            base = classification_loss(y, cls_logits, _PROBLEM_TYPE, sample_weight)
        teacher_logits = None
        # Keras' first symbolic pass only builds state: the teacher need not run there (and a
        # plain-function teacher could not take symbolic tensors).
        symbolic = isinstance(cls_logits, keras.KerasTensor)
        kind = "none" if symbolic else self.distillation_type
        if kind != "none":
            teacher_logits = self.teacher_logits(x)
            self._check_teacher_classes(teacher_logits.shape[-1], "the teacher logits")
        loss, kd = _combine(base, y_pred["distillation_logits"], teacher_logits, kind,
                            self.alpha, self.tau, self.soft_normalization, sample_weight)
        for extra in self.losses:
            loss = loss + ops.sum(ops.cast(extra, "float32"))
        if symbolic:
            return loss
        self.base_loss_tracker.update_state(base)
        if kd is not None:
            self.distillation_loss_tracker.update_state(kd)
        # Under tf.distribute each replica's gradients are summed: divide by replicas.
        return scale_loss_for_distribution(loss)

    def compute_metrics(self, x, y, y_pred, sample_weight=None):
        """Updates the compiled metrics on the averaged `logits`."""
        return super().compute_metrics(x, y, y_pred["logits"], sample_weight)

    # ---- checks before any step (keras_deit.checks.TrainerEntryChecks) --------------------
    def _check_entry(self, method, arguments):
        x = arguments.get("x")
        if method in ("predict", "predict_on_batch"):
            self._check_images(x)
        else:
            validation = arguments.get("validation_data") if method == "fit" else None
            self._check_data(x, arguments.get("y"), validation)

    def _check_images(self, x):
        if hasattr(self.student, "_check_inputs"):
            self.student._check_inputs(_pixel_values(x) if isinstance(x, dict) else x)

    def _check_data(self, x, y, validation_data=None):
        """Raises before Keras runs a step (on JAX a failed step leaves the model's variables
        out of the model): images, labels, teacher logits, the teacher's class count."""
        if isinstance(validation_data, (tuple, list)) and validation_data:
            self._check_data(validation_data[0],
                             validation_data[1] if len(validation_data) > 1 else None)
        elif is_dataset(validation_data):
            self._check_data(validation_data, None)  # the labels come from its spec
        spec = is_dataset(x)
        if spec:
            # Shapes and dtypes only, from the dataset's spec: a spec has no values to read.
            x, y = dataset_spec(x)
        elif x is None or (not isinstance(x, dict) and not hasattr(x, "shape")):
            return  # Generators and PyDatasets: checked inside the step (shapes only).
        if isinstance(x, dict) and "pixel_values" not in x:
            raise ValueError(
                "DeiTDistiller takes images, or a dict with 'pixel_values' (and optionally "
                f"'teacher_logits'). Received: keys {sorted(x)}."
            )
        self._check_images(x)
        images = _pixel_values(x)
        if y is None:
            raise ValueError(
                "DeiTDistiller trains on labels: call `fit(images, labels)`. Received: y=None."
            )
        if hasattr(y, "shape") and not isinstance(y, dict):
            check_classification_labels(y, self.num_labels, _PROBLEM_TYPE,
                                        batch_size=tuple(images.shape)[0])
        if self.distillation_type == "none":
            return
        if isinstance(x, dict) and "teacher_logits" in x:
            shape = tuple(x["teacher_logits"].shape)
            if len(shape) != 2 or shape[0] != tuple(images.shape)[0]:
                raise ValueError(
                    "`teacher_logits` must have shape (batch, num_labels) = "
                    f"({tuple(images.shape)[0]}, {self.num_labels}). Received: teacher_logits "
                    f"shape={shape}."
                )
            self._check_teacher_classes(shape[-1], "teacher_logits")
        elif self.teacher is None:
            self.teacher_logits(x)  # Raises, naming the fix.
        elif self._teacher_classes is None and not spec:
            # A teacher that could not be traced symbolically: one image, eagerly (a dataset's
            # spec has no image to run: the step checks its class count).
            logits = self.teacher_logits(_slice(images))
            self._teacher_classes = int(logits.shape[-1])
            self._check_teacher_classes(self._teacher_classes, "the teacher's output")

    def _check_teacher_classes(self, classes, what):
        if classes is not None and classes != self.num_labels:
            raise ValueError(
                f"The teacher predicts {classes} classes but the student has "
                f"num_labels={self.num_labels}. Received: {what} with {classes} classes. Use a "
                "teacher trained on the student's label set, or rebuild the student with "
                f"num_labels={classes}."
            )

    def _symbolic_teacher_classes(self):
        """The teacher's class count from a symbolic call, or None if it cannot be traced."""
        if self.teacher is None or not isinstance(self.teacher, keras.layers.Layer):
            return None
        shape = getattr(self.student, "input_shape", None)
        if not shape or isinstance(shape, dict) or None in tuple(shape)[1:]:
            return None
        try:
            spec = keras.KerasTensor((1, *tuple(shape)[1:]), dtype="float32")
            logits = self.teacher_logits(spec)
        except Exception:  # Not traceable symbolically: checked eagerly at `fit`.
            return None
        return logits.shape[-1]

    # ---- serialization --------------------------------------------------------------------
    def get_config(self):
        def keras_object(obj, name):
            if obj is None:
                return None
            if isinstance(obj, keras.layers.Layer):
                return keras.saving.serialize_keras_object(obj)
            warnings.warn(
                f"The {name} ({type(obj).__name__}) is not a Keras layer and is not saved: pass "
                "it again when rebuilding the distiller, e.g. "
                "`DeiTDistiller(loaded.student, teacher, ...)`.",
                stacklevel=3,
            )
            return None

        return {
            "name": self.name,
            "trainable": self.trainable,
            "student": keras.saving.serialize_keras_object(self.student),
            "teacher": keras_object(self.teacher, "teacher"),
            "teacher_preprocessing": keras_object(self.teacher_preprocessing,
                                                  "teacher_preprocessing"),
            "distillation_type": self.distillation_type,
            "alpha": self.alpha,
            "tau": self.tau,
            "soft_normalization": self.soft_normalization,
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        for key in ("student", "teacher", "teacher_preprocessing"):
            if config.get(key) is not None:
                config[key] = keras.saving.deserialize_keras_object(config[key])
        return cls(**config)


def _freeze(layer):
    """Makes every variable of `layer` non-trainable.

    Setting `layer.trainable = False` alone is not enough for a functional model rebuilt by
    `from_config` with `trainable=False` (a loaded teacher): Keras sets the flag before it
    tracks the sublayers, and on TensorFlow a second assignment does not reach them either.
    """
    layer.trainable = False
    for variable in layer.weights:
        variable.trainable = False


def _slice(images):
    """The first image of a batch, as a batch of one."""
    return images[:1]


def _student_num_labels(student):
    config = getattr(student, "config", None)
    if config is not None:
        return config.num_labels
    return int(student.output["logits"].shape[-1])


def _check_student(student):
    outputs = getattr(student, "output", None) if isinstance(student, keras.Model) else None
    if not isinstance(outputs, dict) or not {"cls_logits", "distillation_logits"} <= set(outputs):
        raise ValueError(
            "The student must be a DeiTForImageClassificationWithTeacher (a model with "
            "`cls_logits` and `distillation_logits` outputs). Received: student of type "
            f"{type(student).__name__}. Build one with "
            "`DeiTForImageClassificationWithTeacher(config)`."
        )
    config = getattr(student, "config", None)
    if config is not None:
        if config.num_labels == 0:
            raise ValueError(
                "The student has no classifier (num_labels=0). Build it with the number of "
                "classes, e.g. "
                "DeiTForImageClassificationWithTeacher(config.replace(num_labels=10))."
            )
        kind = resolve_problem_type(config.problem_type, config.num_labels, "int32")
        if kind != "single_label_classification":
            raise ValueError(
                "Distillation trains a single-label classifier (softmax heads). Received: "
                f"problem_type={config.problem_type!r}, num_labels={config.num_labels}. Use "
                "problem_type=None or 'single_label_classification' and num_labels > 1."
            )
