"""Filling a Keras DeiT model from a checkpoint: resolve, read, map, check, assign.

`load_pretrained` takes any source `keras_deit.conversion.sources` knows (preset, URL, hub id, folder,
file), reads it, works out its config (config.json, or the tensor shapes for timm-layout
weights), and assigns it through the key map of its naming (`keras_deit.conversion.hf` or
`keras_deit.conversion.timm`).

Nothing is assigned until every check has passed, and the model is only returned then, so a
failed load never leaves a half-filled model behind.
"""

import contextlib
import dataclasses
import os
import warnings

import numpy as np

from keras_deit.conversion import hf, key_maps, sources, timm
from keras_deit.conversion.readers import (
    CheckpointError, CorruptCheckpointError, read_checkpoint, read_safetensors_header,
)
from keras_deit.conversion.shapes import check_hf_config
from keras_deit import keras_native
from keras_deit.config import read_json_object
from keras_deit.model_preprocessing import processor_for

# Weight files of an HF folder, in the order transformers prefers them.
HF_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "tf_model.h5")


@dataclasses.dataclass
class LoadingInfo:
    """What a load did besides copying tensors one to one.

    Attributes:
        fresh: our variables left at their initial values (no or mismatched source tensor).
        dropped: source tensors deliberately not used (a head or part the model does not have).
        source: the file the weights came from.
        format: the checkpoint's naming, "hf" (transformers) or "timm" (timm / original .pth).
        preset: the preset the source was named by or belongs to, if any.
        notes: what was inferred rather than read (a guessed head count), as sentences.
    """

    fresh: list
    dropped: list
    source: str
    format: str = "hf"
    preset: str = None
    notes: list = dataclasses.field(default_factory=list)


def find_weights_file(folder, weights_file=None):
    """The weight file of an HF folder: `weights_file` if given, else the preferred one present."""
    if weights_file is not None:
        path = weights_file if os.path.isabs(weights_file) else os.path.join(folder, weights_file)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"No weights file {weights_file!r} in {folder!r}.")
        return path
    present = [name for name in HF_WEIGHT_FILES if os.path.isfile(os.path.join(folder, name))]
    if not present:
        raise FileNotFoundError(
            f"{folder!r} holds no weights file: expected one of {', '.join(HF_WEIGHT_FILES)}."
        )
    return os.path.join(folder, present[0])


# The key maps, by checkpoint naming. Each module provides `canonicalize`, `BACKBONE_MAP` and
# `OPTIONAL_MAP` (rows of our path, source names, transform).
KEY_MAPS = {"hf": hf, "timm": timm}


def detect_format(tensors):
    """"timm" for timm / original DeiT names, "hf" for transformers names."""
    return "timm" if timm.is_timm_state(tensors) else "hf"


