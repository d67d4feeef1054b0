"""Writing a Keras DeiT model back out: transformers' folder layout and the original timm `.pth`.

The exact inverse of loading. The same key maps (`keras_deit.conversion.hf`, `keras_deit.conversion.timm`) are
walked the other way: every row our model has gives the source tensor(s) it was made from,
through the inverse of the row's transform (`INVERSES`). A model variable that no row names
(a quantized scale, a LoRA factor, a part the layout has no place for) is refused, so nothing
written is ever silently incomplete.

`save_transformers` writes `config.json`, `model.safetensors` and `preprocessor_config.json`
(the ViT layout for models without a distillation token, as the hub stores the non-distilled
DeiT checkpoints); `save_timm` writes `{"model": state_dict}` with torch, as the original
releases are. Both write through `keras_deit.atomic`: the output appears whole or not at all.
"""

import json
import os
import struct
import warnings

import numpy as np

from keras_deit.conversion import hf, timm
from keras_deit.conversion.readers import CheckpointError
from keras_deit import atomic

LAYOUTS = ("transformers", "timm")


def _split_qkv_kernel(kernel):
    """(d, 3d) kernel with columns [q | k | v] -> three torch Linear weights (d, d)."""
    return tuple(np.split(kernel.T, 3, axis=0))


def _split_qkv_bias(bias):
    return tuple(np.split(bias, 3, axis=0))


# The inverse of each transform of the key maps, as a tuple with one array per source name.
INVERSES = {
    hf.same: lambda x: (x,),
    hf.dense_kernel: lambda w: (w.T,),
    hf.conv_kernel: lambda w: (w.transpose(3, 2, 0, 1),),
    hf.conv1x1_as_dense_kernel: lambda w: (w.T[:, :, None, None],),
    hf.fused_qkv_kernel: _split_qkv_kernel,
    hf.fused_qkv_bias: _split_qkv_bias,
}

# Safetensors dtype names of the float dtypes a model's variables may have.
_SAFETENSORS_NAMES = {"float32": "F32", "float16": "F16", "bfloat16": "BF16", "float64": "F64"}

# transformers' head modules sit beside the backbone (`deit.` / `vit.`), not inside it.
_HF_HEADS = ("classifier.", "cls_classifier.", "distillation_classifier.", "decoder.")

# The original DeiT III files (facebookresearch/deit `models_v2.py`) name LayerScale
# `blocks.N.gamma_1`; timm renames these on load, so both read this name.
_TIMM_LAYER_SCALE = {".ls1.gamma": ".gamma_1", ".ls2.gamma": ".gamma_2"}


def _numpy(variable):
    """A variable's value as a numpy array (bfloat16 stays bfloat16, via ml_dtypes)."""
    import keras

    return np.ascontiguousarray(keras.ops.convert_to_numpy(variable.value))


def check_layout(model, layout):
    """Raises `CheckpointError` (one line naming the parts and the fix) when `layout` cannot
    hold `model`: a variable no row of its key map names (a pooler, mask token or decoder for
    timm; LoRA factors; quantization scales), a dtype that is not float, a head or variant
    with no class to read it (DeiT III in transformers), or torch missing for timm's `.pth`.
    Cheap (no weights are copied), so callers can check before any long work."""
    if layout not in LAYOUTS:
        raise ValueError(f"`layout` must be one of {LAYOUTS}. Received: layout={layout!r}")
    if layout == "transformers":
        transformers_architecture(model)  # first: "no such class" says more than the parts
    table = hf if layout == "transformers" else timm
    num_layers = model.config.num_hidden_layers
    covered = {path for path, _, _ in hf.expand(table.BACKBONE_MAP, num_layers)
               + hf.expand(table.OPTIONAL_MAP, num_layers)}
    homeless = [v.path for v in model.weights if v.path not in covered]
    if homeless:
        raise CheckpointError(
            f"The {layout} layout has no place for {type(model).__name__}'s "
            f"{', '.join(homeless)}: {_homeless_fix(homeless, layout)}."
        )
    for variable in model.weights:
        if str(variable.dtype) not in _SAFETENSORS_NAMES:
            raise CheckpointError(
                f"{variable.path} has dtype {variable.dtype}, which the {layout} layout cannot "
                "store as float weights: save the float model (before `quantize`), or build it "
                "with dtype='float32'."
            )
    if layout == "timm":
        _require_torch()


