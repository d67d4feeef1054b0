"""What Keras offers every model, wired for DeiT: dtype-policy maps for quantized saving,
quantization checks, LoRA, and model-parallel layout maps.

The models call these functions from thin methods (`quantize`, `enable_lora`, `merge_lora`,
`get_layout_map`); they work on the `keras.layers.Dense` projections, found by name.
"""

import re

import keras
import numpy as np

from keras_deit.keras_internals import flatten_layers

QUANTIZATION_MODES = ("int8", "int4", "float8")
# Modes Keras has that need calibration data and a block structure: not offered by `quantize`.
CALIBRATED_MODES = ("gptq", "awq")

# The projections, by the name of their Dense layer.
ATTENTION_PROJECTIONS = ("qkv", "proj")
MLP_PROJECTIONS = ("fc1", "fc2")
HEAD_NAMES = ("classifier", "cls_classifier", "distillation_classifier", "pooler", "decoder")
DEFAULT_LORA_TARGETS = ("qkv",)


def projections(model):
    """The model's `keras.layers.Dense` layers (encoder projections and heads), in order."""
    return [layer for layer in flatten_layers(model)
            if isinstance(layer, keras.layers.Dense)]


def requested_policy(dtype):
    """`dtype` as a Keras policy; None is Keras' global policy, as for Keras' own layers."""
    if dtype is None:
        return keras.dtype_policies.get(keras.config.dtype_policy().name)
    try:
        return keras.dtype_policies.get(dtype)
    except ValueError:
        raise ValueError(
            f"Unknown dtype policy. Use 'float32', 'bfloat16', 'float16', 'mixed_bfloat16', "
            f"'mixed_float16', a quantized policy such as 'int8_from_float32', or a "
            f"keras.DTypePolicy. Received: dtype={dtype!r}"
        ) from None


def layer_policy(dtype):
    """The policy every layer of a model is built with.

    A `DTypePolicyMap` (a reloaded quantized model) is passed on: each layer looks up its own
    path. A quantized policy ("int8_from_float32") builds the layers in its float source
    policy; the model then quantizes its projections (LayerNorms and embeddings have no
    quantized form).
    """
    policy = requested_policy(dtype)
    if pending_quantization(dtype) is not None:
        return keras.dtype_policies.get(policy.name.split("_from_", 1)[1])
    return policy


def pending_quantization(dtype):
    """The quantization mode a model built with `dtype` applies after it is built: that of a
    quantized policy ("int8_from_float32" -> "int8"); None for float policies and for a
    `DTypePolicyMap`, whose layers are built quantized already."""
    policy = requested_policy(dtype)
    if isinstance(policy, keras.dtype_policies.DTypePolicyMap):
        return None
    return policy.quantization_mode


def dtype_config(model):
    """The model's `dtype` for `get_config`: its policy, or a `DTypePolicyMap` when some
    layers are quantized, so that a reloaded model rebuilds them quantized before their
    variables are read (as keras-hub's backbones save it)."""
    base = model.dtype_policy
    if isinstance(base, keras.dtype_policies.DTypePolicyMap):
        base = base.default_policy
    policy_map = keras.dtype_policies.DTypePolicyMap(default_policy=base)
    for layer in flatten_layers(model):
        if layer.quantization_mode is not None:
            policy = layer.dtype_policy
            if isinstance(policy, keras.dtype_policies.DTypePolicyMap):
                policy = policy[layer.path]
            policy_map[layer.path] = policy
    return keras.dtype_policies.serialize(policy_map if len(policy_map) else base)


def check_quantization_mode(mode, model):
    """Raises a one-line ValueError, before anything changes, for a mode `quantize` refuses."""
    if mode in CALIBRATED_MODES:
        raise ValueError(
            f"quantize({mode!r}) needs a calibration dataset and Keras' GPTQ/AWQ config; "
            f"keras-deit offers {QUANTIZATION_MODES}, which need no data. "
            f"Received: mode={mode!r}"
        )
    if mode not in QUANTIZATION_MODES:
        raise ValueError(
            f"Unknown quantization mode. Use one of {QUANTIZATION_MODES}. Received: mode={mode!r}"
        )
    if any(layer.quantization_mode for layer in projections(model)):
        raise ValueError(
            f"{model.name} is already quantized; quantize the float model instead. "
            f"Received: mode={mode!r}"
        )
    if any(getattr(layer, "lora_enabled", False) for layer in projections(model)):
        raise ValueError(
            "Quantize before enable_lora (Keras quantizes the frozen kernel, then LoRA trains "
            f"on top), or call merge_lora() first. Received: mode={mode!r}"
        )


def quantization_filter(filters):
    """The `filters` callable for `keras.Model.quantize`: the model's Dense projections whose
    path matches `filters` (a regex, a list of regexes, or a callable taking the layer).

    Keras matches a string against the layer's name; we match the whole path
    (`encoder/layer_3/attention/qkv`), so "attention|mlp" or "encoder/layer_[0-5]/" select
    what they say, and plain names ("qkv", "fc1") still match.
    """
    if filters is not None and not isinstance(filters, (str, list, tuple)) and not callable(
            filters):
        raise ValueError(
            "`filters` must be a regex string, a list of them, or a callable. "
            f"Received: filters={filters!r}"
        )

    def select(layer):
        if not isinstance(layer, keras.layers.Dense):
            return False  # Keras warns for every layer that cannot be quantized.
        if filters is None:
            return True
        if isinstance(filters, str):
            return re.search(filters, layer.path) is not None
        if isinstance(filters, (list, tuple)):
            return any(re.search(pattern, layer.path) for pattern in filters)
        return bool(filters(layer))

    return select


