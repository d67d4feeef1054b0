"""keras-deit: DeiT (Data-efficient Image Transformers) for Keras 3 on TensorFlow, JAX and PyTorch.

`import keras_deit` registers every model and layer with Keras' deserializer, so that
`keras.saving.load_model` reads our .keras files, as it always did. The one exception is the
`keras-deit` command (and `python -m keras_deit...`): there the public names below are imported
on first use, so that its argument parsing imports no Keras backend and `--help` or a bad
argument answers at once; a command imports one only when it runs.
"""

import importlib
import os
import sys

__version__ = "0.1.0"

# Public name -> the module that defines it.
_EXPORTS = {
    "from_keras_hub": "keras_deit.bridges",
    "to_keras_hub": "keras_deit.bridges",
    "ConfigError": "keras_deit.config",
    "DeiTConfig": "keras_deit.config",
    "DeiTAttention": "keras_deit.layers",
    "DeiTEmbeddings": "keras_deit.layers",
    "DeiTEncoder": "keras_deit.layers",
    "DeiTLayer": "keras_deit.layers",
    "DeiTMaskedImageModelingDecoder": "keras_deit.layers",
    "DeiTMLP": "keras_deit.layers",
    "DeiTPatchEmbeddings": "keras_deit.layers",
    "DeiTPooler": "keras_deit.layers",
    "default_attn_implementation": "keras_deit.layers",
    "DeiTDistiller": "keras_deit.training.distillation",
    "distillation_loss": "keras_deit.training.distillation",
    "hard_distillation_loss": "keras_deit.training.distillation",
    "soft_distillation_loss": "keras_deit.training.distillation",
    "IMAGENET_DEFAULT_MEAN": "keras_deit.image_processing",
    "IMAGENET_DEFAULT_STD": "keras_deit.image_processing",
    "IMAGENET_STANDARD_MEAN": "keras_deit.image_processing",
    "IMAGENET_STANDARD_STD": "keras_deit.image_processing",
    "DeiTFeatureExtractor": "keras_deit.image_processing",
    "DeiTImageProcessor": "keras_deit.image_processing",
    "DeiTPreprocessing": "keras_deit.layers.preprocessing",
    "classification_loss": "keras_deit.losses",
    "masked_image_modeling_loss": "keras_deit.losses",
    "MaskGenerator": "keras_deit.masking",
    "DeiTForImageClassification": "keras_deit.models",
    "DeiTForImageClassificationWithTeacher": "keras_deit.models",
    "DeiTForMaskedImageModeling": "keras_deit.models",
    "DeiTModel": "keras_deit.models",
    "DeiTPreTrainedModel": "keras_deit.models",
    "deit_adamw": "keras_deit.training.fine_tuning",
    "deit_train_dataset": "keras_deit.training.augmentation",
    "rand_augment": "keras_deit.training.augmentation",
    "rand_augment_op": "keras_deit.training.augmentation",
    "deit_stream": "keras_deit.training.image_folder",
    "index_image_folder": "keras_deit.training.image_folder",
    "rebuild_at_image_size": "keras_deit.training.fine_tuning",
    "transfer_backbone_weights": "keras_deit.training.fine_tuning",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'keras_deit' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__():
    return sorted(set(globals()) | set(_EXPORTS))


def _launched_as_a_command():
    """Whether this process is the `keras-deit` console script or `python -m keras_deit...`
    (sys.argv[0] is "-m" while the package of a `-m` module is imported)."""
    launcher = sys.argv[0] if sys.argv else ""
    return os.path.basename(launcher) in ("keras-deit", "keras-deit.exe") or launcher == "-m"


if not _launched_as_a_command():
    import keras_deit.models  # noqa: E402,F401  registers the models and their layers