def state_dict(model, layout):
    """The model's variables as `{name: numpy array}` in `layout`'s names and PyTorch layouts.

    Args:
        model: a DeiT model of this package (float weights; merge LoRA and save before
            quantizing).
        layout: "transformers" (saved transformers names, without the backbone prefix) or
            "timm" (timm / facebookresearch names).

    Raises:
        CheckpointError: see `check_layout`.
    """
    check_layout(model, layout)
    table = hf if layout == "transformers" else timm
    num_layers = model.config.num_hidden_layers
    rows = hf.expand(table.BACKBONE_MAP, num_layers) + hf.expand(table.OPTIONAL_MAP, num_layers)
    variables = {v.path: v for v in model.weights}
    out = {}
    for path, names, transform in rows:
        if path in variables:
            arrays = INVERSES[transform](_numpy(variables[path]))
            out.update((name, np.ascontiguousarray(a)) for name, a in zip(names, arrays))
    return out


def _homeless_fix(paths, layout):
    if any("lora" in p for p in paths):
        return "call model.merge_lora() first"
    if any(p.endswith(("_scale", "_zero")) for p in paths):  # Keras' quantization variables
        return "write the float model, before `quantize`"
    if layout == "timm":
        return ("timm's VisionTransformer has no pooler, mask token or SimMIM decoder: build "
                "the model without them (add_pooling_layer=False), or write "
                "layout='transformers'")
    return "this part has no transformers equivalent"


# ---- transformers -----------------------------------------------------------------------

def transformers_architecture(model):
    """The transformers class for `model`: ours, ViT* when there is no distillation token.

    Raises:
        CheckpointError: transformers has no such class (DeiT III's LayerScale or patch-only
            position embeddings, a teacher head without distillation token).
    """
    config = model.config
    if config.layer_scale_init_value is not None or not config.class_token_position_embedding:
        raise CheckpointError(
            "transformers has no DeiT III class (LayerScale, position embeddings on the patches "
            "only): write layout='timm' (a .pth file) instead."
        )
    name = type(model).__name__
    if not config.use_distillation_token:
        name = name.replace("DeiT", "ViT", 1)
    if name not in hf.ARCHITECTURES:
        raise CheckpointError(
            f"transformers has no {name} class for a {type(model).__name__} without "
            "distillation token; nothing can read it back in that layout."
        )
    return name


def transformers_state_dict(model):
    """`state_dict(model, "transformers")` with the backbone prefix a task model's names carry
    (`deit.` or `vit.`); a bare model's names have none."""
    architecture = transformers_architecture(model)
    tensors = state_dict(model, "transformers")
    if architecture.endswith("Model"):
        return tensors
    prefix = "deit." if architecture.startswith("DeiT") else "vit."
    return {(name if name.startswith(_HF_HEADS) else prefix + name): value
            for name, value in tensors.items()}


