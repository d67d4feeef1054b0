"""The classifiers: `DeiTForImageClassification` (class token) and
`DeiTForImageClassificationWithTeacher` (class and distillation tokens, averaged)."""

import keras

from keras_deit import keras_native
from keras_deit.layers.projection import projection
from keras_deit.losses import classification_loss, warn_float_rows_read_as_multi_label
from keras_deit.models.backbone import build_backbone, forward_extras, pixel_values_input
from keras_deit.models.base import DeiTPreTrainedModel, as_config

def _classifier(config, name, dtype):
    """Dense(num_labels) on a token; None (identity) when `num_labels` is 0, as transformers."""
    if config.num_labels == 0:
        return None
    return projection(config.num_labels, config.initializer_range, dtype, name)


@keras.saving.register_keras_serializable(package="keras_deit")
class DeiTForImageClassification(DeiTPreTrainedModel):
    """DeiT with a linear classifier on the class token (transformers' class of that name).

    This is the fine-tuning head: a distilled backbone keeps its distillation token, but only
    the class token is classified. For a checkpoint stored as ViT (the non-distilled
    facebook/deit-*), this is ViTForImageClassification.

    Args:
        config: a `DeiTConfig`; `num_labels` sets the classifier width.
        Other arguments as in `DeiTModel`.

    Outputs:
        dict: `logits` (batch, num_labels), plus `hidden_states` / `attentions` if requested.
    """

    def __init__(self, config, dtype=None, **kwargs):
        config = as_config(config)
        requested_dtype, dtype = dtype, keras_native.layer_policy(dtype)
        options = self._take_options(kwargs)
        interpolate_pos_encoding = options["interpolate_pos_encoding"]
        data_format = options["data_format"]

        # === Layers ===
        deit = build_backbone(config, dtype=dtype, **options)
        classifier = _classifier(config, "classifier", dtype)

        # === Functional model ===
        images, pixel_values = pixel_values_input(
            config, interpolate_pos_encoding, data_format, options["include_preprocessing"]
        )
        encoded = deit.encode(pixel_values)
        class_token = encoded["last_hidden_state"][:, 0]
        logits = classifier(class_token) if classifier is not None else class_token
        outputs = forward_extras(encoded, {"logits": logits})
        super().__init__(inputs=images, outputs=outputs, dtype=requested_dtype, **kwargs)

        # === Config ===
        self.deit = deit
        self.classifier = classifier
        self._set_options(config, dict(options, head_mask=deit.head_mask))

    _primary_output = "logits"

    def default_loss(self, x, y, y_pred, sample_weight=None):
        """The transformers loss for `config.problem_type` on `logits`.

        None -> `num_labels == 1`: MSE; integer labels: softmax cross-entropy; float labels:
        sigmoid cross-entropy (multi-label), with a one-time warning naming
        problem_type="single_label_classification" for soft targets. See
        `losses.classification_loss`.
        """
        if y is None:
            self._check_labels(x, y)  # Names the fix.
        warn_float_rows_read_as_multi_label(self, y)
        return classification_loss(y, y_pred["logits"], self.config.problem_type, sample_weight)

    def _check_targets(self, x, y):
        self._check_labels(x, y)


@keras.saving.register_keras_serializable(package="keras_deit")
class DeiTForImageClassificationWithTeacher(DeiTPreTrainedModel):
    """Distilled DeiT with a class head and a distillation head, averaged at inference.

    `cls_logits` classify the class token, `distillation_logits` the distillation token, and
    `logits = (cls_logits + distillation_logits) / 2` is the prediction the paper reports.
    Training the distillation head needs a teacher: see `keras_deit.training.distillation`.

    Args:
        config: a `DeiTConfig` with `use_distillation_token=True`.
        Other arguments as in `DeiTModel`.

    Outputs:
        dict: `logits`, `cls_logits`, `distillation_logits` (batch, num_labels), plus
        `hidden_states` / `attentions` if requested.
    """

    def __init__(self, config, dtype=None, **kwargs):
        config = as_config(config)
        requested_dtype, dtype = dtype, keras_native.layer_policy(dtype)
        if not config.use_distillation_token:
            raise ValueError(
                "DeiTForImageClassificationWithTeacher needs a distillation token, and this "
                "config has none (use_distillation_token=False, e.g. a checkpoint stored as ViT). "
                "Use DeiTForImageClassification for it."
            )
        options = self._take_options(kwargs)
        interpolate_pos_encoding = options["interpolate_pos_encoding"]
        data_format = options["data_format"]

        # === Layers ===
        deit = build_backbone(config, dtype=dtype, **options)
        cls_classifier = _classifier(config, "cls_classifier", dtype)
        distillation_classifier = _classifier(config, "distillation_classifier", dtype)

        # === Functional model ===
        images, pixel_values = pixel_values_input(
            config, interpolate_pos_encoding, data_format, options["include_preprocessing"]
        )
        encoded = deit.encode(pixel_values)
        sequence = encoded["last_hidden_state"]
        cls_logits, distillation_logits = sequence[:, 0], sequence[:, 1]
        if cls_classifier is not None:
            cls_logits = cls_classifier(cls_logits)
            distillation_logits = distillation_classifier(distillation_logits)
        outputs = {
            "logits": (cls_logits + distillation_logits) / 2,
            "cls_logits": cls_logits,
            "distillation_logits": distillation_logits,
        }
        super().__init__(
            inputs=images, outputs=forward_extras(encoded, outputs),
            dtype=requested_dtype, **kwargs,
        )

        # === Config ===
        self.deit = deit
        self.cls_classifier = cls_classifier
        self.distillation_classifier = distillation_classifier
        self._set_options(config, dict(options, head_mask=deit.head_mask))

    _primary_output = "logits"

    def default_loss(self, x, y, y_pred, sample_weight=None):
        """Both heads trained on the labels: the mean of the problem-type loss of each head.

        This is fine-tuning without a teacher (transformers does not support training this
        class). Each head learns the labels, so their average, `logits`, stays a sound
        prediction. It differs from facebookresearch/deit's `distillation_type="none"`, which
        trains the class head only and leaves the distillation head as it was; for that, and for
        training with a teacher, use `keras_deit.training.distillation.DeiTDistiller`.
        """
        if y is None:
            self._check_labels(x, y)  # Names the fix.
        warn_float_rows_read_as_multi_label(self, y)
        problem_type = self.config.problem_type
        cls_loss = classification_loss(y, y_pred["cls_logits"], problem_type, sample_weight)
        distillation_loss = classification_loss(
            y, y_pred["distillation_logits"], problem_type, sample_weight
        )
        return (cls_loss + distillation_loss) / 2

    def _check_targets(self, x, y):
        self._check_labels(x, y)