def assign_checkpoint(model, tensors, source="<tensors>", strict=True, key_map=None,
                      progress=None):
    """Copies checkpoint tensors into `model` after checking all of them.

    Args:
        model: a DeiT model of this package.
        tensors: `{name: array}` in PyTorch layouts, named as transformers or timm names them.
        strict: if True (default), a backbone variable with no source, a shape mismatch in the
            backbone, or a source tensor that nothing uses is an error listing every such name.
            Heads, the pooler and the mask token are optional either way: fresh when missing or
            of another shape (e.g. another `num_labels`), dropped when the model has none. A
            backbone part on one side only (distillation token, LayerScale, qkv bias) is an
            error either way: the architectures differ.
        key_map: "hf" or "timm"; detected from the names when None.
        progress: optional callable `(done, total)` called as variables are assigned.

    Returns:
        A `LoadingInfo`.
    """
    key_map = key_map or detect_format(tensors)
    if key_map not in KEY_MAPS:
        raise ValueError(f"`key_map` must be one of {sorted(KEY_MAPS)}. Received: {key_map!r}")
    table = KEY_MAPS[key_map]
    tensors = table.canonicalize(tensors)
    variables = {v.path: v for v in model.weights}
    num_layers = model.config.num_hidden_layers
    required = key_maps.expand(table.BACKBONE_MAP, num_layers)
    optional = key_maps.expand(table.OPTIONAL_MAP, num_layers)

    updates, fresh, offered, used = [], [], set(), set()
    missing, mismatched = [], []
    for rows, is_required in ((required, True), (optional, False)):
        for path, names, transform in rows:
            variable = variables.get(path)
            present = all(s in tensors for s in names)
            if variable is None:
                if present and not is_required:
                    offered.update(names)  # dropped, unless another row uses them
                elif present:
                    # A backbone part the model lacks is another architecture, not a head to
                    # drop: loading on would silently change the outputs.
                    why = next((why for part, why in _ABSENT_PART.items()
                                if path.endswith("/" + part)), f"the model has no {path}")
                    mismatched.append(f"{names[0]}: {why}")
                    used.update(names)
                continue
            if not present:
                (missing if is_required else fresh).append(path)
                continue
            used.update(names)
            value = np.asarray(transform(*(tensors[s] for s in names)))
            if tuple(value.shape) != tuple(variable.shape):
                message = (f"{path}: checkpoint {tuple(value.shape)} vs model "
                           f"{tuple(variable.shape)} (from {', '.join(names)})")
                if is_required:
                    mismatched.append(message)
                else:
                    fresh.append(path)
                continue
            updates.append((variable, value))
    # A model variable that no row names would silently keep its initial value.
    covered = {path for path, _, _ in required + optional}
    missing.extend(path for path in variables if path not in covered)

    dropped = sorted(offered - used)
    unused = sorted(set(tensors) - used - offered)
    problems = []
    if missing:
        problems.append("model variables with no tensor in the checkpoint: " + ", ".join(missing))
    if mismatched:
        problems.append("shape mismatches: " + "; ".join(mismatched))
    if unused and strict:
        problems.append("checkpoint tensors that fit nowhere in the model: " + ", ".join(unused))
    if problems:
        raise CheckpointError(
            f"{source!r} does not fit {type(model).__name__} built from "
            f"{_describe(model.config)}:\n  - " + "\n  - ".join(problems) + "\n"
            "Check that the config matches the checkpoint (same size and variant); pass "
            "strict=False to ignore unused tensors."
        )
    for done, (variable, value) in enumerate(updates, 1):
        variable.assign(value)  # Keras casts to the variable's dtype (bfloat16 too).
        if progress is not None:
            progress(done, len(updates))
    return LoadingInfo(fresh=fresh, dropped=sorted(dropped + (unused if not strict else [])),
                       source=source, format=key_map)


# Why a backbone tensor has no place in the model, by the last part of our variable path.
_ABSENT_PART = {
    "distillation_token": "the checkpoint has a distillation token, the model "
                          "(use_distillation_token=False) has none",
    "ls1": "the checkpoint has LayerScale (DeiT III), the model (layer_scale_init_value=None) "
           "has none",
    "ls2": "the checkpoint has LayerScale (DeiT III), the model (layer_scale_init_value=None) "
           "has none",
    "qkv/bias": "the checkpoint has q/k/v biases, the model (qkv_bias=False) has none",
}


def _describe(config):
    return (f"hidden_size={config.hidden_size}, layers={config.num_hidden_layers}, "
            f"heads={config.num_attention_heads}, patch={config.patch_size}, "
            f"image={config.image_size}, distillation_token={config.use_distillation_token}")


def model_class_for(config):
    """The name of our class for the config's `architectures` entry ("DeiTModel" when there
    is none)."""
    for name in config.extra.get("architectures") or []:
        if name in hf.ARCHITECTURES:
            return hf.ARCHITECTURES[name]
    return "DeiTModel"


@dataclasses.dataclass
class Checkpoint:
    """A checkpoint read into memory, with the config it is built with.

    Attributes:
        tensors: `{name: array}` as stored (transformers or timm names, PyTorch layouts).
        config: the `DeiTConfig` to build the model from.
        format: "hf" or "timm", which key map applies.
        path: the weights file.
        folder: the HF / timm hub folder it came from, or None for a lone file.
        preset: the preset it was named by or belongs to, if any.
        model_class: the name of our class the checkpoint is for (auto-selection).
        notes: what was inferred rather than read (see `LoadingInfo.notes`).
    """

    tensors: dict
    config: object
    format: str
    path: str
    folder: str = None
    preset: str = None
    model_class: str = "DeiTModel"
    notes: list = dataclasses.field(default_factory=list)


