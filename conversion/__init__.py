"""Conversion of original DeiT checkpoints into keras_deit models.

Depends on `keras_deit`; `keras_deit` reaches it only through `from_pretrained`.
"""

from conversion.loading import LoadingInfo, assign_checkpoint, load_pretrained
from conversion.readers import CheckpointError, CorruptCheckpointError, read_checkpoint

__all__ = ["CheckpointError", "CorruptCheckpointError", "LoadingInfo", "assign_checkpoint", "load_pretrained", "read_checkpoint"]
