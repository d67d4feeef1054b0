"""Inference helpers shared by the `keras-deit` command, export and the notebooks: the built-in
models, loading a classifier with the image processor its checkpoint expects, reading images,
class probabilities and readable class names."""

import os

import keras
import numpy as np

from keras_deit.builtin_models import BUILTIN_MODELS, DEFAULT_MODEL  # noqa: F401  (public here too)
from keras_deit.image_processing import load_image
from keras_deit.model_preprocessing import processor_for
from keras_deit.models import DeiTPreTrainedModel
from keras_deit.saving import load_model


def read_images(paths):
    """PIL images (RGB) of image files; the first bad file raises one line naming it."""
    return [load_image(path) for path in paths]


def load_classifier(source):
    """The model for `source` and the image processor its checkpoint expects.

    `source`: a built-in model name, a .keras file, or anything `from_pretrained` takes. Raises
    ValueError for a model that is not a DeiT classifier.
    """
    source = BUILTIN_MODELS.get(source, source)
    if str(source).endswith(".keras"):
        model = load_model(source)
        folder = os.path.dirname(os.path.abspath(source))
    else:
        model = DeiTPreTrainedModel.from_pretrained(source)
        folder = source if os.path.isdir(str(source)) else None
    if not isinstance(model, DeiTPreTrainedModel):
        raise ValueError(
            f"{source} holds a {type(model).__name__}, not a keras_deit DeiT model: convert a "
            "DeiT checkpoint with `keras-deit convert`, or pass one of its sources."
        )
    if "logits" not in model.output:
        raise ValueError(
            f"{source} holds a {type(model).__name__}, which has no classifier: use a "
            "classification checkpoint."
        )
    processor = processor_for(folder, str(source), model.config)
    if getattr(model, "data_format", "channels_last") == "channels_first":
        processor.data_format = "channels_first"
    return model, processor


def class_names(config):
    """Readable class names: the config's labels, or ImageNet's for 1000 generic labels."""
    labels = [config.id2label[i] for i in range(config.num_labels)]
    generic = all(label == f"LABEL_{i}" for i, label in enumerate(labels))
    if generic and config.num_labels == 1000:
        path = os.path.join(os.path.dirname(__file__), "data", "imagenet_classes.txt")
        with open(path, encoding="utf-8") as f:
            return [line.strip() for line in f if line.strip()]
    return labels


def class_probabilities(model, processor, pictures):
    """Softmax of the classifier's `logits` on PIL `pictures`: float64 (batch, num_labels).

    A model that includes its preprocessing gets the raw pictures, one at a time (they may
    differ in size), called eagerly: a TensorFlow graph would need every size in advance.
    """
    if getattr(model, "include_preprocessing", None):
        logits = np.concatenate([eager_logits(model, np.asarray(p)[None]) for p in pictures])
    else:
        pixel_values = processor(pictures)["pixel_values"]
        logits = np.asarray(model.predict(pixel_values, verbose=0)["logits"], "float64")
    return softmax(logits)


def softmax(logits):
    """Softmax over the last axis of float64 `logits` (batch, num_labels), overflow-safe."""
    probabilities = np.exp(logits - logits.max(-1, keepdims=True))
    return probabilities / probabilities.sum(-1, keepdims=True)


def top_k(probabilities, k):
    """The indices of the `k` largest of (num_labels,) `probabilities`, largest first."""
    return np.argsort(-probabilities, kind="stable")[: min(k, len(probabilities))]


def eager_logits(model, images):
    """float64 `logits` of `model` on `images`, called eagerly."""
    return np.asarray(keras.ops.convert_to_numpy(model(images)["logits"]), "float64")
