"""The key map between timm / facebookresearch DeiT state dicts and our variables.

The original `.pth` releases (dl.fbaipublicfiles.com/deit/) were written by models built on
timm, so they share timm's names (`blocks.3.attn.qkv.weight`); the DeiT III files name their
LayerScale vectors `gamma_1` / `gamma_2`, which timm renames to `ls1.gamma` / `ls2.gamma`.
`canonicalize` brings both to timm's names, then one table maps them onto our variable paths,
with the row protocol of `keras_deit.conversion.key_maps`, as `keras_deit.conversion.hf`.

A state dict carries no config, so `config_from_timm_state` reads the architecture from the
tensor shapes. The head count is the one thing shapes cannot tell (a fused (3d, d) qkv weight
looks the same for any split): it comes from an argument, a given config, a preset of the same
width and depth, or timm's DeiT convention of 64-wide heads, in that order.
"""

import math
import re
import warnings

import numpy as np

from keras_deit.conversion.key_maps import conv_kernel, dense_kernel, same
from keras_deit.conversion.readers import CheckpointError

HEAD_DIM = 64

_BLOCK = "encoder/layer_{i}/"
_TIMM_BLOCK = "blocks.{i}."

# (our variable path, source name or names, transform). `{i}` is the block index. A row whose
# variable the model lacks (distillation token, LayerScale, qkv bias) is skipped when the
# checkpoint lacks it too; present on one side only, it is an architecture mismatch.
BACKBONE_MAP = [
    ("embeddings/cls_token", "cls_token", same),
    ("embeddings/distillation_token", "dist_token", same),
    ("embeddings/position_embeddings", "pos_embed", same),
    ("embeddings/patch_embeddings/kernel", "patch_embed.proj.weight", conv_kernel),
    ("embeddings/patch_embeddings/bias", "patch_embed.proj.bias", same),
    (_BLOCK + "layernorm_before/gamma", _TIMM_BLOCK + "norm1.weight", same),
    (_BLOCK + "layernorm_before/beta", _TIMM_BLOCK + "norm1.bias", same),
    # timm's fused (3d, d) weight has rows [q | k | v]: its transpose is our (d, 3d) kernel.
    (_BLOCK + "attention/qkv/kernel", _TIMM_BLOCK + "attn.qkv.weight", dense_kernel),
    (_BLOCK + "attention/qkv/bias", _TIMM_BLOCK + "attn.qkv.bias", same),
    (_BLOCK + "attention/proj/kernel", _TIMM_BLOCK + "attn.proj.weight", dense_kernel),
    (_BLOCK + "attention/proj/bias", _TIMM_BLOCK + "attn.proj.bias", same),
    (_BLOCK + "ls1", _TIMM_BLOCK + "ls1.gamma", same),
    (_BLOCK + "layernorm_after/gamma", _TIMM_BLOCK + "norm2.weight", same),
    (_BLOCK + "layernorm_after/beta", _TIMM_BLOCK + "norm2.bias", same),
    (_BLOCK + "mlp/fc1/kernel", _TIMM_BLOCK + "mlp.fc1.weight", dense_kernel),
    (_BLOCK + "mlp/fc1/bias", _TIMM_BLOCK + "mlp.fc1.bias", same),
    (_BLOCK + "mlp/fc2/kernel", _TIMM_BLOCK + "mlp.fc2.weight", dense_kernel),
    (_BLOCK + "mlp/fc2/bias", _TIMM_BLOCK + "mlp.fc2.bias", same),
    (_BLOCK + "ls2", _TIMM_BLOCK + "ls2.gamma", same),
    ("layernorm/gamma", "norm.weight", same),
    ("layernorm/beta", "norm.bias", same),
]

