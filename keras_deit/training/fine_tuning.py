"""Fine-tuning helpers: a new input size, backbone transfer, and DeiT's AdamW set-up.

- `rebuild_at_image_size`: the same model for another resolution (e.g. 224 -> 384), with the
  position embeddings resampled once, as DeiT fine-tunes at 384; the new model keeps a static
  input size (unlike `interpolate_pos_encoding=True`, which resamples on every call).
- `transfer_backbone_weights`: copies variables between models by path, e.g. a SimMIM-trained
  encoder into a classifier, and reports what it skipped.
- `deit_adamw`: AdamW without weight decay on norms, biases, tokens and position embeddings.
"""

import dataclasses
import re

import keras
from keras import ops

from keras_deit.layers.embeddings import resample_position_embeddings

# Variables that get no weight decay: LayerNorm scale and offset, every bias, DeiT III's
# LayerScale, the learned tokens and the position embeddings (timm's rule for DeiT: 1-D
# parameters plus `no_weight_decay()`). Keras matches them with `re.search` against the
# variable's name, which is "gamma" on JAX and torch but the full path with a ":0" suffix
# ("encoder/layer_0/layernorm_before/gamma:0") on TensorFlow: hence the optional parts.
NO_WEIGHT_DECAY_PATTERNS = (
    r"(?:^|/)(?:gamma|beta|ls1|ls2)(?::\d+)?$",
    r"bias(?::\d+)?$",
    r"(?:^|/)(?:cls_token|distillation_token|mask_token|position_embeddings)(?::\d+)?$",
)


def deit_adamw(learning_rate=5e-4, weight_decay=0.05, **kwargs):
    """`keras.optimizers.AdamW` with DeiT's weight-decay exclusions.

    LayerNorm gamma/beta, all biases, LayerScale vectors, the class/distillation/mask tokens
    and the position embeddings are excluded (`NO_WEIGHT_DECAY_PATTERNS`); kernels decay. The
    defaults are DeiT's (lr 5e-4 for a batch of 512, scale it linearly; weight decay 0.05).

    Args:
        learning_rate: float or a `keras.optimizers.schedules.LearningRateSchedule`.
        weight_decay: float.
        **kwargs: passed to `keras.optimizers.AdamW` (`beta_1`, `epsilon`, `clipnorm`, ...).

    Returns:
        An unbuilt `keras.optimizers.AdamW`.
    """
    optimizer = keras.optimizers.AdamW(
        learning_rate=learning_rate, weight_decay=weight_decay, **kwargs
    )
    optimizer.exclude_from_weight_decay(var_names=list(NO_WEIGHT_DECAY_PATTERNS))
    return optimizer


def is_excluded_from_weight_decay(variable):
    """Whether `deit_adamw` leaves `variable` (a Keras variable) without weight decay."""
    return any(re.search(pattern, variable.name) for pattern in NO_WEIGHT_DECAY_PATTERNS)


def rebuild_at_image_size(model, image_size):
    """The same model for another input size, position embeddings resampled once.

    Builds `type(model)` with `config.image_size = image_size` and the same options, and
    copies every variable; the position embeddings are resampled from the old patch grid to
    the new one (`resample_position_embeddings`). The new model takes only `image_size` inputs
    (a static graph), and gives the same outputs as `model` built with
    `interpolate_pos_encoding=True` on images of that size.

    Args:
        model: a DeiT model (`DeiTModel`, `DeiTForImageClassification`, ...).
        image_size: int or (height, width), divisible by the patch size.

    Returns:
        A new model of the same class.

    Example:
        ```python
        model = DeiTForImageClassification.from_pretrained(source, num_labels=10)
        model384 = rebuild_at_image_size(model, 384)
        ```
    """
    config = getattr(model, "config", None)
    if config is None or not hasattr(model, "get_config"):
        raise ValueError(
            "`model` must be a keras_deit model (DeiTModel, DeiTForImageClassification, ...). "
            f"Received: model of type {type(model).__name__}"
        )
    new_config = config.replace(
        image_size=tuple(image_size) if isinstance(image_size, (list, tuple)) else image_size
    )
    options = dict(model.get_config(), config=new_config)
    new_model = type(model).from_config(options)
    prefix = config.num_position_prefix_tokens
    pairs = list(zip(model.weights, new_model.weights))
    if len(model.weights) != len(new_model.weights) or any(
        old.path != new.path for old, new in pairs
    ):
        raise ValueError(
            f"Rebuilding {type(model).__name__} gave a different set of variables; this model "
            "cannot be resized by this helper."
        )
    for old, new in pairs:
        value = old.value
        if old.path.endswith("position_embeddings") and tuple(old.shape) != tuple(new.shape):
            value = resample_position_embeddings(value, config.grid_size, new_config.grid_size,
                                                 prefix)
        _assign_copy(new, value)
    return new_model


