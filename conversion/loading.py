"""Filling a Keras DeiT model from a checkpoint: resolve, read, map, check, assign.

Nothing is assigned until every check has passed, and the model is only returned then, so a
failed load never leaves a half-filled model behind.
"""

import dataclasses
import json
import os
import warnings

import numpy as np

from conversion import hf
from conversion.readers import CheckpointError, read_checkpoint

# Weight files of an HF folder, in the order transformers prefers them.
HF_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "tf_model.h5")

# Which of our classes an HF `architectures` entry means.
ARCHITECTURES = {
    "DeiTModel": "DeiTModel",
    "ViTModel": "DeiTModel",
    "DeiTForImageClassification": "DeiTForImageClassification",
    "ViTForImageClassification": "DeiTForImageClassification",
    "DeiTForImageClassificationWithTeacher": "DeiTForImageClassificationWithTeacher",
    "DeiTForMaskedImageModeling": "DeiTForMaskedImageModeling",
    "ViTForMaskedImageModeling": "DeiTForMaskedImageModeling",
}


@dataclasses.dataclass
class LoadingInfo:
    """What a load did besides copying tensors one to one.

    Attributes:
        fresh: our variables left at their initial values (no or mismatched source tensor).
        dropped: source tensors deliberately not used (a head or part the model does not have).
        source: the file the weights came from.
    """

    fresh: list
    dropped: list
    source: str


def find_weights_file(folder, weights_file=None):
    """The weight file of an HF folder: `weights_file` if given, else the preferred one present."""
    if weights_file is not None:
        path = weights_file if os.path.isabs(weights_file) else os.path.join(folder, weights_file)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"No weights file {weights_file!r} in {folder!r}.")
        return path
    present = [name for name in HF_WEIGHT_FILES if os.path.isfile(os.path.join(folder, name))]
    if not present:
        raise FileNotFoundError(
            f"{folder!r} holds no weights file: expected one of {', '.join(HF_WEIGHT_FILES)}."
        )
    return os.path.join(folder, present[0])


def assign_checkpoint(model, tensors, source="<tensors>", strict=True):
    """Copies HF-named tensors into `model` after checking all of them.

    Args:
        model: a DeiT model of this package.
        tensors: `{name: array}` in transformers' names and PyTorch layouts.
        strict: if True (default), a backbone variable with no source, a shape mismatch in the
            backbone, or a source tensor that nothing uses is an error listing every such name.
            Heads, the pooler and the mask token are optional either way: fresh when missing or
            of another shape (e.g. another `num_labels`), dropped when the model has none.

    Returns:
        A `LoadingInfo`.
    """
    tensors = hf.canonicalize(tensors)
    variables = {v.path: v for v in model.weights}
    num_layers = model.config.num_hidden_layers
    required = hf.expand(hf.BACKBONE_MAP, num_layers)
    optional = hf.expand(hf.OPTIONAL_MAP, num_layers)

    updates, fresh, dropped, used = [], [], [], set()
    missing, mismatched = [], []
    for rows, is_required in ((required, True), (optional, False)):
        for path, sources, transform in rows:
            variable = variables.get(path)
            present = all(s in tensors for s in sources)
            if variable is None:
                if present and not is_required:
                    dropped.extend(sources)
                    used.update(sources)
                elif present and path.startswith("embeddings/distillation_token"):
                    # A distilled checkpoint read into a model without the token is another
                    # architecture, not a head to drop.
                    mismatched.append(f"{sources[0]}: the checkpoint has a distillation token, "
                                      "the model (use_distillation_token=False) has none")
                    used.update(sources)
                continue
            if not present:
                (missing if is_required else fresh).append(path)
                continue
            used.update(sources)
            value = np.asarray(transform(*(tensors[s] for s in sources)))
            if tuple(value.shape) != tuple(variable.shape):
                message = (f"{path}: checkpoint {tuple(value.shape)} vs model "
                           f"{tuple(variable.shape)} (from {', '.join(sources)})")
                if is_required:
                    mismatched.append(message)
                else:
                    fresh.append(path)
                continue
            updates.append((variable, value))

    unused = sorted(set(tensors) - used)
    problems = []
    if missing:
        problems.append("model variables with no tensor in the checkpoint: " + ", ".join(missing))
    if mismatched:
        problems.append("shape mismatches: " + "; ".join(mismatched))
    if unused and strict:
        problems.append("checkpoint tensors that fit nowhere in the model: " + ", ".join(unused))
    if problems:
        raise CheckpointError(
            f"{source!r} does not fit {type(model).__name__} built from "
            f"{_describe(model.config)}:\n  - " + "\n  - ".join(problems) + "\n"
            "Check that the config matches the checkpoint (same size and variant); pass "
            "strict=False to ignore unused tensors."
        )
    for variable, value in updates:
        variable.assign(value.astype(variable.dtype))
    return LoadingInfo(fresh=fresh, dropped=sorted(dropped + (unused if not strict else [])),
                       source=source)


def _describe(config):
    return (f"hidden_size={config.hidden_size}, layers={config.num_hidden_layers}, "
            f"heads={config.num_attention_heads}, patch={config.patch_size}, "
            f"image={config.image_size}, distillation_token={config.use_distillation_token}")


def model_class_for(config):
    """Our class for the config's `architectures` entry (DeiTModel when there is none)."""
    import keras_deit

    for name in config.extra.get("architectures") or []:
        if name in ARCHITECTURES:
            return getattr(keras_deit, ARCHITECTURES[name])
    return keras_deit.DeiTModel


def load_pretrained(cls, source, config=None, weights_file=None, strict=True, num_labels=None,
                    id2label=None, **model_options):
    """Builds `cls` (a DeiT model class, or None to follow the checkpoint's architecture) and
    fills it from `source`.

    Args:
        cls: one of the four model classes, or None / `DeiTPreTrainedModel` for automatic.
        source: a local HF folder (`config.json` + weights).
        config: optional `DeiTConfig` overriding the checkpoint's.
        weights_file: a file name inside the folder, to pick one format when several exist.
        strict: see `assign_checkpoint`.
        num_labels / id2label: a new label set; the classifier is then initialized fresh.
        **model_options: passed to the model constructor (`output_attentions`, `data_format`,
            `interpolate_pos_encoding`, `add_pooling_layer`, ...).

    Returns:
        The model, with `model.loading_info` (a `LoadingInfo`). Fresh variables are reported in
        a warning by name.
    """
    from keras_deit.config import DeiTConfig
    from keras_deit.models import DeiTPreTrainedModel

    if not (isinstance(source, (str, os.PathLike)) and os.path.isdir(source)):
        raise FileNotFoundError(
            f"Unknown pretrained source {source!r}: expected a local folder with config.json "
            "and model.safetensors, pytorch_model.bin or tf_model.h5."
        )
    source = os.fspath(source)
    if config is None:
        config = DeiTConfig.from_json(source)
    if num_labels is not None or id2label is not None:
        changes = {"id2label": id2label} if id2label is not None else {"num_labels": num_labels}
        config = config.replace(**changes)
    if cls is None or cls is DeiTPreTrainedModel:
        cls = model_class_for(config)
    path = find_weights_file(source, weights_file)
    tensors = read_checkpoint(path)
    model = cls(config, **model_options)
    info = assign_checkpoint(model, tensors, source=path, strict=strict)
    if info.fresh:
        warnings.warn(
            f"{cls.__name__}: these variables were not in {path!r} (or had another shape) and "
            f"are freshly initialized; train them before use: {', '.join(info.fresh)}",
            stacklevel=3,
        )
    model.loading_info = info
    return model