# Heads: fresh when missing or of another shape, dropped when the model has none. timm's
# `head` is the class-token head of both model kinds, so it feeds `classifier` or
# `cls_classifier`, whichever the model has; `head_dist` only the distillation head.
OPTIONAL_MAP = [
    ("classifier/kernel", "head.weight", dense_kernel),
    ("classifier/bias", "head.bias", same),
    ("cls_classifier/kernel", "head.weight", dense_kernel),
    ("cls_classifier/bias", "head.bias", same),
    ("distillation_classifier/kernel", "head_dist.weight", dense_kernel),
    ("distillation_classifier/bias", "head_dist.bias", same),
]

# Prefixes some training scripts leave on every name (DistributedDataParallel, torch.compile).
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")
# facebookresearch/deit `models_v2.py` (DeiT III) stores LayerScale as bare parameters.
_GAMMA = re.compile(r"^(blocks\.\d+\.)gamma_([12])$")


def canonicalize(tensors):
    """timm names for a timm or facebookresearch state dict (wrapper prefixes stripped, DeiT III
    `gamma_1` / `gamma_2` renamed to `ls1.gamma` / `ls2.gamma`)."""
    out = {}
    for name, value in tensors.items():
        for prefix in _WRAPPER_PREFIXES:
            if name.startswith(prefix):
                name = name[len(prefix):]
        name = _GAMMA.sub(r"\1ls\2.gamma", name)
        out[name] = value
    return out


def is_timm_state(tensors):
    """Whether `tensors` uses timm's names (rather than transformers')."""
    names = canonicalize(dict.fromkeys(tensors))
    return "cls_token" in names and "patch_embed.proj.weight" in names


def _num_blocks(state):
    indices = {int(m[1]) for m in (re.match(r"^blocks\.(\d+)\.", n) for n in state) if m}
    if not indices:
        raise CheckpointError("The checkpoint has no `blocks.N.*` tensors: it is not a DeiT/ViT "
                              "state dict in timm's layout.")
    depth = max(indices) + 1
    if indices != set(range(depth)):
        raise CheckpointError(
            f"The checkpoint's blocks are not numbered 0..{depth - 1} (found "
            f"{sorted(indices)}): it is truncated or not a plain DeiT state dict."
        )
    return depth


def _square_grid(pos_len, num_prefix, layer_scale):
    """(class token has a position embedding, grid side) from the position-table length.

    Square grids tell the layouts apart: `side**2 + prefix` (DeiT v1) and `side**2` (DeiT III)
    are both squares only for a 1x1 grid, where LayerScale decides as a fallback.
    """
    candidates = []
    for class_pos, patches in ((True, pos_len - num_prefix), (False, pos_len)):
        side = math.isqrt(max(patches, 0))
        if patches > 0 and side * side == patches:
            candidates.append((class_pos, side))
    if not candidates:
        raise CheckpointError(
            f"The position embeddings hold {pos_len} entries, which is no square patch grid "
            f"(with or without the {num_prefix} prefix token(s)): the model was trained on "
            "non-square images. Pass a `config` with its image_size."
        )
    if len(candidates) == 2:
        return next(c for c in candidates if c[0] != layer_scale)
    return candidates[0]


