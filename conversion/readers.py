"""Readers for checkpoint files: each returns `{name: numpy array}` and never imports Keras.

- `read_safetensors`: our own parser (the format is a JSON header and raw little-endian
  bytes). `read_safetensors_header` checks the whole header against the file before any data
  is read (what the `safetensors` package checks, plus duplicate keys and non-UTF-8 headers),
  and names the file, the tensor and the field of any problem.
- `read_torch`: `pytorch_model.bin` and `.pth` files, with torch (optional) and weights_only.
- `read_tf_h5`: transformers' `tf_model.h5`, renamed and transposed to the PyTorch layout so
  one key map serves every format.

A malformed file raises `CorruptCheckpointError` (a `CheckpointError`); a file that is well
formed but refused (code in a pickle, not a checkpoint) raises `CheckpointError`.
"""

import dataclasses
import json
import math
import os
import pickle
import re
import struct

import numpy as np

from keras_deit.checks import is_int


class CheckpointError(ValueError):
    """A checkpoint file that cannot be read, or that does not fit the model."""


class CorruptCheckpointError(CheckpointError):
    """A checkpoint file whose bytes are malformed: truncated, a header that lies about its
    data, an archive that does not open. Raised before any tensor is used; the fix is always
    to get the file again (or from a source that is not corrupt)."""


_SAFETENSORS_DTYPES = {
    "F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": np.uint16,
    "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8,
    "BOOL": np.bool_,
}
# The reference implementation's bound: a larger header is a corrupt length field, and reading
# it would allocate whatever the first 8 bytes claim.
_MAX_SAFETENSORS_HEADER = 100 << 20
_REFETCH = "the file is corrupt or not a safetensors file: download it again"


@dataclasses.dataclass(frozen=True)
class TensorSpec:
    """One tensor of a safetensors header, checked: `dtype` (a safetensors name such as
    "F32"), `shape` (tuple of ints) and its byte range `begin`..`end` in the data section."""

    dtype: str
    shape: tuple
    begin: int
    end: int


def _corrupt(path, problem, fix=_REFETCH):
    return CorruptCheckpointError(f"{path}: {problem}; {fix}.")


def _reject_duplicates(pairs):
    """`object_pairs_hook` for json: a repeated key would silently shadow the first one."""
    out = {}
    for key, value in pairs:
        if key in out:
            raise _DuplicateKey(key)
        out[key] = value
    return out


class _DuplicateKey(Exception):
    pass


def read_safetensors_header(path):
    """The validated header of a `.safetensors` file, without reading any tensor data.

    Everything the data will be trusted for is checked first: the header is UTF-8 JSON, an
    object mapping unique names to `{"dtype", "shape", "data_offsets"}` with a known dtype,
    non-negative int dimensions and two int offsets; each byte range is exactly dtype size x
    shape; the ranges, in order, are contiguous and cover the data section exactly (no gaps,
    overlaps or trailing bytes).

    Returns:
        `{name: TensorSpec}` (without `__metadata__`) and the file offset of the data section.

    Raises:
        CorruptCheckpointError: naming the file, the tensor or field, and the fix.
    """
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise _corrupt(path, f"the file has {size} bytes, fewer than a safetensors header "
                                 "length (it is empty or truncated)")
        (header_len,) = struct.unpack("<Q", head)
        if header_len > min(size - 8, _MAX_SAFETENSORS_HEADER):
            raise _corrupt(path, f"the file is truncated or not a safetensors file: its header "
                                 f"claims {header_len} bytes but the file has {size}")
        raw = f.read(header_len)
    try:
        # Decoded here, not by json.loads, which would also accept UTF-16 and UTF-32.
        text = raw.decode("utf-8")
        header = json.loads(text, object_pairs_hook=_reject_duplicates)
    except UnicodeDecodeError as e:
        raise _corrupt(path, f"corrupt safetensors header: not UTF-8 (byte {e.start})") from None
    except json.JSONDecodeError as e:
        raise _corrupt(path, f"corrupt safetensors header: not JSON ({e.msg} at character "
                             f"{e.pos})") from None
    except _DuplicateKey as e:
        raise _corrupt(path, f"corrupt safetensors header: the key {e.args[0]!r} appears twice "
                             "(one tensor would silently replace the other)") from None
    if not isinstance(header, dict):
        raise _corrupt(path, f"corrupt safetensors header: a JSON {type(header).__name__}, "
                             "not an object of tensors")
    metadata = header.pop("__metadata__", None)
    if metadata is not None and not isinstance(metadata, dict):
        raise _corrupt(path, "corrupt safetensors header: `__metadata__` is not an object")
    specs = {name: _tensor_spec(path, name, spec) for name, spec in header.items()}
    data_size = size - 8 - header_len
    position = 0
    for name, spec in sorted(specs.items(), key=lambda item: (item[1].begin, item[1].end)):
        if spec.begin != position:
            problem = ("overlaps the tensor before it" if spec.begin < position
                       else f"leaves a gap of {spec.begin - position} bytes before it")
            raise _corrupt(path, f"tensor {name!r} starts at byte {spec.begin} and {problem} "
                                 "(data_offsets must be contiguous and non-overlapping)")
        position = spec.end
    if position > data_size:
        raise _corrupt(path, f"the file is truncated: its tensors need {8 + header_len + position} "
                             f"bytes but the file has {size}")
    if position < data_size:
        raise _corrupt(path, f"{data_size - position} trailing bytes after the last tensor "
                             "(the header does not describe the whole file)")
    return specs, 8 + header_len