def open_checkpoint(source, config=None, weights_file=None, num_attention_heads=None,
                    preset_source="original", cache_dir=None, progress=True, revision=None):
    """Fetches (if needed) and reads `source`, and works out its config.

    Args:
        source: a preset name, a URL of a checkpoint file, a hub id (`owner/name`), a local HF or
            timm hub folder, or a local `.pth` / `.bin` / `.safetensors` / `.h5` file.
        config: a `DeiTConfig` to use. For timm-layout weights it is checked against the
            tensor shapes (a `CheckpointError` lists the differences); for an HF folder it
            replaces config.json, as before.
        weights_file: inside a folder, the weights file to read.
        num_attention_heads: for timm-layout weights, the head count (shapes do not give it).
        preset_source: "original" or "hub", for preset names (see `keras_deit.conversion.sources`).
        cache_dir: download cache (default `$KERAS_DEIT_CACHE` or `~/.cache/keras_deit`).
        progress: show progress bars for large downloads.
        revision: hub revision for hub ids.

    Returns:
        A `Checkpoint`.
    """
    from keras_deit import presets
    from keras_deit.config import DeiTConfig

    resolved = sources.resolve(source, preset_source=preset_source, cache=cache_dir,
                               progress=progress, revision=revision)
    preset_config = None
    if resolved.preset is not None:
        kind = "hub" if preset_source == "hub" else "original"
        preset_config = DeiTConfig.from_preset(resolved.preset, source=kind)

    folder = resolved.path if resolved.is_folder else None
    path = find_weights_file(folder, weights_file) if folder else resolved.path
    # A safetensors header gives every name and shape without the data, so a config that
    # does not fit is refused before anything is read or built; other formats are read whole.
    if path.endswith(".safetensors"):
        tensors = None
        header = _read(read_safetensors_header, path, resolved)[0]
        shapes = {name: spec.shape for name, spec in header.items()}
    else:
        tensors = _read(read_checkpoint, path, resolved)
        shapes = {name: np.shape(value) for name, value in tensors.items()}
    meta = _folder_config(folder) if folder else None

    if timm.is_timm_state(shapes):
        tensors = _read(read_checkpoint, path, resolved) if tensors is None else tensors
        # A timm hub folder's config.json names its timm architecture: a preset, if it is one.
        arch = (meta or {}).get("architecture")
        expected = config or preset_config or (
            DeiTConfig.from_preset(arch) if presets.is_preset(arch) else None
        )
        notes = []
        config = timm.config_from_timm_state(tensors, num_attention_heads, expected, notes)
        model_class = timm.model_class_name(config)
        fmt = "timm"
    else:
        config_path = None
        if config is None:
            config_path = _hf_config_path(folder, path)
            if config_path is None:
                raise CheckpointError(
                    f"{path!r} is in transformers' layout but has no config.json beside it: "
                    "put the checkpoint's config.json in its folder, or pass "
                    "config=DeiTConfig(...)."
                )
            config = DeiTConfig.from_json(config_path)
        if preset_config is not None:
            differences = timm.architecture_differences(preset_config, config)
            if differences:
                raise CheckpointError(
                    f"{path!r} does not have the architecture of preset {resolved.preset!r}:\n  - "
                    + "\n  - ".join(differences)
                )
        check_hf_config(config, shapes, path, config_path)
        tensors = _read(read_checkpoint, path, resolved) if tensors is None else tensors
        model_class = model_class_for(config)
        fmt = "hf"
        notes = []
    return Checkpoint(tensors=tensors, config=config, format=fmt, path=path, folder=folder,
                      preset=resolved.preset, model_class=model_class, notes=notes)


def _read(reader, path, resolved):
    """`reader(path)`. A corrupt file that came from a download is removed from the cache, so
    the next run fetches it again instead of failing on the same bytes (a server that sends
    neither a length nor a hash cannot be caught mid-download)."""
    try:
        return reader(path)
    except CorruptCheckpointError as e:
        if resolved.origin is None or not sources.is_url(resolved.origin):
            raise
        with contextlib.suppress(OSError):
            os.remove(path)
        raise CorruptCheckpointError(
            f"{e} It was the cached download of {resolved.origin}, now removed: run again to "
            "download it afresh."
        ) from None


def _folder_config(folder):
    """The folder's config.json as a dict, or None when it has none."""
    path = os.path.join(folder, "config.json")
    return read_json_object(path, "config file") if os.path.isfile(path) else None


def _hf_config_path(folder, weights_path):
    """The config.json of an HF checkpoint: in its folder, or beside a lone weights file."""
    for candidate in (folder, os.path.dirname(os.path.abspath(weights_path))):
        if candidate and os.path.isfile(os.path.join(candidate, "config.json")):
            return os.path.join(candidate, "config.json")
    return None


# Assignment gets a progress bar above this checkpoint size.
_PROGRESS_MIN_BYTES = 256 << 20