def write_safetensors(path, tensors, metadata=None):
    """Writes `{name: numpy array}` as a `.safetensors` file.

    The format: an 8-byte little-endian header length, a JSON header mapping each name to
    its `dtype`, `shape` and `data_offsets` (into the data section), then the raw
    little-endian bytes of every tensor, in header order. bfloat16 arrays are stored as
    "BF16", other dtypes by their safetensors names.
    """
    header, offset, blobs = {}, 0, []
    for name, array in tensors.items():
        dtype = _SAFETENSORS_NAMES.get(array.dtype.name)
        if dtype is None:
            raise CheckpointError(f"{name}: dtype {array.dtype} cannot be written as safetensors "
                                  "float weights: cast it to float32.")
        data = np.ascontiguousarray(array)
        if data.dtype.byteorder == ">":
            data = data.byteswap().view(data.dtype.newbyteorder("<"))
        raw = data.tobytes()
        header[name] = {"dtype": dtype, "shape": list(array.shape),
                        "data_offsets": [offset, offset + len(raw)]}
        blobs.append(raw)
        offset += len(raw)
    if metadata:
        header["__metadata__"] = dict(metadata)
    text = json.dumps(header, separators=(",", ":")).encode("utf-8")
    # Padded with spaces to 8 bytes, as the reference writer does, so the data stays aligned.
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for raw in blobs:
            f.write(raw)


def transformers_config(model):
    """The `config.json` dict transformers builds the model from (`architectures` set)."""
    config = model.config.to_dict()
    config["architectures"] = [transformers_architecture(model)]
    return config


def default_image_processor(model):
    """The processor `save_transformers` writes when none is given: the one beside the
    checkpoint the model was loaded from, else its preset's recipe, else the original DeiT
    evaluation recipe at the model's resolution."""
    from keras_deit import presets
    from keras_deit.image_processing import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
    from keras_deit.image_processing import DeiTImageProcessor

    info = getattr(model, "loading_info", None)
    if info is not None:
        beside = os.path.join(os.path.dirname(os.path.abspath(info.source)),
                              "preprocessor_config.json")
        if os.path.isfile(beside):
            return DeiTImageProcessor.from_json_file(beside)
        if info.preset is not None:
            recipe = presets.get_preset(info.preset)["preprocessing"]
            return DeiTImageProcessor.from_timm_recipe(
                image_size=recipe["image_size"], crop_pct=recipe["crop_pct"],
                interpolation=recipe["interpolation"], mean=recipe["mean"], std=recipe["std"],
            )
    h, w = model.config.image_hw
    if h == w:
        return DeiTImageProcessor.from_timm_recipe(image_size=h)
    return DeiTImageProcessor(size={"height": h, "width": w}, do_center_crop=False,
                              crop_size={"height": h, "width": w},
                              image_mean=IMAGENET_DEFAULT_MEAN, image_std=IMAGENET_DEFAULT_STD)


def save_transformers(model, folder, overwrite=False, image_processor=None):
    """Writes `folder` with `config.json`, `model.safetensors` and `preprocessor_config.json`
    that transformers' DeiT / ViT classes load (`from_pretrained(folder)`).

    Args:
        model: a DeiT model of this package (any head; DeiT III has no transformers class).
        folder: the folder to write; it must not exist unless `overwrite` is True (then the
            three files are replaced and anything else in it is left alone).
        overwrite: replace the files of an existing folder.
        image_processor: the `DeiTImageProcessor` to write; by default `default_image_processor`.

    Returns:
        The folder.
    """
    folder = os.fspath(folder)
    if os.path.lexists(folder) and not overwrite:
        raise FileExistsError(f"{folder} exists: pass overwrite=True to replace it.")
    if os.path.exists(folder) and not os.path.isdir(folder):
        raise FileExistsError(f"{folder} is a file: name a folder for the transformers layout.")
    parent = os.path.dirname(os.path.abspath(folder))
    if not os.path.isdir(parent):
        raise FileNotFoundError(f"cannot write {folder}: the folder {parent} does not exist.")
    # Everything is computed, and refused if it must be, before anything touches the disk.
    tensors = transformers_state_dict(model)
    config = transformers_config(model)
    processor = image_processor or default_image_processor(model)
    with atomic.temporary_path(folder) as staging:
        os.makedirs(staging)
        write_safetensors(os.path.join(staging, "model.safetensors"), tensors,
                          metadata={"format": "pt"})
        with open(os.path.join(staging, "config.json"), "w", encoding="utf-8") as f:
            json.dump(config, f, indent=2, sort_keys=True)
            f.write("\n")
        processor_dict = dict(processor.to_dict())
        # transformers' processors output NCHW by default; ours NHWC: the file keeps theirs.
        processor_dict.pop("data_format", None)
        with open(os.path.join(staging, "preprocessor_config.json"), "w", encoding="utf-8") as f:
            json.dump(processor_dict, f, indent=2, sort_keys=True)
            f.write("\n")
        if not os.path.isdir(folder):
            os.replace(staging, folder)
        else:
            for name in sorted(os.listdir(staging)):
                os.replace(os.path.join(staging, name), os.path.join(folder, name))
    return folder