def _tensor_spec(path, name, spec):
    """A `TensorSpec` from one header entry, or the error naming what is wrong with it."""
    where = f"tensor {name!r}"
    if not isinstance(spec, dict):
        raise _corrupt(path, f"{where}: its header entry is a JSON {type(spec).__name__}, not "
                             "an object with dtype, shape and data_offsets")
    absent = [k for k in ("dtype", "shape", "data_offsets") if k not in spec]
    if absent:
        raise _corrupt(path, f"{where}: its header entry has no {', '.join(absent)}")
    dtype, shape, offsets = spec["dtype"], spec["shape"], spec["data_offsets"]
    if dtype not in _SAFETENSORS_DTYPES:
        raise _corrupt(path, f"{where}: unsupported dtype {dtype!r} (expected one of "
                             f"{', '.join(_SAFETENSORS_DTYPES)})")
    if not isinstance(shape, list) or not all(is_int(d) and d >= 0 for d in shape):
        raise _corrupt(path, f"{where}: shape {shape!r} is not a list of non-negative ints")
    if (not isinstance(offsets, list) or len(offsets) != 2
            or not all(is_int(o) and o >= 0 for o in offsets) or offsets[0] > offsets[1]):
        raise _corrupt(path, f"{where}: data_offsets {offsets!r} are not two ints "
                             "0 <= begin <= end")
    nbytes = math.prod(shape) * np.dtype(_SAFETENSORS_DTYPES[dtype]).itemsize
    if offsets[1] - offsets[0] != nbytes:
        raise _corrupt(path, f"{where}: {dtype} of shape {tuple(shape)} needs {nbytes} bytes but "
                             f"data_offsets {offsets} hold {offsets[1] - offsets[0]}")
    return TensorSpec(dtype=dtype, shape=tuple(shape), begin=offsets[0], end=offsets[1])


def _bfloat16_to_float32(bits):
    """bfloat16 is the upper half of a float32: shift the 16 stored bits into place."""
    return (bits.astype(np.uint32) << 16).view(np.float32)


def read_safetensors(path):
    """Reads a `.safetensors` file into float32/int numpy arrays (bfloat16 widened), after
    `read_safetensors_header` has checked the whole header against the file."""
    specs, data_start = read_safetensors_header(path)
    needed = max((spec.end for spec in specs.values()), default=0)
    blob = np.memmap(path, dtype=np.uint8, mode="r", offset=data_start, shape=(needed,)) if needed else None
    tensors = {}
    for name, spec in specs.items():
        dtype = np.dtype(_SAFETENSORS_DTYPES[spec.dtype]).newbyteorder("<")
        array = np.frombuffer(blob[spec.begin:spec.end], dtype=dtype) if spec.end > spec.begin \
            else np.zeros(0, dtype)
        array = array.reshape(spec.shape)
        if spec.dtype == "BF16":
            array = _bfloat16_to_float32(array)
        tensors[name] = np.array(array)  # Copy out of the memory map.
    return tensors