def load_pretrained(cls, source, config=None, weights_file=None, strict=True, num_labels=None,
                    id2label=None, num_attention_heads=None, preset_source="original",
                    cache_dir=None, progress=True, revision=None, **model_options):
    """Builds `cls` (a DeiT model class, or the checkpoint's own) and fills it.

    `DeiTPreTrainedModel.from_pretrained` is the entry point; this is its body, beside the
    readers, so that the models import conversion and never the reverse.

    Args:
        cls: one of the four model classes, or a dict {class name: class} (such as
            `keras_deit.models.MODEL_CLASSES`) for automatic: the class the config.json
            `architectures` names for HF checkpoints; for timm ones the distilled model with
            both heads, the classifier, or the bare model when there is no head.
        source: a preset name (`keras_deit.presets.list_presets()`), a URL of an original `.pth`
            file, a Hugging Face Hub id, a local HF folder (`config.json` + weights), a timm hub
            folder, or a local `.pth` / `.bin` / `.safetensors` file. See `open_checkpoint`.
        config: optional `DeiTConfig`: replaces config.json for HF folders; checked against the
            tensor shapes for timm-layout weights.
        weights_file: a file name inside the folder, to pick one format when several exist.
        strict: see `assign_checkpoint`.
        num_labels / id2label: a new label set; the classifier is then initialized fresh.
        num_attention_heads: the head count of timm-layout weights, when neither a preset nor
            `config` gives it (shapes cannot; the default is 64-wide heads).
        preset_source: for preset names, "original" (the released `.pth`, needs torch to read)
            or "hub" (the transformers repository; timm's for DeiT III).
        cache_dir: where downloads are kept (default `$KERAS_DEIT_CACHE`, else
            `~/.cache/keras_deit`).
        progress: show progress bars on stderr for large downloads and conversions.
        revision: hub revision (branch, tag or commit) for hub ids.
        **model_options: passed to the model constructor (`output_attentions`, `data_format`,
            `interpolate_pos_encoding`, `add_pooling_layer`, ...). `include_preprocessing=True`
            puts the checkpoint's own preprocessing in the model (its preprocessor_config.json,
            else its preset's recipe, else the original DeiT recipe), which then takes uint8
            images of any size.

    Returns:
        The model, with `model.loading_info` (a `LoadingInfo`). Fresh variables are reported in
        a warning by name; tensors left out on purpose (e.g. `head_dist` of a distilled
        checkpoint read into `DeiTForImageClassification`) in `loading_info.dropped`.
    """
    checkpoint = open_checkpoint(
        source, config=config, weights_file=weights_file, num_attention_heads=num_attention_heads,
        preset_source=preset_source, cache_dir=cache_dir, progress=progress, revision=revision,
    )
    if num_labels is not None or id2label is not None:
        changes = {"id2label": id2label} if id2label is not None else {"num_labels": num_labels}
        checkpoint.config = checkpoint.config.replace(**changes)
        if checkpoint.format == "timm":
            checkpoint.model_class = timm.model_class_name(checkpoint.config)
    return build_model(checkpoint, cls, strict=strict, progress=progress, **model_options)


def build_model(checkpoint, cls=None, strict=True, progress=True, **model_options):
    """Builds `cls` (a model class, or a dict {class name: class} to take the checkpoint's own
    class from) from an opened `Checkpoint` and fills it; see `load_pretrained`."""
    if isinstance(cls, dict):
        cls = cls[checkpoint.model_class]
    # A quantized dtype ("int8_from_float32") is applied after the float weights are in: the
    # checkpoint holds float kernels, and Keras quantizes from them.
    dtype = model_options.pop("dtype", None)
    mode = keras_native.pending_quantization(dtype)
    if model_options.get("include_preprocessing") is True:
        # The checkpoint's own recipe rather than the constructors' default.
        model_options["include_preprocessing"] = processor_for(
            checkpoint.folder, checkpoint.preset, checkpoint.config
        )
    model_options["dtype"] = keras_native.layer_policy(dtype)
    model = _fill(cls(checkpoint.config, **model_options), checkpoint, strict, progress)
    if mode is not None:
        model.quantize(mode)
    return model


def _fill(model, checkpoint, strict, progress):
    """Assigns `checkpoint` to `model`, warns about fresh variables, attaches `loading_info`."""
    bar = None
    size = sum(np.asarray(t).nbytes for t in checkpoint.tensors.values())
    if progress and size >= _PROGRESS_MIN_BYTES:
        from keras_deit.conversion.progress import Progress

        bar = Progress("Converting", unit="variables")

    def report(done, total):
        bar.total = total
        bar.update(done)

    info = assign_checkpoint(model, checkpoint.tensors, source=checkpoint.path, strict=strict,
                             key_map=checkpoint.format, progress=report if bar else None)
    if bar:
        bar.close()
    info.preset = checkpoint.preset
    info.notes = list(checkpoint.notes)
    if info.fresh:
        warnings.warn(
            f"{type(model).__name__}: these variables were not in {checkpoint.path!r} (or had "
            f"another shape) and are freshly initialized; train them before use: "
            f"{', '.join(info.fresh)}",
            stacklevel=5,
        )
    model.loading_info = info
    return model
