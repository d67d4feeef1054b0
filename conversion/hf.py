"""The key map between transformers' DeiT/ViT checkpoints and our variables.

Source names are canonicalized by stripping the backbone prefix (`deit.` or `vit.`), so a bare
model, a task model and the ViT layout all share one table. Each row maps one of our variable
paths to the source tensor(s) it is made from and the transform between the layouts.
"""

import re

from keras_deit.conversion.key_maps import (  # the row transforms, public here too
    conv1x1_as_dense_kernel,
    conv_kernel,
    dense_kernel,
    expand,
    fused_qkv_bias,
    fused_qkv_kernel,
    same,
)

BACKBONE_PREFIXES = ("deit.", "vit.")

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

# transformers v5 names its modules differently in memory (`layers.0.attention.q_proj`) and
# converts back to the names below when it saves; a raw v5 `state_dict()` uses the new ones.
_V5_RENAMES = [
    (re.compile(r"^layers\.(\d+)\.attention\.(q|k|v)_proj\."),
     lambda m: f"encoder.layer.{m[1]}.attention.attention.{dict(q='query', k='key', v='value')[m[2]]}."),
    (re.compile(r"^layers\.(\d+)\.attention\.o_proj\."),
     lambda m: f"encoder.layer.{m[1]}.attention.output.dense."),
    (re.compile(r"^layers\.(\d+)\.mlp\.fc1\."), lambda m: f"encoder.layer.{m[1]}.intermediate.dense."),
    (re.compile(r"^layers\.(\d+)\.mlp\.fc2\."), lambda m: f"encoder.layer.{m[1]}.output.dense."),
    (re.compile(r"^layers\.(\d+)\."), lambda m: f"encoder.layer.{m[1]}."),
]


_BLOCK = "encoder/layer_{i}/"
_HF_BLOCK = "encoder.layer.{i}."
_QKV = tuple(_HF_BLOCK + f"attention.attention.{n}" for n in ("query", "key", "value"))

# (our variable path, source name or names, transform). `{i}` is the block index.
BACKBONE_MAP = [
    ("embeddings/cls_token", "embeddings.cls_token", same),
    ("embeddings/distillation_token", "embeddings.distillation_token", same),
    ("embeddings/position_embeddings", "embeddings.position_embeddings", same),
    ("embeddings/patch_embeddings/kernel", "embeddings.patch_embeddings.projection.weight", conv_kernel),
    ("embeddings/patch_embeddings/bias", "embeddings.patch_embeddings.projection.bias", same),
    (_BLOCK + "layernorm_before/gamma", _HF_BLOCK + "layernorm_before.weight", same),
    (_BLOCK + "layernorm_before/beta", _HF_BLOCK + "layernorm_before.bias", same),
    (_BLOCK + "attention/qkv/kernel", tuple(n + ".weight" for n in _QKV), fused_qkv_kernel),
    (_BLOCK + "attention/qkv/bias", tuple(n + ".bias" for n in _QKV), fused_qkv_bias),
    (_BLOCK + "attention/proj/kernel", _HF_BLOCK + "attention.output.dense.weight", dense_kernel),
    (_BLOCK + "attention/proj/bias", _HF_BLOCK + "attention.output.dense.bias", same),
    (_BLOCK + "layernorm_after/gamma", _HF_BLOCK + "layernorm_after.weight", same),
    (_BLOCK + "layernorm_after/beta", _HF_BLOCK + "layernorm_after.bias", same),
    (_BLOCK + "mlp/fc1/kernel", _HF_BLOCK + "intermediate.dense.weight", dense_kernel),
    (_BLOCK + "mlp/fc1/bias", _HF_BLOCK + "intermediate.dense.bias", same),
    (_BLOCK + "mlp/fc2/kernel", _HF_BLOCK + "output.dense.weight", dense_kernel),
    (_BLOCK + "mlp/fc2/bias", _HF_BLOCK + "output.dense.bias", same),
    ("layernorm/gamma", "layernorm.weight", same),
    ("layernorm/beta", "layernorm.bias", same),
]

# Parts a model may lack, or a checkpoint may lack: filled fresh (and reported) when missing,
# dropped (and reported) when the model has no place for them.
OPTIONAL_MAP = [
    ("embeddings/mask_token", "embeddings.mask_token", same),
    ("pooler/dense/kernel", "pooler.dense.weight", dense_kernel),
    ("pooler/dense/bias", "pooler.dense.bias", same),
    ("classifier/kernel", "classifier.weight", dense_kernel),
    ("classifier/bias", "classifier.bias", same),
    ("cls_classifier/kernel", "cls_classifier.weight", dense_kernel),
    ("cls_classifier/bias", "cls_classifier.bias", same),
    ("distillation_classifier/kernel", "distillation_classifier.weight", dense_kernel),
    ("distillation_classifier/bias", "distillation_classifier.bias", same),
    ("decoder/dense/kernel", "decoder.0.weight", conv1x1_as_dense_kernel),
    ("decoder/dense/bias", "decoder.0.bias", same),
]


def canonicalize(tensors):
    """Strips the backbone prefix and undoes the v5 in-memory renames, so bare, task and v5
    checkpoints all use the saved transformers names."""
    out = {}
    for name, value in tensors.items():
        for prefix in BACKBONE_PREFIXES:
            if name.startswith(prefix):
                name = name[len(prefix):]
                break
        for pattern, replacement in _V5_RENAMES:
            name, count = pattern.subn(replacement, name, count=1)
            if count:
                break
        out[name] = value
    return out