def read_torch(path):
    """Reads a PyTorch checkpoint (`pytorch_model.bin`, `.pth`) as numpy, with weights_only."""
    try:
        import torch
    except ImportError:
        raise CheckpointError(
            f"Reading {os.path.basename(path)!r} needs PyTorch, which is not installed: "
            "`pip install torch`, or use the checkpoint's model.safetensors instead."
        ) from None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if "Weights only load failed" not in str(e):
            raise _corrupt(path, f"not a readable PyTorch pickle ({_first_line(e)})",
                           "the file may be truncated: download it again") from None
        # torch's advice (weights_only=False, add_safe_globals) is exactly what must not be
        # done with a stranger's file: say what was found, and that it did not run.
        found = re.search(r"GLOBAL ([\w.]+)", str(e))
        what = f"calls `{found[1]}`" if found else "builds objects other than tensors"
        raise CheckpointError(
            f"{path}: the file contains code (its pickle {what}) and was refused without "
            "running it; only tensors are loaded. Use the checkpoint's .safetensors file, or "
            "get this one from its original publisher."
        ) from None
    except Exception as e:  # torch raises many types for a damaged zip/pickle
        raise _corrupt(path, f"could not be read as a PyTorch checkpoint ({type(e).__name__}: "
                             f"{_first_line(e)})", "the file may be truncated: download it again"
                       ) from None
    for wrapper in ("model", "state_dict", "model_ema"):
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
            break
    if not isinstance(state, dict):
        raise CheckpointError(f"{path!r} holds a {type(state).__name__}, not a state dict.")
    return {
        name: tensor.detach().float().numpy() if tensor.is_floating_point() else tensor.numpy()
        for name, tensor in state.items()
        if hasattr(tensor, "detach")
    }


def _first_line(error):
    """The first line of an exception's message (libraries append paragraphs of advice)."""
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


def _h5_name_to_torch(name):
    """`tf_dei_t_for_x/deit/encoder/layer_._0/attention/attention/query/kernel:0` ->
    (`deit.encoder.layer.0.attention.attention.query`, `kernel`)."""
    parts = name.split(":")[0].split("/")[1:]  # drop the TF class scope
    parts = [p.replace("layer_._", "layer.") for p in parts]
    return ".".join(parts[:-1]), parts[-1]


def read_tf_h5(path):
    """Reads transformers' `tf_model.h5` and returns PyTorch names and layouts."""
    import h5py

    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise _corrupt(path, f"could not be opened as HDF5 ({_first_line(e)})",
                       "the file may be truncated: download it again") from None
    tensors = {}
    with f:
        if "layer_names" not in f.attrs:
            raise CheckpointError(f"{path}: an HDF5 file but not a Keras/transformers TF "
                                  "checkpoint (no `layer_names`): pass a tf_model.h5.")
        for layer in f.attrs["layer_names"]:
            layer = layer.decode() if isinstance(layer, bytes) else str(layer)
            group = f.get(layer)
            if not isinstance(group, h5py.Group) or "weight_names" not in group.attrs:
                raise _corrupt(path, f"`layer_names` lists {layer!r}, which the file does not "
                                     "hold as a group of weights")
            for weight in group.attrs["weight_names"]:
                weight = weight.decode() if isinstance(weight, bytes) else str(weight)
                try:
                    value = np.asarray(group[weight])
                except (OSError, KeyError, ValueError) as e:
                    raise _corrupt(path, f"weight {weight!r} is unreadable ({_first_line(e)})"
                                   ) from None
                module, kind = _h5_name_to_torch(weight)
                if kind == "kernel" and value.ndim == 2:
                    tensors[module + ".weight"] = value.T
                elif kind == "kernel" and value.ndim == 4:  # (kh, kw, in, out) -> (out, in, kh, kw)
                    tensors[module + ".weight"] = value.transpose(3, 2, 0, 1)
                elif kind == "gamma":
                    tensors[module + ".weight"] = value
                elif kind == "beta":
                    tensors[module + ".bias"] = value
                else:  # bias, and embeddings stored as bare variables (cls_token, ...)
                    tensors[f"{module}.{kind}" if module else kind] = value
    return tensors


def read_checkpoint(path):
    """Reads any supported checkpoint file, chosen by its extension."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"No checkpoint file at {path!r}.")
    name = os.path.basename(path)
    if name.endswith(".safetensors"):
        return read_safetensors(path)
    if name.endswith((".h5", ".hdf5")):
        return read_tf_h5(path)
    if name.endswith((".bin", ".pth", ".pt")):
        return read_torch(path)
    raise CheckpointError(
        f"Unknown checkpoint format {name!r}: expected .safetensors, .bin, .pth or .h5."
    )
