"""The bridge to keras-hub's DeiT: our models as `keras_hub.models.DeiTBackbone` /
`DeiTImageClassifier` with the same weights, and back.

keras-hub's DeiT is the distilled DeiT v1 backbone (class and distillation tokens, position
embeddings on every token, exact GELU, biases everywhere, no LayerScale) with one optional
classifier on the class token. It has no pooler, mask token, distillation head or label names,
so those are refused (or, for the never-trained pooler, dropped with a warning). The attention
is Keras' `MultiHeadAttention`: separate query / key / value kernels of shape
(hidden, heads, head_dim), where ours is one fused (hidden, 3 * hidden) kernel with columns
[q | k | v]; every other tensor only changes shape, never order.

keras-hub is imported on first use; it is a test dependency, not one of the package.
"""

import warnings

import numpy as np

from keras_deit.config import DeiTConfig
from keras_deit.models import (
    DeiTForImageClassification,
    DeiTForImageClassificationWithTeacher,
    DeiTModel,
)

_HUB_EMBEDDINGS = "deit_patching_and_embedding/"


def _keras_hub():
    try:
        import keras_hub
    except ImportError:
        raise ImportError(
            "The keras-hub bridge needs keras-hub, which is not installed: "
            "pip install 'keras-hub>=0.32'."
        ) from None
    return keras_hub


def _weight_map(num_layers):
    """(our variable path, keras-hub path or paths) for every backbone tensor.

    Several keras-hub paths are the equal parts of our tensor along its last axis, in order.
    """
    rows = [
        ("embeddings/cls_token", _HUB_EMBEDDINGS + "class_token"),
        ("embeddings/distillation_token", _HUB_EMBEDDINGS + "distillation_token"),
        ("embeddings/position_embeddings", _HUB_EMBEDDINGS + "position_embedding"),
        ("embeddings/patch_embeddings/kernel", _HUB_EMBEDDINGS + "patch_embedding/kernel"),
        ("embeddings/patch_embeddings/bias", _HUB_EMBEDDINGS + "patch_embedding/bias"),
        ("layernorm/gamma", "deit_encoder/ln/gamma"),
        ("layernorm/beta", "deit_encoder/ln/beta"),
    ]
    for i in range(num_layers):
        ours, hub = f"encoder/layer_{i}/", f"deit_encoder/transformer_block_{i + 1}/"
        for weight in ("kernel", "bias"):
            rows += [
                (ours + f"attention/qkv/{weight}",
                 tuple(hub + f"mha/{name}/{weight}" for name in ("query", "key", "value"))),
                (ours + f"attention/proj/{weight}", hub + f"mha/attention_output/{weight}"),
                (ours + f"mlp/fc1/{weight}", hub + f"mlp/dense/{weight}"),
                (ours + f"mlp/fc2/{weight}", hub + f"output_layer/output/{weight}"),
            ]
        for norm, hub_norm in (("layernorm_before", "ln_1"), ("layernorm_after", "ln_2")):
            rows += [(ours + f"{norm}/{w}", hub + f"{hub_norm}/{w}") for w in ("gamma", "beta")]
    return rows


def _variables(model, skip=()):
    """{path: variable} of a model, without the paths that start with one of `skip`."""
    return {v.path: v for v in model.weights if not v.path.startswith(tuple(skip))}


def _check_covered(variables, mapped, side):
    unmapped = sorted(set(variables) - set(mapped))
    if unmapped:
        raise ValueError(
            f"These {side} variables have no counterpart in the keras-hub bridge: {unmapped}. "
            "Convert an unquantized model without LoRA (merge_lora() first)."
        )


def _copy_to_hub(ours, hub, num_layers):
    """Assigns our backbone's tensors to keras-hub's, reshaping (and splitting q/k/v)."""
    rows = _weight_map(num_layers)
    _check_covered(ours, [row[0] for row in rows], "keras_deit")
    for our_path, hub_paths in rows:
        hub_paths = (hub_paths,) if isinstance(hub_paths, str) else hub_paths
        parts = np.split(np.asarray(ours[our_path].numpy()), len(hub_paths), axis=-1)
        for path, part in zip(hub_paths, parts):
            hub[path].assign(part.reshape(hub[path].shape))


