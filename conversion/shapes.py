"""A config checked against the checkpoint's tensor shapes before any model is built.

A `config.json` decides how much memory the model takes (`hidden_size: 3000000` is 7.5 GB
before the first weight is compared), so it is compared with the shapes the checkpoint
declares (a safetensors header is enough: no tensor data is read) and refused on any
difference. The checks read the checkpoint's own tensor names (transformers' saved names,
after `keras_deit.conversion.hf.canonicalize`), never our variable paths, so they hold whatever the key
map makes of them.
"""

import re

from keras_deit.conversion import hf
from keras_deit.conversion.readers import CheckpointError

_LAYER = re.compile(r"^encoder\.layer\.(\d+)\.")


def hf_shape_differences(config, shapes, check_heads=True):
    """Lines `field: config X, checkpoint Y` where `config` disagrees with `shapes`.

    Args:
        config: the `DeiTConfig` a model would be built from.
        shapes: `{tensor name: shape}` of a transformers-layout checkpoint.
        check_heads: also compare the parts a load may legitimately replace (classifier
            labels, pooler width, decoder stride): True for a config that came with the
            checkpoint, False for one the caller chose.
    """
    shapes = {name: tuple(shape) for name, shape in hf.canonicalize(shapes).items()}
    checks = []  # (field, what the config implies, what the checkpoint has)

    def against(name, field, expected, dims=slice(None)):
        if name in shapes:
            checks.append((f"{field} ({name})", expected, shapes[name][dims]))

    h = config.hidden_size
    positions = config.num_patches + config.num_position_prefix_tokens
    against("embeddings.cls_token", "hidden_size", (1, 1, h))
    against("embeddings.patch_embeddings.projection.weight",
            "hidden_size, num_channels, patch_size", (h, config.num_channels, *config.patch_hw))
    against("embeddings.position_embeddings", "image_size / patch_size (position embeddings)",
            (1, positions, h))
    layers = {int(m[1]) for m in map(_LAYER.match, shapes) if m}
    if layers:
        checks.append(("num_hidden_layers", config.num_hidden_layers, max(layers) + 1))
    against("encoder.layer.0.intermediate.dense.weight", "intermediate_size, hidden_size",
            (config.intermediate_size, h))
    against("encoder.layer.0.attention.attention.query.weight", "hidden_size", (h, h))
    if "embeddings.patch_embeddings.projection.weight" in shapes:
        checks.append(("use_distillation_token", config.use_distillation_token,
                       "embeddings.distillation_token" in shapes))
    if "encoder.layer.0.attention.attention.query.weight" in shapes:
        checks.append(("qkv_bias", config.qkv_bias,
                       "encoder.layer.0.attention.attention.query.bias" in shapes))
    if check_heads:
        for head in ("classifier", "cls_classifier", "distillation_classifier"):
            against(f"{head}.weight", "num_labels / id2label", config.num_labels, 0)
        against("pooler.dense.weight", "pooler_output_size", config.pooler_output_size, 0)
        against("decoder.0.weight", "encoder_stride, num_channels",
                config.encoder_stride ** 2 * config.num_channels, 0)
    return [f"{field}: config {want!r}, checkpoint {have!r}"
            for field, want, have in checks if want != have]


def check_hf_config(config, shapes, path, config_path=None):
    """Raises a one-line `CheckpointError` when `config` does not describe the checkpoint at
    `path` (see `hf_shape_differences`); `config_path` is the config.json it came from, or
    None for a config the caller passed."""
    differences = hf_shape_differences(config, shapes, check_heads=config_path is not None)
    if differences:
        origin = f"its config {config_path!r}" if config_path else "the given config"
        raise CheckpointError(
            f"{path!r} does not match {origin}, refused before building the model: "
            + "; ".join(differences)
            + ". Use the config.json that came with the checkpoint."
        )
