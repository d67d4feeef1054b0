"""`to_keras_hub` / `from_keras_hub`: thin entry points to `keras_deit.conversion.keras_hub_bridge`.

The bridge lives with the other converters (it builds our models and reads keras-hub's); this
module gives it the package's top-level names, `kd.to_keras_hub` and `kd.from_keras_hub`.
"""

from keras_deit.conversion import keras_hub_bridge


def to_keras_hub(model):
    """keras-hub's `DeiTBackbone` (from a `DeiTModel`) or `DeiTImageClassifier` (from a
    `DeiTForImageClassification`) with the same weights; see
    `keras_deit.conversion.keras_hub_bridge.to_keras_hub`."""
    return keras_hub_bridge.to_keras_hub(model)


def from_keras_hub(model):
    """Our `DeiTModel` (from a keras-hub `DeiTBackbone`) or `DeiTForImageClassification` (from a
    `DeiTImageClassifier`) with the same weights; see
    `keras_deit.conversion.keras_hub_bridge.from_keras_hub`."""
    return keras_hub_bridge.from_keras_hub(model)
