"""What every export module shares: the formats, their builders and dependencies, the errors,
the serving function an artifact computes, and the disk-full rule."""

import errno
import importlib.util
import os

FORMATS = ("saved_model", "tflite", "onnx")
QUANTIZATIONS = ("float16", "int8")

# max-abs difference allowed between the artifact and the Keras model, per float32 format.
TOLERANCES = {"saved_model": 1e-5, "tflite": 1e-4, "onnx": 1e-4}

# The framework that writes each format (see the module docstring).
_BUILDER_BACKEND = {"saved_model": "tensorflow", "tflite": "tensorflow", "onnx": "torch"}

# (module, pip package) needed to build and to verify each format.
_DEPENDENCIES = {
    "saved_model": [("tensorflow", "tensorflow")],
    "tflite": [("tensorflow", "tensorflow"), ("ai_edge_litert", "ai-edge-litert")],
    "onnx": [("torch", "torch"), ("onnx", "onnx"), ("onnxscript", "onnxscript"),
             ("onnxruntime", "onnxruntime")],
}

_SIGNATURE = "serving_default"


def check_format(format, quantize):
    """(format, quantize), checked: a format of FORMATS, a quantization of QUANTIZATIONS for
    TFLite only. Raises a one-line ValueError naming the fix."""
    if format not in FORMATS:
        raise ValueError(f"unsupported export format {format!r}: use one of {', '.join(FORMATS)}. "
                         f"Received: format={format!r}")
    if quantize is not None and quantize not in QUANTIZATIONS:
        raise ValueError(f"unsupported quantization {quantize!r}: use one of "
                         f"{', '.join(QUANTIZATIONS)}, or none. Received: quantize={quantize!r}")
    if quantize is not None and format != "tflite":
        raise ValueError(f"quantization applies to TFLite files only: drop --quantize, or use "
                         f"--format tflite. Received: format={format!r}, quantize={quantize!r}")
    return format, quantize


def check_output(output, overwrite):
    """Raises, before any work, for an output whose folder is missing or that exists (unless
    `overwrite`)."""
    folder = os.path.dirname(os.path.abspath(output))
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"the folder of the output does not exist: create {folder} "
                                f"first. Received: output={output!r}")
    if os.path.lexists(output) and not overwrite:
        raise FileExistsError(f"{output} already exists: pass overwrite=True (--overwrite) to "
                              f"replace it, or choose another path. Received: output={output!r}")


class MissingDependencyError(ImportError):
    """An optional package needed for the requested format is not installed."""


class ExportError(RuntimeError):
    """The artifact could not be built, or it does not match the Keras model."""


def require(format):
    """Raises `MissingDependencyError` naming the pip packages `format` needs and lacks."""
    missing = [package for module, package in _DEPENDENCIES[format]
               if importlib.util.find_spec(module) is None]
    if missing:
        raise MissingDependencyError(
            f"exporting to {format} needs {', '.join(missing)}, which is not installed. "
            f"Received: format={format!r}. Install it: pip install {' '.join(missing)}"
        )


def _serving_function(model, preprocessing):
    """inputs -> flat {name: tensor}: optional preprocessing, the model in inference mode."""
    from keras import ops

    channels_first = getattr(model, "data_format", "channels_last") == "channels_first"

    def serve(inputs):
        x = inputs
        if preprocessing is not None:
            x = preprocessing(x)  # channels_last float32
            if channels_first:
                x = ops.transpose(x, (0, 3, 1, 2))
        return _flatten_outputs(model(x, training=False))

    return serve


def _flatten_outputs(outputs):
    """{name: tensor or list} -> {name: tensor}; list entries become `name_0`, `name_1`, ..."""
    if not isinstance(outputs, dict):
        outputs = {"output": outputs}
    flat = {}
    for name, value in outputs.items():
        if isinstance(value, (list, tuple)):
            flat.update({f"{name}_{i}": v for i, v in enumerate(value)})
        else:
            flat[name] = value
    return flat


def _is_disk_full(error):
    """ENOSPC, raised as OSError by Python or as TensorFlow's own error with that text."""
    return getattr(error, "errno", None) == errno.ENOSPC or "No space left on device" in str(
        error)


def _disk_full_message(path):
    folder = os.path.dirname(os.path.abspath(path))
    return (f"the disk of {folder} filled up during the export; nothing was written: free "
            "some space and export again")