def _copy_from_hub(hub, ours, num_layers):
    """Assigns keras-hub's backbone tensors to ours, reshaping (and fusing q/k/v)."""
    rows = _weight_map(num_layers)
    _check_covered(hub, [p for row in rows for p in ((row[1],) if isinstance(row[1], str)
                                                      else row[1])], "keras-hub")
    for our_path, hub_paths in rows:
        hub_paths = (hub_paths,) if isinstance(hub_paths, str) else hub_paths
        shape = tuple(ours[our_path].shape)
        parts = [np.asarray(hub[path].numpy()).reshape(shape[:-1] + (-1,)) for path in hub_paths]
        ours[our_path].assign(np.concatenate(parts, axis=-1))


def _copy_head(source, target):
    # Through NumPy: on JAX, assigning one variable to another would share a buffer that the
    # first model's jitted `predict` donates (deletes).
    target.kernel.assign(np.array(source.kernel.numpy()))
    target.bias.assign(np.array(source.bias.numpy()))


def _check_convertible(model):
    """Raises one line naming what keras-hub's DeiT cannot hold."""
    if isinstance(model, DeiTForImageClassificationWithTeacher):
        raise ValueError(
            "keras-hub's DeiTImageClassifier has one head, on the class token, so it cannot "
            "hold the distillation head nor the averaged logits this model predicts. Convert "
            "model.deit for the backbone alone, or fine-tune a DeiTForImageClassification."
        )
    if not isinstance(model, (DeiTModel, DeiTForImageClassification)):
        raise ValueError(
            "to_keras_hub converts a DeiTModel (to DeiTBackbone) or a "
            "DeiTForImageClassification (to DeiTImageClassifier). Received: "
            f"{type(model).__name__}."
        )
    config = model.config
    checks = [
        (config.use_distillation_token, "use_distillation_token=False: keras-hub's DeiT always "
                                        "has a distillation token"),
        (config.class_token_position_embedding and config.layer_scale_init_value is None,
         "a DeiT III config: keras-hub's DeiT has no LayerScale"),
        (config.hidden_act == "gelu", f"hidden_act={config.hidden_act!r}: keras-hub's DeiT "
                                      "uses the exact GELU ('gelu')"),
        (config.qkv_bias, "qkv_bias=False: keras-hub's DeiT has a bias on every projection"),
        (not getattr(model, "use_mask_token", False), "use_mask_token=True: keras-hub's "
                                                      "DeiTBackbone has no mask token"),
        (config.num_labels > 0 or isinstance(model, DeiTModel),
         "num_labels=0: keras-hub's DeiTImageClassifier needs a classifier layer"),
    ]
    for ok, problem in checks:
        if not ok:
            raise ValueError(f"Cannot convert to keras-hub: {problem}.")


