"""Readers for checkpoint files: each returns `{name: numpy array}` and never imports Keras.

- `read_safetensors`: our own parser (the format is a JSON header and raw little-endian
  bytes), so a truncated or corrupt file is reported precisely and no extra package is needed.
- `read_torch`: `pytorch_model.bin` and `.pth` files, with torch (optional) and weights_only.
- `read_tf_h5`: transformers' `tf_model.h5`, renamed and transposed to the PyTorch layout so
  one key map serves every format.
"""

import json
import os
import struct

import numpy as np


class CheckpointError(ValueError):
    """A checkpoint file that cannot be read, or that does not fit the model."""


_SAFETENSORS_DTYPES = {
    "F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": np.uint16,
    "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8,
    "BOOL": np.bool_,
}


def _bfloat16_to_float32(bits):
    """bfloat16 is the upper half of a float32: shift the 16 stored bits into place."""
    return (bits.astype(np.uint32) << 16).view(np.float32)


def read_safetensors(path):
    """Reads a `.safetensors` file into float32/int numpy arrays (bfloat16 widened)."""
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise CheckpointError(f"{path!r} is empty or truncated (not a safetensors file).")
        (header_len,) = struct.unpack("<Q", head)
        if header_len > size - 8:
            raise CheckpointError(
                f"{path!r} is truncated or not a safetensors file: its header claims "
                f"{header_len} bytes but the file has {size}. Download it again."
            )
        try:
            header = json.loads(f.read(header_len))
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise CheckpointError(f"{path!r} has a corrupt safetensors header.") from None
    header.pop("__metadata__", None)
    data_start = 8 + header_len
    needed = max((spec["data_offsets"][1] for spec in header.values()), default=0)
    if data_start + needed > size:
        raise CheckpointError(
            f"{path!r} is truncated: its tensors need {data_start + needed} bytes but the file "
            f"has {size}. Download it again."
        )
    blob = np.memmap(path, dtype=np.uint8, mode="r", offset=data_start, shape=(needed,)) if needed else None
    tensors = {}
    for name, spec in header.items():
        dtype = _SAFETENSORS_DTYPES.get(spec["dtype"])
        if dtype is None:
            raise CheckpointError(f"{path!r}: tensor {name!r} has unsupported dtype {spec['dtype']}.")
        begin, end = spec["data_offsets"]
        array = np.frombuffer(blob[begin:end], dtype=np.dtype(dtype).newbyteorder("<"))
        array = array.reshape(spec["shape"])
        if spec["dtype"] == "BF16":
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
    except Exception as e:  # torch raises many types for a damaged zip/pickle
        raise CheckpointError(
            f"{path!r} could not be read as a PyTorch checkpoint ({type(e).__name__}: {e}). "
            "The file may be truncated: download it again."
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
        raise CheckpointError(
            f"{path!r} could not be opened as HDF5 ({e}). The file may be truncated: download it "
            "again."
        ) from None
    tensors = {}
    with f:
        if "layer_names" not in f.attrs:
            raise CheckpointError(f"{path!r} is an HDF5 file but not a Keras/transformers TF checkpoint.")
        for layer in f.attrs["layer_names"]:
            group = f[layer.decode() if isinstance(layer, bytes) else layer]
            for weight in group.attrs["weight_names"]:
                weight = weight.decode() if isinstance(weight, bytes) else weight
                try:
                    value = np.asarray(group[weight])
                except (OSError, KeyError) as e:
                    raise CheckpointError(f"{path!r}: weight {weight!r} is unreadable ({e}).") from None
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