def config_from_timm_state(state, num_attention_heads=None, config=None, notes=None):
    """The `DeiTConfig` of a timm / facebookresearch DeiT state dict, read from its shapes.

    Args:
        state: `{name: array}` in timm's (or facebookresearch's) names.
        num_attention_heads: the head count, which the shapes do not give. Without it: the
            config's, else the presets' for this width and depth, else hidden_size / 64.
        config: an expected `DeiTConfig` (e.g. a preset's). If given, it is checked against
            the checkpoint and returned; any difference is a `CheckpointError` listing them.
        notes: an optional list; a head count guessed from timm's 64-wide convention (no
            argument, config or preset gave it) is appended to it as a sentence, and warned.

    Returns:
        A `DeiTConfig` with layer_norm_eps 1e-6 and exact GELU (timm's DeiT), `num_labels`
        from the head (0 when the checkpoint has none).
    """
    from keras_deit import presets
    from keras_deit.config import DeiTConfig, num_prefix_tokens

    state = canonicalize(state)
    needed = ("cls_token", "pos_embed", "patch_embed.proj.weight", "blocks.0.mlp.fc1.weight")
    absent = [n for n in needed if n not in state]
    if absent:
        raise CheckpointError(
            f"Not a DeiT state dict in timm's layout: no {', '.join(absent)}. Pass an HF folder "
            "(config.json + weights), or an original DeiT .pth file."
        )
    hidden = int(state["cls_token"].shape[-1])
    depth = _num_blocks(state)
    _, channels, ph, pw = (int(s) for s in state["patch_embed.proj.weight"].shape)
    distilled = "dist_token" in state
    layer_scale = "blocks.0.ls1.gamma" in state
    prefix = num_prefix_tokens(distilled)
    pos_len = int(state["pos_embed"].shape[1])

    if config is not None and config.patch_hw == (ph, pw):
        # The config names the grid (square or not); checked against pos_len below.
        class_pos = config.class_token_position_embedding
        image_size = config.image_size
    else:
        class_pos, side = _square_grid(pos_len, prefix, layer_scale)
        image_size = side * ph if ph == pw else (side * ph, side * pw)

    heads = num_attention_heads
    if heads is None and config is not None:
        heads = config.num_attention_heads
    if heads is None:
        heads = presets.heads_for(hidden, depth)
    if heads is None:
        if hidden % HEAD_DIM:
            raise CheckpointError(
                f"Cannot tell the head count of this checkpoint (hidden size {hidden}, {depth} "
                "blocks, matching no preset, and not a multiple of timm's 64-wide DeiT heads). "
                "Pass num_attention_heads=N (`--num-heads N` on the command line)."
            )
        heads = hidden // HEAD_DIM
        # Shapes cannot tell a wrong split, and --verify builds its reference from the same
        # guess: the user must hear it, and loading_info keeps it.
        note = (f"the head count is a guess: {heads} heads of timm's 64-wide DeiT convention "
                f"(hidden size {hidden}, {depth} blocks match no preset); pass "
                "num_attention_heads=N (`--num-heads N`) if the model was trained with another")
        warnings.warn(f"{note}.", stacklevel=2)
        if notes is not None:
            notes.append(note)
    if hidden % heads:
        raise CheckpointError(
            f"num_attention_heads={heads} does not divide the checkpoint's hidden size {hidden}: "
            "pass the head count the model was trained with."
        )

    inferred = DeiTConfig(
        hidden_size=hidden,
        num_hidden_layers=depth,
        num_attention_heads=heads,
        intermediate_size=int(state["blocks.0.mlp.fc1.weight"].shape[0]),
        hidden_act="gelu",
        # timm's DeiT numerics: LayerNorm(eps=1e-6) and exact GELU in every block.
        layer_norm_eps=presets.LAYER_NORM_EPS["original"],
        image_size=image_size,
        patch_size=ph if ph == pw else (ph, pw),
        num_channels=channels,
        qkv_bias="blocks.0.attn.qkv.bias" in state,
        encoder_stride=ph,
        num_labels=int(state["head.weight"].shape[0]) if "head.weight" in state else 0,
        use_distillation_token=distilled,
        class_token_position_embedding=class_pos,
        layer_scale_init_value=presets.DEIT3_LAYER_SCALE_INIT if layer_scale else None,
    )
    if config is None:
        return inferred
    differences = architecture_differences(
        config, inferred, compare_heads=num_attention_heads is not None
    )
    needed = config.num_patches + config.num_position_prefix_tokens
    if needed != pos_len:
        differences.append(
            f"position embeddings: {pos_len} in the checkpoint, the config needs {needed} "
            f"(image_size={config.image_size}, class_token_position_embedding="
            f"{config.class_token_position_embedding})"
        )
    if differences:
        raise CheckpointError(
            "The checkpoint does not have the architecture of the given config/preset:\n  - "
            + "\n  - ".join(differences)
            + "\nUse the preset or config of this checkpoint, or pass config=None to read the "
            "architecture from the checkpoint."
        )
    return config