def to_keras_hub(model):
    """keras-hub's DeiT with this model's weights.

    Args:
        model: a `DeiTModel` (-> `keras_hub.models.DeiTBackbone`, whose output is our
            `last_hidden_state`; a pooler, which keras-hub lacks, is dropped with a warning) or a
            `DeiTForImageClassification` (-> `keras_hub.models.DeiTImageClassifier`, whose
            output is our `logits`), of a distilled DeiT v1 config.

    Returns:
        The keras-hub model, with the same input size, data format and dtype policy.
    """
    keras_hub = _keras_hub()
    _check_convertible(model)
    config = model.config
    backbone_model = model if isinstance(model, DeiTModel) else model.deit
    if isinstance(model, DeiTModel) and model.add_pooling_layer:
        warnings.warn(
            "keras-hub's DeiTBackbone has no pooler: the pooler's weights are not carried "
            "over (build the DeiTModel with add_pooling_layer=False to silence this).",
            stacklevel=2,
        )
    (height, width), channels = config.image_hw, config.num_channels
    backbone = keras_hub.models.DeiTBackbone(
        image_shape=(channels, height, width) if model.data_format == "channels_first"
        else (height, width, channels),
        patch_size=config.patch_hw,
        num_layers=config.num_hidden_layers,
        num_heads=config.num_attention_heads,
        hidden_dim=config.hidden_size,
        intermediate_dim=config.intermediate_size,
        dropout_rate=config.hidden_dropout_prob,
        attention_dropout=config.attention_probs_dropout_prob,
        layer_norm_epsilon=config.layer_norm_eps,
        use_mha_bias=True,
        data_format=model.data_format,
        dtype=model.dtype_policy,
    )
    _copy_to_hub(_variables(backbone_model, skip=("pooler/",)), _variables(backbone),
                 config.num_hidden_layers)
    if isinstance(model, DeiTModel):
        return backbone
    classifier = keras_hub.models.DeiTImageClassifier(
        backbone=backbone, num_classes=config.num_labels, pooling="token", activation=None
    )
    _copy_head(model.classifier, classifier.output_dense)
    return classifier


def from_keras_hub(model):
    """Our model with the weights of a keras-hub DeiT.

    Args:
        model: a `keras_hub.models.DeiTBackbone` (-> `DeiTModel` without pooler) or a
            `keras_hub.models.DeiTImageClassifier` with `pooling="token"` and no activation
            (-> `DeiTForImageClassification`; its dropout, a training-time layer ours does not
            have, is not carried over).

    Returns:
        The keras_deit model, with the same input size, data format and dtype policy; label
        names are `LABEL_i` (keras-hub keeps none).
    """
    keras_hub = _keras_hub()
    if isinstance(model, keras_hub.models.DeiTImageClassifier):
        if model.pooling != "token" or model.activation is not None:
            raise ValueError(
                "Only a DeiTImageClassifier with pooling='token' and activation=None (logits) "
                "matches DeiTForImageClassification. Received: "
                f"pooling={model.pooling!r}, activation={model.activation!r}."
            )
        backbone = model.backbone
    elif isinstance(model, keras_hub.models.DeiTBackbone):
        backbone = model
    else:
        raise ValueError(
            "from_keras_hub converts a keras_hub.models.DeiTBackbone or DeiTImageClassifier. "
            f"Received: {type(model).__name__}."
        )
    if not backbone.use_mha_bias:
        raise ValueError(
            "Cannot convert from keras-hub: use_mha_bias=False leaves the attention output "
            "without a bias, which ours always has (qkv_bias covers query / key / value only)."
        )
    shape = tuple(backbone.image_shape)
    height, width, channels = shape[1:] + shape[:1] if backbone.data_format == (
        "channels_first") else shape
    patch = tuple(backbone.patch_size)
    config = DeiTConfig(
        hidden_size=backbone.hidden_dim,
        num_hidden_layers=backbone.num_layers,
        num_attention_heads=backbone.num_heads,
        intermediate_size=backbone.intermediate_dim,
        hidden_act="gelu",
        hidden_dropout_prob=backbone.dropout_rate,
        attention_probs_dropout_prob=backbone.attention_dropout,
        layer_norm_eps=backbone.layer_norm_epsilon,
        image_size=height if height == width else (height, width),
        patch_size=patch[0] if patch[0] == patch[1] else patch,
        num_channels=channels,
        use_distillation_token=True,
        num_labels=model.num_classes if backbone is not model else None,
    )
    options = dict(data_format=backbone.data_format, dtype=backbone.dtype_policy)
    if backbone is model:
        ours = DeiTModel(config, add_pooling_layer=False, **options)
        _copy_from_hub(_variables(backbone), _variables(ours), config.num_hidden_layers)
        return ours
    ours = DeiTForImageClassification(config, **options)
    _copy_from_hub(_variables(backbone), _variables(ours.deit), config.num_hidden_layers)
    _copy_head(model.output_dense, ours.classifier)
    return ours