# ---- timm -------------------------------------------------------------------------------

def timm_state_dict(model):
    """`state_dict(model, "timm")` in the names of the original release files (DeiT III
    LayerScale as `gamma_1` / `gamma_2`)."""
    out = {}
    for name, value in state_dict(model, "timm").items():
        for timm_name, original in _TIMM_LAYER_SCALE.items():
            if name.endswith(timm_name):
                name = name[: -len(timm_name)] + original
        out[name] = value
    return out


def _require_torch():
    try:
        import torch
    except ImportError:
        raise CheckpointError("Writing the timm layout (.pth) needs PyTorch: `pip install "
                              "torch` (CPU build), or write layout='transformers'.") from None
    return torch


def _torch_tensor(torch, array):
    if array.dtype.name == "bfloat16":
        return torch.from_numpy(array.view(np.uint16).copy()).view(torch.bfloat16)
    return torch.from_numpy(np.array(array))


def save_timm(model, path, overwrite=False):
    """Writes `path` as `torch.save({"model": state_dict})`, the layout of the original
    facebookresearch/deit `.pth` releases, which timm and facebookresearch/deit load.

    Args:
        model: a DeiT model without pooler, mask token or SimMIM decoder (timm has none).
        path: the `.pth` file to write.
        overwrite: replace an existing file.

    Returns:
        The path.
    """
    path = os.fspath(path)
    if os.path.isdir(path):
        raise IsADirectoryError(f"{path} is a folder: name a .pth file for the timm layout.")
    _warn_if_not_timm_eps(model, path)
    tensors = timm_state_dict(model)
    torch = _require_torch()
    state = {name: _torch_tensor(torch, value) for name, value in tensors.items()}
    needed = sum(v.nbytes for v in tensors.values()) + 2**20
    with atomic.replacing(path, overwrite, needed) as tmp:
        torch.save({"model": state}, tmp)
    return path


def _warn_if_not_timm_eps(model, path):
    """A `.pth` holds no config: timm and facebookresearch/deit rebuild LayerNorm with 1e-6,
    so a model normalized with another epsilon (every transformers DeiT config: 1e-12) would
    reload with slightly different outputs (~5e-5 for deit-tiny), silently but for this."""
    from keras_deit import presets

    eps, timm_eps = model.config.layer_norm_eps, presets.LAYER_NORM_EPS["original"]
    if eps != timm_eps:
        warnings.warn(
            f"{path}: the model's layer_norm_eps is {eps:g}, but a .pth holds no config and "
            f"timm's create_model builds LayerNorm(eps={timm_eps:g}): outputs read back that "
            f"way differ slightly; pass norm_layer=partial(nn.LayerNorm, eps={eps:g}) to "
            "create_model, or use the transformers layout (its config.json keeps the epsilon).",
            UserWarning,
            stacklevel=3,
        )


def save_pretrained(model, path, layout="transformers", overwrite=False, image_processor=None):
    """Writes `model` in `layout`: "transformers" (a folder, `save_transformers`) or "timm"
    (a `.pth` file, `save_timm`); returns the path."""
    check_layout(model, layout)
    if layout == "timm":
        if image_processor is not None:
            raise ValueError("The timm layout holds weights only: leave out `image_processor`.")
        return save_timm(model, path, overwrite=overwrite)
    return save_transformers(model, path, overwrite=overwrite, image_processor=image_processor)
