"""Conversion of original DeiT checkpoints into keras_deit models.

Installed as `keras_deit.conversion`. The models import `loading` and `writers` (their
`from_pretrained` / `save_pretrained` bodies), which import no model; `cli`, `verify` and
`keras_hub_bridge` build models, so they import `keras_deit.models`, one way.

The names below are loaded on first use, so that `keras-deit convert --help` and
`python -m keras_deit.conversion --help` parse their arguments without importing Keras.
"""

import importlib

_EXPORTS = {
    "LoadingInfo": "loading", "assign_checkpoint": "loading", "load_pretrained": "loading",
    "CheckpointError": "readers", "CorruptCheckpointError": "readers",
    "read_checkpoint": "readers",
}

__all__ = ["CheckpointError", "CorruptCheckpointError", "LoadingInfo", "assign_checkpoint", "load_pretrained", "read_checkpoint"]


def __getattr__(name):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