def architecture_differences(expected, actual, compare_heads=True):
    """Lines `field: expected X, checkpoint Y` for the fields that fix the weight shapes.

    `compare_heads` False skips the head count (when `actual` only guessed it).
    """
    fields = [
        ("hidden_size", lambda c: c.hidden_size),
        ("num_hidden_layers", lambda c: c.num_hidden_layers),
        ("intermediate_size", lambda c: c.intermediate_size),
        ("patch_size", lambda c: c.patch_hw),
        ("num_channels", lambda c: c.num_channels),
        ("use_distillation_token", lambda c: c.use_distillation_token),
        ("layer scale (DeiT III)", lambda c: c.layer_scale_init_value is not None),
        ("qkv_bias", lambda c: c.qkv_bias),
    ]
    if compare_heads:
        fields.append(("num_attention_heads", lambda c: c.num_attention_heads))
    return [
        f"{name}: config {get(expected)!r}, checkpoint {get(actual)!r}"
        for name, get in fields
        if get(expected) != get(actual)
    ]


def model_class_name(config):
    """The model a timm checkpoint is: with both heads when distilled, classifier, or bare."""
    if config.num_labels == 0:
        return "DeiTModel"
    if config.use_distillation_token:
        return "DeiTForImageClassificationWithTeacher"
    return "DeiTForImageClassification"


def to_transformers(state):
    """transformers names and layouts for a DeiT v1 timm state dict (fused qkv split in three).

    Used to build the reference model of `--verify`; DeiT III (LayerScale, patch-only position
    embeddings) has no transformers class, so it is refused.
    """
    state = canonicalize(state)
    if "blocks.0.ls1.gamma" in state:
        raise CheckpointError("DeiT III checkpoints have no transformers equivalent.")
    out = {}
    renames = [
        (r"^cls_token$", "embeddings.cls_token"),
        (r"^dist_token$", "embeddings.distillation_token"),
        (r"^pos_embed$", "embeddings.position_embeddings"),
        (r"^patch_embed\.proj\.", "embeddings.patch_embeddings.projection."),
        (r"^blocks\.(\d+)\.norm1\.", r"encoder.layer.\1.layernorm_before."),
        (r"^blocks\.(\d+)\.norm2\.", r"encoder.layer.\1.layernorm_after."),
        (r"^blocks\.(\d+)\.attn\.proj\.", r"encoder.layer.\1.attention.output.dense."),
        (r"^blocks\.(\d+)\.mlp\.fc1\.", r"encoder.layer.\1.intermediate.dense."),
        (r"^blocks\.(\d+)\.mlp\.fc2\.", r"encoder.layer.\1.output.dense."),
        (r"^norm\.", "layernorm."),
        (r"^head_dist\.", "distillation_classifier."),
    ]
    distilled = "dist_token" in state
    # Backbone names carry the task models' prefix; transformers strips it for a bare model.
    backbone = "deit." if distilled else "vit."
    for name, value in state.items():
        qkv = re.match(r"^blocks\.(\d+)\.attn\.qkv\.(weight|bias)$", name)
        if qkv:
            prefix = f"encoder.layer.{qkv[1]}.attention.attention."
            for part, chunk in zip(("query", "key", "value"), np.split(np.asarray(value), 3)):
                out[f"{backbone}{prefix}{part}.{qkv[2]}"] = chunk
            continue
        if name.startswith("head."):
            new = ("cls_classifier." if distilled else "classifier.") + name[len("head."):]
        else:
            new = name
            for pattern, replacement in renames:
                new, count = re.subn(pattern, replacement, new)
                if count:
                    break
            if not new.startswith("distillation_classifier."):
                new = backbone + new
        out[new] = value
    return out
