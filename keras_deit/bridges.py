"""`to_keras_hub` / `from_keras_hub`: thin entry points to `conversion.keras_hub_bridge`.

The bridge lives in the `conversion` package (it depends on keras_deit, never the reverse), and
is imported here on first use, as `from_pretrained` does.
"""


def to_keras_hub(model):
    """keras-hub's `DeiTBackbone` (from a `DeiTModel`) or `DeiTImageClassifier` (from a
    `DeiTForImageClassification`) with the same weights; see
    `conversion.keras_hub_bridge.to_keras_hub`."""
    from conversion.keras_hub_bridge import to_keras_hub as convert

    return convert(model)


def from_keras_hub(model):
    """Our `DeiTModel` (from a keras-hub `DeiTBackbone`) or `DeiTForImageClassification` (from a
    `DeiTImageClassifier`) with the same weights; see
    `conversion.keras_hub_bridge.from_keras_hub`."""
    from conversion.keras_hub_bridge import from_keras_hub as convert

    return convert(model)