def enable_lora(model, rank, target_names=None, train_heads=True):
    """Adds rank-`rank` LoRA adapters to the Dense layers named in `target_names` and freezes
    everything else (see `DeiTPreTrainedModel.enable_lora`). Returns the adapted layers."""
    if not isinstance(rank, int) or isinstance(rank, bool) or rank < 1:
        raise ValueError(f"`rank` must be a positive integer. Received: rank={rank!r}")
    targets = tuple(DEFAULT_LORA_TARGETS if target_names is None else target_names)
    layers = projections(model)
    known = sorted({layer.name for layer in layers if layer.name not in HEAD_NAMES})
    unknown = [name for name in targets if name not in known]
    if unknown:
        raise ValueError(
            f"No projection named {unknown} in {model.name}; LoRA targets are among {known}. "
            f"Received: target_names={list(targets)}"
        )
    chosen = [layer for layer in layers if layer.name in targets]
    for layer in chosen:
        if layer.quantization_mode == "gptq" or getattr(layer, "lora_enabled", False):
            raise ValueError(
                f"Layer {layer.path!r} cannot take LoRA "
                f"({'it already has adapters' if layer.lora_enabled else 'GPTQ-quantized'}). "
                f"Received: rank={rank}"
            )
    heads = [layer for layer in flatten_layers(model)
             if layer.name in HEAD_NAMES]
    for layer in flatten_layers(model):
        layer.trainable = False
    for layer in chosen:
        layer.trainable = True
        layer.enable_lora(rank)
        if layer.bias is not None:
            layer.bias.trainable = False
    if train_heads:
        for layer in heads:
            layer.trainable = True
    _reset_compiled_functions(model)
    return chosen


def merge_lora(model):
    """A copy of `model` with every LoRA adapter folded into its kernel: plain Dense layers,
    the same outputs, ready for export or conversion."""
    merged = model.__class__.from_config(model.get_config())
    source = flatten_layers(model)
    target = flatten_layers(merged)
    for src, dst in zip(source, target, strict=True):
        # Dense.save_own_variables writes kernel + (alpha / rank) * A @ B; quantized layers
        # merge into their own scales.
        store = {}
        src.save_own_variables(store)
        # Copies: the store holds the source's own arrays, which JAX may donate (delete) in
        # the source's next training step.
        dst.load_own_variables({key: np.array(keras.ops.convert_to_numpy(value))
                                for key, value in store.items()})
    merged.trainable = model.trainable
    return merged


def get_layout_map(device_mesh, model_parallel_dim_name="model", data_parallel_dim_name="batch"):
    """A `keras.distribution.LayoutMap` that shards the projection kernels over a model axis.

    Megatron-style: the first projection of each pair is split by output columns (`qkv`,
    `fc1`, with their biases), the second by input rows (`proj`, `fc2`), so each block needs
    one reduction after `proj` and one after `fc2`. Everything else (embeddings, LayerNorms,
    heads) is replicated.

    The fused q/k/v kernel keeps the transformers column order [q | k | v]: split n ways, a
    device holds a contiguous third-of-a-projection range, not whole heads of q, k and v.
    XLA's partitioner inserts the resharding after the head reshape, so results are exact and
    the cost is one extra all-to-all per block; a head-interleaved layout would avoid it but
    would change the checkpoint layout that conversion and export share.

    Args:
        device_mesh: a `keras.distribution.DeviceMesh` with an axis named
            `model_parallel_dim_name`.
        model_parallel_dim_name: str, the mesh axis the kernels are split over.
        data_parallel_dim_name: str, unused by the variable layouts (batches are split by
            `ModelParallel(batch_dim_name=...)`), checked to exist when given.

    Returns:
        A `LayoutMap` keyed by variable-path regexes (Keras full-matches them).
    """
    axes = tuple(device_mesh.axis_names)
    for name in (model_parallel_dim_name, data_parallel_dim_name):
        if name is not None and name not in axes:
            raise ValueError(
                f"The device mesh has no axis {name!r}; its axes are {axes}. Pass the mesh "
                f"axis names as model_parallel_dim_name / data_parallel_dim_name. "
                f"Received: {name!r}"
            )
    model = model_parallel_dim_name
    layout_map = keras.distribution.LayoutMap(device_mesh)
    layout_map[r".*attention/qkv/kernel"] = (None, model)
    layout_map[r".*attention/qkv/bias"] = (model,)
    layout_map[r".*attention/proj/kernel"] = (model, None)
    layout_map[r".*mlp/fc1/kernel"] = (None, model)
    layout_map[r".*mlp/fc1/bias"] = (model,)
    layout_map[r".*mlp/fc2/kernel"] = (model, None)
    return layout_map


def _reset_compiled_functions(model):
    # The trainable set changed: compiled train/test steps must be traced again.
    model.train_function = model.test_function = model.predict_function = None
    if getattr(model, "optimizer", None) is not None and model.optimizer.built:
        model.optimizer = keras.optimizers.get(
            keras.optimizers.serialize(model.optimizer)
        )