@dataclasses.dataclass
class TransferReport:
    """What `transfer_backbone_weights` did, by variable path.

    Attributes:
        copied: paths assigned from the source.
        resampled: paths whose position embeddings were resampled to the target's grid.
        skipped: source paths the target lacks (e.g. `embeddings/mask_token`, `decoder/...`).
        missing: target paths the source lacks, left as they were (e.g. `classifier/...`).
    """

    copied: list
    resampled: list
    skipped: list
    missing: list


def transfer_backbone_weights(source, target, resample=True):
    """Copies the variables `source` and `target` share, matched by variable path.

    Meant for moving a backbone between task models: the SimMIM encoder (`mim.deit`, or the
    whole `DeiTForMaskedImageModeling`) into a classifier (`model.deit`, or the whole model).
    Paths are relative to the DeiT backbone (`embeddings/cls_token`, `encoder/layer_0/...`,
    `layernorm/gamma`), so both sub-models and whole models work. Variables only one side has
    are reported, not copied: the SimMIM `mask_token` and decoder, a fresh classifier.

    Args:
        source, target: Keras models or layers holding DeiT variables.
        resample: bool, resample position embeddings when the two image sizes differ (both
            sides must carry a `config`, as every keras_deit model does); if False, such a
            difference raises.

    Returns:
        A `TransferReport`.

    Raises:
        ValueError: on a shared path whose shapes differ (other than resampled position
            embeddings), or duplicate paths.
    """
    source_vars, target_vars = _by_path(source, "source"), _by_path(target, "target")
    report = TransferReport(copied=[], resampled=[], skipped=[], missing=[])
    assignments = []
    for path, variable in target_vars.items():
        if path not in source_vars:
            report.missing.append(path)
            continue
        value = source_vars[path].value
        if tuple(value.shape) != tuple(variable.shape):
            if not (resample and path.endswith("position_embeddings")):
                raise ValueError(
                    f"Variable {path!r} has shape {tuple(value.shape)} in the source but "
                    f"{tuple(variable.shape)} in the target. Received: source "
                    f"{type(source).__name__}, target {type(target).__name__}. Build both from "
                    "the same architecture (for another image size, pass resample=True)."
                )
            value = _resample_between(value, source, target, path)
            report.resampled.append(path)
        assignments.append((variable, value))
        report.copied.append(path)
    report.skipped = [path for path in source_vars if path not in target_vars]
    # Assign only after every check passed, so a failure leaves the target untouched.
    for variable, value in assignments:
        _assign_copy(variable, value)
    return report


def _assign_copy(variable, value):
    """Assigns a copy of `value`, cast to the variable's dtype.

    On JAX the assigned array would otherwise be shared with the source, and `fit` frees the
    target's arrays as it replaces them.
    """
    variable.assign(ops.copy(ops.cast(value, variable.dtype)))


def _by_path(layer, what):
    variables = {}
    for variable in layer.weights:
        if variable.path in variables:
            raise ValueError(
                f"Two variables of the {what} share the path {variable.path!r}; match them by "
                f"hand. Received: {type(layer).__name__}."
            )
        variables[variable.path] = variable
    return variables


def _resample_between(value, source, target, path):
    configs = getattr(source, "config", None), getattr(target, "config", None)
    if None in configs:
        raise ValueError(
            f"Cannot resample {path!r}: the source and target must be keras_deit models (with a "
            f"`config`). Received: {type(source).__name__} and {type(target).__name__}."
        )
    src, dst = configs
    prefix = src.num_position_prefix_tokens
    if prefix != dst.num_position_prefix_tokens:
        raise ValueError(
            f"The source and target of {path!r} have different prefix tokens "
            f"({prefix} vs {dst.num_position_prefix_tokens} position entries). Use models "
            "that both have (or both lack) the distillation token."
        )
    return resample_position_embeddings(value, src.grid_size, dst.grid_size, prefix)

