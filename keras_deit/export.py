"""Export DeiT models to TensorFlow SavedModel, TFLite (LiteRT) and ONNX, each one verified.

    from keras_deit.export import export_model
    result = export_model(model, "deit_tflite/model.tflite", "tflite", quantize="int8")
    print(result.summary())

Design
------
Every format is written by the framework that owns it, whatever backend the model lives on:

- **SavedModel and TFLite are TensorFlow graphs.** On the TensorFlow backend they are traced in
  this process. On JAX and PyTorch, the model is saved as a `.keras` file (config + weights) in
  the staging folder and rebuilt by a child process started with `KERAS_BACKEND=tensorflow`
  (`python -m keras_deit.export --worker`), which writes the artifact. Keras' own exporters are
  not used there: on PyTorch `export(format="tf_saved_model")` fails; on JAX it works, but it
  wraps the whole function as StableHLO inside one `XlaCallModule` op, which needs a TensorFlow
  runtime that knows that StableHLO version and which the TFLite converter fails to lower to
  builtin ops (tried here: "'vhlo.dynamic_gather_v1' op is not part of the vhlo support yet",
  from the q/k/v split). Rebuilding gives one artifact, with one verified behaviour, from every
  backend.
- **TFLite** is converted from that SavedModel with `supported_ops = [TFLITE_BUILTINS]` only, so
  a conversion that would need Flex (SELECT_TF_OPS) or custom ops fails, naming the ops; the op
  list of the result is checked again. Exact GELU needs no trick: Keras' TensorFlow backend
  computes `ops.gelu(approximate=False)` as `tf.nn.gelu`, i.e. `0.5 * x * erfc(-x / sqrt(2))`;
  TFLite has no Erf/Erfc builtin, but the converter recognizes that pattern and emits the builtin
  `GELU` (approximate=false). Either attention kernel lowers to `BATCH_MATMUL`, `SOFTMAX`,
  `TRANSPOSE`, all builtin. Quantization: `float16` stores float16 weights (dequantized at load),
  `int8` is dynamic-range quantization (int8 weights, float activations; no calibration data).
- **ONNX** is written by PyTorch's exporter (`torch.onnx.export(dynamo=True)`, onnxscript;
  opset 20, with `Gelu` and `LayerNormalization` nodes), in this process on PyTorch and by a
  child process with `KERAS_BACKEND=torch` on TensorFlow and JAX. Keras' `format="onnx"` does not
  serve here: on TensorFlow it goes through tf2onnx, which cannot convert the `Erfc` of exact
  GELU (the file is written, then onnxruntime refuses it); on JAX it needs jax2onnx (which brings
  flax, optax, orbax, ...); on PyTorch with a dynamic batch it falls back to the TorchScript
  exporter, which fails on LayerNorm's shape.
- **Dynamic batch** everywhere: the batch axis of the signature is `None` (`-1` in TFLite's
  `shape_signature`, `"batch"` in ONNX); the signature runner of LiteRT resizes per call.
- **Preprocessing inside** (`preprocessing=`, a `DeiTPreprocessing` layer or a
  `DeiTImageProcessor`): the artifact takes `images`, uint8 (batch, H, W, 3), and runs resize,
  crop, rescale and normalize before the model. H and W are free (`input_size=None`) or fixed.
  TFLite has no builtin for the antialiased/bicubic resize, so a TFLite file with preprocessing
  takes images already at the resize size (its default `input_size`; another size is refused
  before any work): the resize is then a no-op and only the crop and the normalization remain in
  the graph. A `{"shortest_edge"}` resize needs a fixed `input_size` (the layer computes the
  target size in Python).
- **Verification** runs in this process, on the current backend: the artifact is loaded by its
  own runtime (`tf.saved_model.load`, the standalone `ai_edge_litert` interpreter,
  `onnxruntime`) and its outputs are compared with the Keras model's on the same inputs:
  max-abs difference over every output, within 1e-5 (SavedModel) or 1e-4 (TFLite float32,
  ONNX); quantized files are measured (max-abs difference, top-1 agreement of `logits`) but not
  gated. A failure leaves nothing behind. With preprocessing inside, the builder also runs
  `DeiTPreprocessing` on the verification images, and the Keras model is fed with those pixel
  values: the resize kernels and rounding of the backends differ slightly (one uint8 level here
  and there), which would otherwise be mistaken for an export error; that difference is reported
  separately (`Verification.preprocessing_max_abs`).
- **Atomic**: the artifact is built and verified in a hidden staging folder next to `output`,
  then renamed into place (an existing output, with `overwrite=True`, is moved aside first and
  put back if the rename fails); the staging folder is always removed.

Dependencies, imported only when used: `tensorflow` (SavedModel, TFLite), `ai-edge-litert`
(reading and running TFLite files), `torch`, `onnx`, `onnxscript`, `onnxruntime` (ONNX).
"""

import argparse
import contextlib
import dataclasses
import errno
import importlib.util
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import warnings

import numpy as np

from keras_deit import atomic

__all__ = [
    "FORMATS", "QUANTIZATIONS", "TOLERANCES", "ExportError", "MissingDependencyError",
    "Verification", "ExportResult", "export_model", "export_models", "require", "run_artifact",
    "run_saved_model", "run_tflite", "run_onnx", "describe_artifact", "tflite_op_names",
    "evaluate_accuracy", "sample_photos", "add_export_arguments", "export_command",
]

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


class MissingDependencyError(ImportError):
    """An optional package needed for the requested format is not installed."""


class ExportError(RuntimeError):
    """The artifact could not be built, or it does not match the Keras model."""


@dataclasses.dataclass
class Verification:
    """How the exported artifact compares with the Keras model on the same inputs.

    Attributes:
        max_abs: largest absolute difference over all outputs.
        per_output: max-abs difference per output name.
        tolerance: the gate (None for quantized files, which are measured only).
        passed: True when `max_abs <= tolerance` (always True when there is no gate).
        top1_agreement: fraction of inputs whose `logits` argmax is the same (None without
            `logits`).
        num_inputs: batch size of the verification inputs.
        backend: the Keras backend the reference outputs come from.
        preprocessing_max_abs: with preprocessing inside and the artifact built by another
            framework, the max-abs difference between `DeiTPreprocessing` on `backend` and on
            that framework, on the same images (not gated: resize kernels and rounding differ
            slightly per backend, see the layer). The gate itself feeds the Keras model with the
            builder's preprocessing, so it checks both parts of the artifact exactly.
    """

    max_abs: float
    per_output: dict
    tolerance: float | None
    passed: bool
    top1_agreement: float | None
    num_inputs: int
    backend: str
    preprocessing_max_abs: float | None = None


@dataclasses.dataclass
class ExportResult:
    """What `export_model` wrote.

    Attributes:
        path: the artifact (a folder for SavedModel, a file otherwise).
        format: "saved_model", "tflite" or "onnx".
        quantize: None, "float16" or "int8".
        size_bytes: size on disk (whole folder for SavedModel).
        inputs: {name: (shape, dtype)} read back from the artifact; None marks a free axis.
        outputs: output names, as the artifact lists them.
        built_by: which framework wrote it, and where (this process or a child process).
        ops: sorted op names of a TFLite file (None for other formats).
        verification: a `Verification`, or None when `verify=False`.
    """

    path: str
    format: str
    quantize: str | None
    size_bytes: int
    inputs: dict
    outputs: list
    built_by: str
    ops: list | None = None
    verification: Verification | None = None

    def summary(self):
        """A few human-readable lines: format, size, signature, verification."""
        kind = self.format + (f" ({self.quantize})" if self.quantize else "")
        lines = [f"exported {kind} to {self.path} ({_human_size(self.size_bytes)}), "
                 f"built by {self.built_by}"]
        for name, (shape, dtype) in self.inputs.items():
            dims = ", ".join("batch" if i == 0 and d is None else ("any" if d is None else str(d))
                             for i, d in enumerate(shape))
            lines.append(f"  input: {name} {dtype} ({dims})")
        lines.append(f"  outputs: {', '.join(self.outputs)}")
        if self.ops is not None:
            lines.append(f"  ops: {', '.join(self.ops)}")
        lines.append("  " + self.verification_line())
        return "\n".join(lines)

    def verification_line(self):
        """One line: max-abs difference vs Keras (and top-1 agreement for quantized files)."""
        v = self.verification
        if v is None:
            return "not verified (verify=False)"
        gate = f"tolerance {v.tolerance:g}: ok" if v.tolerance is not None else "not gated"
        line = (f"verified: max-abs difference vs Keras ({v.backend}) {v.max_abs:.3g} on "
                f"{v.num_inputs} inputs ({gate})")
        if self.quantize and v.top1_agreement is not None:
            agree = round(v.top1_agreement * v.num_inputs)
            line += f"; top-1 agreement {100 * v.top1_agreement:.1f}% ({agree}/{v.num_inputs})"
        if v.preprocessing_max_abs is not None:
            line += (f"; preprocessing on {v.backend} vs inside the file: max-abs "
                     f"{v.preprocessing_max_abs:.3g} (resize kernels differ per backend)")
        return line


# ---- public entry point ----------------------------------------------------------------------
def export_model(model, output, format="saved_model", *, quantize=None, preprocessing=None,
                 input_size=None, overwrite=False, verify=True, verification_data=None):
    """Writes `model` as a SavedModel, TFLite or ONNX artifact and checks it against Keras.

    Works from a model on any backend (see the module docstring for which framework builds
    what, and where).

    Args:
        model: a single-input DeiT model (`DeiTForImageClassification[WithTeacher]`,
            `DeiTModel` without mask token), built on any backend.
        output: path of the artifact: a folder for "saved_model", a file otherwise
            (".tflite", ".onnx" suggested). Its parent folder must exist.
        format: "saved_model", "tflite" or "onnx".
        quantize: None, or "float16" / "int8" (dynamic range) for "tflite".
        preprocessing: None, a `DeiTPreprocessing` layer or a `DeiTImageProcessor`: put resize,
            crop and normalization inside, so that the artifact takes uint8 images.
        input_size: (height, width) of the input images with `preprocessing`, or None for any
            size (SavedModel, ONNX; TFLite defaults to the resize size). Without preprocessing,
            only for models built with `interpolate_pos_encoding=True`.
        overwrite: replace an existing `output`.
        verify: compare the artifact with the Keras model (raises `ExportError` on a mismatch).
        verification_data: inputs for that comparison, shaped as the artifact's input (float32
            pixel values, or uint8 images with `preprocessing`); default: 4 deterministic
            random inputs.

    Returns:
        An `ExportResult`.

    Raises:
        ValueError: an unsupported format, option or combination.
        FileExistsError: `output` exists and `overwrite` is False.
        MissingDependencyError: an optional package the format needs is missing.
        ExportError: the conversion failed or the artifact does not match the model.
    """
    (result,) = export_models(
        model, [(output, format, quantize)], preprocessing=preprocessing, input_size=input_size,
        overwrite=overwrite, verify=verify, verification_data=verification_data,
    )
    return result


def export_models(model, requests, *, preprocessing=None, input_size=None, overwrite=False,
                  verify=True, verification_data=None):
    """Several artifacts of one model: `requests` is a list of (output, format, quantize).

    As `export_model` (same keyword arguments, applied to every request), but artifacts built by
    the same framework share one child process, which saves its start-up (seconds) per file. All
    are built and verified before any is moved into place: on an error, none is written.

    Returns:
        A list of `ExportResult`, in the order of `requests`.
    """
    import keras

    preprocessing = _as_preprocessing_layer(preprocessing)
    model, preprocessing = _split_included_preprocessing(model, preprocessing)
    backend = keras.backend.backend()
    jobs = []
    for output, format, quantize in requests:
        format, quantize = _check_format(format, quantize)
        _check_keras_quantization(model, format, quantize)
        output = os.fspath(output)
        _check_output(output, overwrite)
        require(format)
        spec = _input_spec(model, preprocessing, input_size, format)
        jobs.append({"output": output, "format": format, "quantize": quantize, "spec": spec})
    outputs = [os.path.abspath(job["output"]) for job in jobs]
    if len(set(outputs)) != len(outputs):
        raise ValueError(f"two requests write the same output. Received: outputs={outputs}")
    data = {}  # verification inputs, one set per input signature
    if verify:
        for job in jobs:
            key = json.dumps(job["spec"])
            if key not in data:
                data[key] = (_default_verification_data(job["spec"]) if verification_data is None
                             else _check_verification_data(verification_data, job["spec"]))

    stages = []
    # Each artifact is staged in a hidden folder beside its output, named after this process:
    # removed when the export ends (an error or SIGTERM included), and by the next export
    # when a SIGKILL left it behind.
    try:
        with contextlib.ExitStack() as staging:
            for job in jobs:
                stages.append(staging.enter_context(atomic.temporary_path(job["output"], ".export")))
                os.mkdir(stages[-1])
                job["path"] = os.path.join(stages[-1], os.path.basename(job["output"]))
                if verify and preprocessing is not None:
                    # The builder preprocesses the verification images too (see Verification).
                    job["data_path"] = os.path.join(stages[-1], ".export-images.npy")
                    job["pixels_path"] = os.path.join(stages[-1], ".export-pixel_values.npy")
                    np.save(job["data_path"], data[json.dumps(job["spec"])])
            for builder in sorted({_BUILDER_BACKEND[job["format"]] for job in jobs}):
                group = [job for job in jobs if _BUILDER_BACKEND[job["format"]] == builder]
                if backend == builder:
                    for job in group:
                        _build_artifact(model, preprocessing, job)
                        job["built_by"], job["in_process"] = f"{builder} (this process)", True
                else:
                    _build_in_child(model, preprocessing, group, builder, stages[0])
                    for job in group:
                        job["built_by"] = f"{builder} (child process, rebuilt from the {backend} model)"
                        job["in_process"] = False
            results = []
            for job in jobs:
                reference = None
                if verify:
                    inputs = data[json.dumps(job["spec"])]
                    reference = (inputs, *_reference(model, preprocessing, inputs, job))
                results.append(_inspect(job, reference, backend))
            for job, stage in zip(jobs, stages):
                _move_into_place(job["path"], job["output"], overwrite, stage)
            return results
    except Exception as e:
        if _is_disk_full(e):
            raise ExportError(_disk_full_message(jobs[0]["output"])) from None
        raise


def _reference(model, preprocessing, inputs, job):
    """(Keras outputs, preprocessing difference) for verifying `job` on `inputs`."""
    if preprocessing is None:
        return _reference_outputs(model, None, inputs), None
    pixel_values = np.load(job["pixels_path"])  # preprocessed by the artifact's framework
    difference = None
    if not job["in_process"]:
        import keras

        here = keras.ops.convert_to_numpy(preprocessing(inputs))
        difference = float(np.max(np.abs(here.astype("float64") - pixel_values)))
    return _reference_outputs(model, None, pixel_values, preprocessed=True), difference


def _inspect(job, reference, backend):
    """The `ExportResult` of a built job: op list, signature, verification (raises on a
    mismatch)."""
    path, format, quantize = job["path"], job["format"], job["quantize"]
    ops = None
    if format == "tflite":
        ops = tflite_op_names(path)
        _check_builtin_only(ops)
    inputs, outputs = describe_artifact(path, format)
    result = ExportResult(job["output"], format, quantize, _disk_size(path), inputs, outputs,
                          job["built_by"], ops)
    if reference is not None:
        data, expected, preprocessing_difference = reference
        v = _compare_outputs(run_artifact(path, format, data), expected,
                            None if quantize else TOLERANCES[format], backend)
        v.preprocessing_max_abs = preprocessing_difference
        result.verification = v
        if not v.passed:
            per_output = ", ".join(f"{k} {d:.3g}" for k, d in v.per_output.items())
            raise ExportError(
                f"the {format} artifact differs from the Keras model by {v.max_abs:.3g} (max-abs; "
                f"tolerance {v.tolerance:g}; {per_output}), so nothing was written to "
                f"{job['output']}. Received: format={format!r}, backend={backend!r}; please "
                "report it with the model's config."
            )
    return result


def require(format):
    """Raises `MissingDependencyError` naming the pip packages `format` needs and lacks."""
    missing = [package for module, package in _DEPENDENCIES[format]
               if importlib.util.find_spec(module) is None]
    if missing:
        raise MissingDependencyError(
            f"exporting to {format} needs {', '.join(missing)}, which is not installed. "
            f"Received: format={format!r}. Install it: pip install {' '.join(missing)}"
        )


# ---- checks -----------------------------------------------------------------------------------
def _check_format(format, quantize):
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


# Formats that carry a model quantized by Keras (`model.quantize(mode)`), as measured by
# benchmarks/quantization.py: the TFLite converter rejects int8 activations feeding
# fully-connected ops and has no float8 type; torch's ONNX export of Keras' int8 / float8
# kernels differs from Keras by 2e-2 to 7e-2, and ONNX Runtime cannot load its int4 file.
_KERAS_QUANTIZED_FORMATS = {"int8": ("saved_model",), "float8": ("saved_model",),
                            "int4": ("saved_model", "tflite")}


def _check_keras_quantization(model, format, quantize):
    """Refuses, before any work, a format that cannot hold this Keras-quantized model."""
    modes = sorted({layer.quantization_mode for layer in model._flatten_layers()
                    if layer.quantization_mode is not None})
    if not modes:
        return
    allowed = set.intersection(*(set(_KERAS_QUANTIZED_FORMATS.get(m, ())) for m in modes))
    if format not in allowed or quantize is not None:
        raise ValueError(
            f"a model quantized by Keras ({', '.join(modes)}) exports to "
            f"{', '.join(sorted(allowed)) or 'no format'} only, without --quantize; for a small "
            "TFLite or ONNX file, export the float model (TFLite's own quantize='int8' or "
            f"'float16'). Received: format={format!r}, quantize={quantize!r}"
        )


def _check_output(output, overwrite):
    folder = os.path.dirname(os.path.abspath(output))
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"the folder of the output does not exist: create {folder} "
                                f"first. Received: output={output!r}")
    if os.path.lexists(output) and not overwrite:
        raise FileExistsError(f"{output} already exists: pass overwrite=True (--overwrite) to "
                              f"replace it, or choose another path. Received: output={output!r}")


def _split_included_preprocessing(model, preprocessing):
    """A model built with `include_preprocessing` is exported as (the same model without it,
    its `DeiTPreprocessing` layer), the pair the `preprocessing=` path builds and verifies;
    other models come back with `preprocessing` as given."""
    from keras_deit.model_preprocessing import split

    plain, included = split(model)
    if included is None:
        return model, preprocessing
    if preprocessing is not None:
        raise ValueError(
            "This model includes its preprocessing already: export it without `preprocessing` "
            "(or --with-preprocessing)."
        )
    return plain, included


def _as_preprocessing_layer(preprocessing):
    from keras_deit.image_processing import DeiTImageProcessor
    from keras_deit.layers.preprocessing import DeiTPreprocessing

    if preprocessing is None or isinstance(preprocessing, DeiTPreprocessing):
        return preprocessing
    if isinstance(preprocessing, DeiTImageProcessor):
        return preprocessing.to_keras_layer()
    raise ValueError("`preprocessing` must be a DeiTPreprocessing layer, a DeiTImageProcessor or "
                     f"None. Received: preprocessing of type {type(preprocessing).__name__}")


def _input_spec(model, preprocessing, input_size, format):
    """The artifact's input as {"name", "shape", "dtype"}, batch axis None; checks the model."""
    inputs = model.inputs
    if len(inputs) != 1:
        raise ValueError(
            f"export takes single-input models; {type(model).__name__} takes "
            f"{[t.name for t in inputs]}. Export a classifier or a DeiTModel built without "
            "use_mask_token. Received: a model with inputs "
            f"{[(t.name, tuple(t.shape)) for t in inputs]}"
        )
    shape = tuple(inputs[0].shape)
    channels_first = getattr(model, "data_format", "channels_last") == "channels_first"
    spatial = shape[2:] if channels_first else shape[1:3]
    if input_size is not None:
        input_size = _check_size(input_size)
    if preprocessing is None:
        if input_size is not None and None not in spatial and input_size != tuple(spatial):
            raise ValueError(
                f"input_size {input_size} differs from the model's input {tuple(spatial)}: "
                "leave it out, or build the model with interpolate_pos_encoding=True. "
                f"Received: input_size={input_size}"
            )
        if input_size is not None:
            spatial = input_size
        channels = shape[1] if channels_first else shape[3]
        full = (None, channels, *spatial) if channels_first else (None, *spatial, channels)
        return {"name": "pixel_values", "shape": list(full), "dtype": "float32"}
    crop = preprocessing.crop_size
    if crop is not None and None not in spatial and (crop["height"], crop["width"]) != tuple(
            spatial):
        raise ValueError(
            f"the preprocessing crops to {crop['height']}x{crop['width']} but the model takes "
            f"{spatial[0]}x{spatial[1]} images: use the processor of the checkpoint. Received: "
            f"crop_size={crop}"
        )
    size = preprocessing.size
    if input_size is None and format == "tflite":
        # TFLite has no builtin for the antialiased/bicubic resize: take images already at the
        # resize size, so that DeiTPreprocessing skips the resize.
        if size is None:
            input_size = None
        elif "shortest_edge" in size:
            input_size = (size["shortest_edge"], size["shortest_edge"])
        else:
            input_size = (size["height"], size["width"])
    if format == "tflite" and size is not None and input_size is not None:
        from keras_deit.image_processing import _resize_output_size

        if _resize_output_size(*input_size, size) != tuple(input_size):
            raise ValueError(
                f"a TFLite file cannot resize inside (the bicubic, antialiased resize of "
                f"DeiTPreprocessing has no TFLite builtin op): it takes images already resized "
                f"to size={size}. Leave input_size out (or give a size that the resize keeps), "
                f"or use SavedModel/ONNX. Received: input_size={tuple(input_size)}"
            )
    if input_size is None and size is not None and "shortest_edge" in size:
        raise ValueError(
            f"the preprocessing resizes the shortest edge to {size['shortest_edge']}, which needs "
            "a known image size inside an exported graph: fix it with input_size=(height, width) "
            "(--input-size HxW), or use a processor with a {'height', 'width'} size. Received: "
            f"input_size=None, size={size}"
        )
    height, width = input_size if input_size is not None else (None, None)
    return {"name": "images", "shape": [None, height, width, 3], "dtype": "uint8"}


def _check_size(size):
    if isinstance(size, int):
        size = (size, size)
    if (not isinstance(size, (tuple, list)) or len(size) != 2
            or not all(isinstance(s, int) and s > 0 for s in size)):
        raise ValueError(f"input_size must be (height, width) positive ints, or None. "
                         f"Received: input_size={size!r}")
    return tuple(size)


def _parse_size(text):
    """"224x224" or "224" -> (224, 224); "any" -> None."""
    if text is None or text.lower() == "any":
        return None
    parts = text.lower().split("x")
    try:
        values = tuple(int(p) for p in parts)
    except ValueError:
        values = ()
    if len(values) not in (1, 2) or min(values) <= 0:
        raise ValueError(f"--input-size takes HEIGHTxWIDTH (e.g. 256x256), a side or 'any'. "
                         f"Received: {text!r}")
    return values * 2 if len(values) == 1 else values


# ---- building (this process or the worker) -----------------------------------------------------
def _build_artifact(model, preprocessing, job):
    """Writes one artifact (`job`: format, quantize, spec, path) with the current backend, which
    must be the format's builder."""
    import keras

    needed = _BUILDER_BACKEND[job["format"]]
    if keras.backend.backend() != needed:
        raise ValueError(f"{job['format']} files are built on the {needed} backend. Received: "
                         f"backend={keras.backend.backend()!r}; use export_model, which routes")
    if preprocessing is not None and job.get("pixels_path"):
        pixels = keras.ops.convert_to_numpy(preprocessing(np.load(job["data_path"])))
        np.save(job["pixels_path"], pixels)
    if job["format"] == "onnx":
        _write_onnx(model, preprocessing, job["spec"], job["path"])
        return
    staging = None
    if job["format"] == "saved_model":
        saved_model = job["path"]
    else:
        staging = tempfile.mkdtemp(dir=os.path.dirname(job["path"]), prefix=".saved_model-")
        saved_model = os.path.join(staging, "saved_model")
    try:
        _write_saved_model(model, preprocessing, job["spec"], saved_model)
        if job["format"] == "tflite":
            _write_tflite(saved_model, job["quantize"], job["path"])
    finally:
        if staging:
            shutil.rmtree(staging, ignore_errors=True)


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


def _write_saved_model(model, preprocessing, spec, path):
    import tensorflow as tf

    signature = tf.TensorSpec(spec["shape"], spec["dtype"], name=spec["name"])
    module = tf.Module()
    # The tf.Variables behind the Keras variables, tracked once. Keras' ExportArchive saves both
    # (`variables` and `_all_variables`), which doubles the size on disk: 48.6 MB instead of
    # 23.9 MB for deit-tiny.
    module.model_variables = [v.value for v in model.variables]
    module.serve = tf.function(_serving_function(model, preprocessing),
                               input_signature=[signature])
    tf.saved_model.save(module, path,
                        signatures={_SIGNATURE: module.serve.get_concrete_function()})


def _write_tflite(saved_model, quantize, path):
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_saved_model(saved_model, [_SIGNATURE])
    # Builtins only: a graph that needs Flex or custom ops must fail here, not on the device.
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    if quantize:
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if quantize == "float16":
        converter.target_spec.supported_types = [tf.float16]
    try:
        flatbuffer = converter.convert()
    except Exception as e:  # The converter raises its own ConverterError class.
        raise ExportError(_conversion_message(e)) from None
    with open(path, "wb") as f:
        f.write(flatbuffer)


def _conversion_message(error):
    import re

    text = str(error)
    ops = sorted(set(re.findall(r"'tf\.(\w+)'", text)) | set(re.findall(r"\btf\.(\w+)\(", text)))
    if not ops:
        return f"TFLite conversion failed: {' '.join(text.split())[:600]}"
    if {"ScaleAndTranslate", "ResizeBicubic"} & set(ops):
        fix = ("they come from DeiTPreprocessing's resize: give images already at the resize "
               "size (the default input_size for TFLite) so that the resize is skipped, or "
               "resize outside the model")
    else:
        fix = "export a SavedModel instead, or build the model without the layers that use them"
    return (f"the TFLite builtin op set has no kernel for {', '.join(ops)}; Flex (SELECT_TF_OPS) "
            f"is not allowed, so that the standalone LiteRT runtime can run the file: {fix}.")


def _write_onnx(model, preprocessing, spec, path):
    import torch

    serve = _serving_function(model, preprocessing)
    names = list(_flatten_outputs(model.output))

    class Serving(torch.nn.Module):
        # A plain module around the Keras model: positional tensor in, tuple out, so the
        # exporter can name the inputs and outputs.
        def __init__(self):
            super().__init__()
            self.model = model
            self.preprocessing = preprocessing

        def forward(self, inputs):
            outputs = serve(inputs)
            return tuple(outputs[name] for name in names)

    module = Serving().eval()
    shape = spec["shape"]
    # Sample size 2 on free axes: torch.export specializes axes of size 1.
    sample = np.zeros([2 if d is None else d for d in shape], spec["dtype"])
    if spec["dtype"] == "float32":
        sample = np.random.default_rng(0).standard_normal(sample.shape).astype("float32")
    dims = {}
    for axis, size in enumerate(shape):
        if size is None:
            dims[axis] = torch.export.Dim("batch" if axis == 0 else f"dim_{axis}", min=1)
    with _quiet():
        try:
            program = torch.onnx.export(
                module, (torch.from_numpy(sample),), dynamo=True, input_names=[spec["name"]],
                output_names=names, dynamic_shapes=(dims or None,), verbose=False,
                opset_version=20,
            )
            program.optimize()
            program.save(path)
        except Exception as e:
            raise ExportError(f"the ONNX export failed ({type(e).__name__}: "
                              f"{' '.join(str(e).split())[:600]})") from None


@contextlib.contextmanager
def _quiet():
    """Silences the exporter's progress prints and its deprecation warnings (torch internals,
    nothing the caller can act on)."""
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        yield


# ---- the child process -----------------------------------------------------------------------
def _build_in_child(model, preprocessing, jobs, backend, stage):
    """Saves `model` to `stage` and has a child process with `backend` rebuild it and write
    `jobs`."""
    import keras

    model_path = os.path.join(stage, ".export-model.keras")
    model.save(model_path)
    request = {
        "model": model_path,
        "preprocessing": (None if preprocessing is None
                          else keras.saving.serialize_keras_object(preprocessing)),
        "jobs": [{k: job[k] for k in ("format", "quantize", "spec", "path", "data_path",
                                      "pixels_path") if k in job} for job in jobs],
    }
    request_path = os.path.join(stage, ".export-request.json")
    response_path = os.path.join(stage, ".export-response.json")
    with open(request_path, "w", encoding="utf-8") as f:
        json.dump(request, f)
    package_root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, KERAS_BACKEND=backend, KERAS_DEIT_EXPORT_PARENT=str(os.getpid()))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_root, env.get("PYTHONPATH")]))
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    process = subprocess.run(
        [sys.executable, "-m", "keras_deit.export", "--worker", request_path, response_path],
        env=env, capture_output=True, text=True,
    )
    formats = ", ".join(sorted({job["format"] for job in jobs}))
    if not os.path.isfile(response_path):
        tail = " | ".join(process.stderr.strip().splitlines()[-5:])
        raise ExportError(f"the {backend} child process building the {formats} file(s) died "
                          f"(exit code {process.returncode}): {tail}")
    with open(response_path, encoding="utf-8") as f:
        response = json.load(f)
    if response.get("error"):
        kind, message = response["error"]["type"], response["error"]["message"]
        if kind in ("ImportError", "ModuleNotFoundError", "MissingDependencyError"):
            raise MissingDependencyError(f"the {backend} child process: {message}")
        if kind in ("ValueError", "ExportError"):  # already worded for the user
            raise (ValueError if kind == "ValueError" else ExportError)(message)
        raise ExportError(f"{kind} in the {backend} child process building the {formats} "
                          f"file(s): {message}")


def _exit_with_parent():
    """Ends this child process when its parent is gone (killed, even by SIGKILL): an
    orphaned worker would build on for nothing. SIGTERM to the parent kills the child
    directly (`subprocess.run` does on any exception). The parent names itself in
    `KERAS_DEIT_EXPORT_PARENT`: a parent killed while this child was still importing Keras is
    caught too."""
    parent = int(os.environ.get("KERAS_DEIT_EXPORT_PARENT") or os.getppid())

    def watch():
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(1)

    threading.Thread(target=watch, daemon=True).start()


def _worker(request_path, response_path):
    """The child: rebuilds the model from the request and writes the artifact."""
    import keras

    _exit_with_parent()
    try:
        with open(request_path, encoding="utf-8") as f:
            request = json.load(f)
        model = keras.saving.load_model(request["model"])
        preprocessing = request["preprocessing"]
        if preprocessing is not None:
            preprocessing = keras.saving.deserialize_keras_object(preprocessing)
        for job in request["jobs"]:
            _build_artifact(model, preprocessing, job)
        response = {"error": None}
    except Exception as e:  # Reported to the parent, which raises it there.
        if _is_disk_full(e):
            e = ExportError(_disk_full_message(request_path))
        response = {"error": {"type": type(e).__name__, "message": str(e) or type(e).__name__}}
    with open(response_path, "w", encoding="utf-8") as f:
        json.dump(response, f)


# ---- reading artifacts back -------------------------------------------------------------------
def run_artifact(path, format, inputs):
    """Runs an exported artifact on `inputs` with its own runtime; returns {name: ndarray}."""
    runner = {"saved_model": run_saved_model, "tflite": run_tflite, "onnx": run_onnx}[format]
    return runner(path, inputs)


def run_saved_model(path, inputs):
    """The SavedModel's serving signature on `inputs` (reloaded with tf.saved_model.load)."""
    import tensorflow as tf

    function = tf.saved_model.load(path).signatures[_SIGNATURE]
    (name,) = function.structured_input_signature[1]
    return {k: v.numpy() for k, v in function(**{name: tf.constant(inputs)}).items()}


def run_tflite(path, inputs, batch_size=None):
    """A TFLite file's serving signature on `inputs`, with the standalone LiteRT interpreter.

    `batch_size` splits `inputs` into chunks (the signature runner resizes per call).
    """
    from ai_edge_litert.interpreter import Interpreter

    runner = Interpreter(model_path=os.fspath(path)).get_signature_runner(_SIGNATURE)
    ((name, details),) = runner.get_input_details().items()
    inputs = np.asarray(inputs)
    if inputs.dtype != details["dtype"]:
        if np.dtype(details["dtype"]) == np.uint8 and inputs.dtype.kind == "f":
            raise ValueError(f"this TFLite file takes uint8 images (preprocessing inside). "
                             f"Received: {inputs.dtype} inputs; pass the raw images")
        inputs = inputs.astype(details["dtype"])
    step = batch_size or len(inputs)
    chunks = [runner(**{name: np.ascontiguousarray(inputs[i:i + step])})
              for i in range(0, len(inputs), step)]
    return {key: np.concatenate([c[key] for c in chunks]) for key in chunks[0]}


def run_onnx(path, inputs):
    """An ONNX file on `inputs`, with onnxruntime (CPU)."""
    import onnxruntime

    session = onnxruntime.InferenceSession(os.fspath(path), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    values = session.run(names, {session.get_inputs()[0].name: inputs})
    return dict(zip(names, values))


def describe_artifact(path, format):
    """({input name: (shape, dtype)}, [output names]) as the artifact declares them."""
    if format == "saved_model":
        import tensorflow as tf

        function = tf.saved_model.load(path).signatures[_SIGNATURE]
        inputs = {name: (tuple(spec.shape.as_list()), spec.dtype.name)
                  for name, spec in function.structured_input_signature[1].items()}
        return inputs, sorted(function.structured_outputs)
    if format == "tflite":
        from ai_edge_litert.interpreter import Interpreter

        runner = Interpreter(model_path=path).get_signature_runner(_SIGNATURE)
        inputs = {name: (tuple(None if d < 0 else int(d) for d in info["shape_signature"]),
                         np.dtype(info["dtype"]).name)
                  for name, info in runner.get_input_details().items()}
        return inputs, sorted(runner.get_output_details())
    import onnxruntime

    session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    dtypes = {"tensor(float)": "float32", "tensor(uint8)": "uint8"}
    inputs = {i.name: (tuple(d if isinstance(d, int) else None for d in i.shape),
                       dtypes.get(i.type, i.type))
              for i in session.get_inputs()}
    return inputs, sorted(o.name for o in session.get_outputs())


def tflite_op_names(path):
    """Sorted names of the operators a .tflite file uses, read from its flatbuffer.

    Builtin ops by their schema name ("GELU", "BATCH_MATMUL", ...); custom ops (including the
    "Flex..." ops of SELECT_TF_OPS) by their custom code.
    """
    schema = _tflite_schema()
    with open(path, "rb") as f:
        model = schema.Model.GetRootAs(f.read(), 0)
    builtin = {code: name for name, code in vars(schema.BuiltinOperator).items()
               if not name.startswith("_")}
    names = set()
    for i in range(model.OperatorCodesLength()):
        code = model.OperatorCodes(i)
        # Codes above 127 live in BuiltinCode; older files keep them in DeprecatedBuiltinCode.
        value = max(code.BuiltinCode(), code.DeprecatedBuiltinCode())
        if value == schema.BuiltinOperator.CUSTOM:
            names.add(code.CustomCode().decode())
        else:
            names.add(builtin[value])
    return sorted(names)


def _tflite_schema():
    try:
        from ai_edge_litert import schema_py_generated as schema
    except ImportError:
        raise MissingDependencyError(
            "reading TFLite files needs ai-edge-litert, which is not installed. Install it: "
            "pip install ai-edge-litert"
        ) from None
    return schema


def _check_builtin_only(ops):
    builtin = {name for name in vars(_tflite_schema().BuiltinOperator) if not name.startswith("_")}
    custom = [name for name in ops if name not in builtin]
    if custom:
        raise ExportError(f"the TFLite file uses non-builtin ops {custom}, which the standalone "
                          "LiteRT runtime cannot run. Received: ops=" + ", ".join(ops))


# ---- verification -----------------------------------------------------------------------------
def _default_verification_data(spec, count=4):
    """Deterministic inputs for a spec: N(0, 1) pixel values, or uniform uint8 images whose
    free height/width differ from each other (so a transposed axis would show)."""
    rng = np.random.default_rng(0)
    free = iter((56, 48))
    shape = [count] + [d if d is not None else next(free) for d in spec["shape"][1:]]
    if spec["dtype"] == "uint8":
        return rng.integers(0, 256, shape, dtype=np.uint8)
    return rng.standard_normal(shape).astype("float32")


def _check_verification_data(data, spec):
    data = np.asarray(data)
    shape = spec["shape"]
    if data.ndim != len(shape) or any(d is not None and d != s for d, s in zip(shape[1:],
                                                                              data.shape[1:])):
        raise ValueError(f"verification_data must have shape {tuple(shape)} (None: any). "
                         f"Received: shape={data.shape}")
    return data.astype(spec["dtype"])


def _reference_outputs(model, preprocessing, data, preprocessed=False):
    """The Keras model's flat outputs on `data` as numpy arrays: `data` goes through
    `preprocessing` first, if given; `preprocessed=True` marks channels_last pixel values
    that came out of a `DeiTPreprocessing` (transposed for a channels_first model)."""
    import keras

    if preprocessed and getattr(model, "data_format", "") == "channels_first":
        data = np.transpose(data, (0, 3, 1, 2))
    serve = _serving_function(model, preprocessing)
    return {k: np.asarray(keras.ops.convert_to_numpy(v)) for k, v in serve(data).items()}


def _compare_outputs(outputs, reference, tolerance, backend=None):
    """A `Verification` of `outputs` against `reference` (both {name: array})."""
    import keras

    if set(outputs) != set(reference):
        raise ExportError(f"the artifact's outputs {sorted(outputs)} are not the model's "
                          f"{sorted(reference)}")
    per_output = {k: float(np.max(np.abs(outputs[k].astype("float64") -
                                         reference[k].astype("float64"))))
                  for k in sorted(reference)}
    max_abs = max(per_output.values())
    agreement = None
    if "logits" in reference and reference["logits"].ndim == 2:
        agreement = float(np.mean(outputs["logits"].argmax(-1) == reference["logits"].argmax(-1)))
    return Verification(
        max_abs=max_abs, per_output=per_output, tolerance=tolerance,
        passed=tolerance is None or max_abs <= tolerance, top1_agreement=agreement,
        num_inputs=len(next(iter(reference.values()))),
        backend=backend or keras.backend.backend(),
    )


def evaluate_accuracy(tflite_path, images, labels, batch_size=32):
    """Top-1 accuracy of a TFLite classifier on `images` (shaped as its input) and int labels.

    Reads the `logits` output (or the only output) of the serving signature.
    """
    images, labels = np.asarray(images), np.asarray(labels)
    if len(images) != len(labels) or labels.ndim != 1:
        raise ValueError(f"need one integer label per image. Received: {len(images)} images, "
                         f"labels of shape {labels.shape}")
    outputs = run_tflite(tflite_path, images, batch_size=batch_size)
    logits = outputs["logits"] if "logits" in outputs else next(iter(outputs.values()))
    return float(np.mean(logits.argmax(-1) == labels))


def sample_photos(count=8, size=(224, 224), seed=0):
    """`count` real uint8 photos (batch, height, width, 3): crops and flips of scikit-learn's two
    sample images, resized to `size` with Pillow (bicubic)."""
    from PIL import Image

    try:
        from sklearn.datasets import load_sample_images
    except ImportError:
        raise MissingDependencyError(
            "sample photos come from scikit-learn, which is not installed. Install it "
            "(pip install scikit-learn) or pass your own images."
        ) from None
    rng = np.random.default_rng(seed)
    photos = load_sample_images().images  # two 427x640 RGB photos
    out = []
    for i in range(count):
        photo = photos[i % len(photos)]
        h, w = photo.shape[:2]
        side = int(rng.integers(min(h, w) // 2, min(h, w) + 1))
        top, left = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
        crop = photo[top:top + side, left:left + side]
        if i % 2:
            crop = crop[:, ::-1]
        image = Image.fromarray(np.ascontiguousarray(crop)).resize(size[::-1], Image.BICUBIC)
        out.append(np.asarray(image))
    return np.stack(out)


# ---- files ------------------------------------------------------------------------------------
def _is_disk_full(error):
    """ENOSPC, raised as OSError by Python or as TensorFlow's own error with that text."""
    return getattr(error, "errno", None) == errno.ENOSPC or "No space left on device" in str(
        error)


def _disk_full_message(path):
    folder = os.path.dirname(os.path.abspath(path))
    return (f"the disk of {folder} filled up during the export; nothing was written: free "
            "some space and export again")


def _move_into_place(artifact, output, overwrite, stage):
    """Renames `artifact` to `output`; an existing output is moved into `stage`, restored on
    failure, and deleted with the stage."""
    aside = None
    if os.path.lexists(output):
        if not overwrite:
            raise FileExistsError(f"{output} appeared during the export: pass overwrite=True "
                                  f"(--overwrite) to replace it. Received: output={output!r}")
        aside = os.path.join(stage, ".previous")
        os.rename(output, aside)
    try:
        os.rename(artifact, output)
    except BaseException:
        if aside is not None:
            os.rename(aside, output)
        raise


def _disk_size(path):
    if os.path.isfile(path):
        return os.path.getsize(path)
    return sum(os.path.getsize(os.path.join(root, name))
               for root, _, names in os.walk(path) for name in names)


def _human_size(size):
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000


# ---- the `keras-deit export` command -----------------------------------------------------------
def add_export_arguments(parser):
    """The options of `keras-deit export` (SOURCE and OUTPUT positional)."""
    parser.add_argument("source", metavar="SOURCE",
                        help="a .keras file, an HF folder, a .pth/.safetensors file, a preset "
                        "name, a hub id or a URL (as `keras-deit predict --model`)")
    parser.add_argument("output", metavar="OUTPUT",
                        help="the artifact: a folder (saved_model) or a file (.tflite, .onnx)")
    parser.add_argument("--format", required=True, metavar="FORMAT",
                        help="saved_model, tflite or onnx")
    parser.add_argument("--quantize", metavar="TYPE",
                        help="tflite only: float16 (float16 weights) or int8 (dynamic range)")
    parser.add_argument("--with-preprocessing", action="store_true",
                        help="put the checkpoint's resize, crop and normalization inside: the "
                        "artifact takes uint8 (batch, H, W, 3) images")
    parser.add_argument("--input-size", metavar="HxW",
                        help="with --with-preprocessing: the image size the artifact takes, or "
                        "'any' (default: any; tflite: the resize size)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing OUTPUT")
    parser.add_argument("--verify-image", action="append", metavar="IMAGE",
                        help="an image to verify on; repeat for more (default: 8 crops of "
                        "scikit-learn's sample photos, else random inputs)")


def export_command(args, out=None):
    """Runs `keras-deit export` for parsed `args`; prints the summary and verification line.

    Bad input raises (the CLI prints one line, exit code 2); a failed build or verification
    prints one line and returns 1.
    """
    out = out or sys.stdout
    format, quantize = _check_format(args.format, args.quantize)
    input_size = _parse_size(args.input_size)
    if input_size is not None and not args.with_preprocessing:
        raise ValueError(f"--input-size applies with --with-preprocessing only. Received: "
                         f"--input-size {args.input_size}")
    _check_output(args.output, args.overwrite)
    require(format)
    from keras_deit.cli import load_classifier
    from keras_deit.image_processing import load_image

    pictures = [load_image(p) for p in args.verify_image or []]
    model, processor = load_classifier(args.source)
    preprocessing = processor.to_keras_layer() if args.with_preprocessing else None
    spec = _input_spec(model, preprocessing, input_size, format)
    data = _cli_verification_data(spec, processor, pictures)
    try:
        result = export_model(model, args.output, format, quantize=quantize,
                              preprocessing=preprocessing, input_size=input_size,
                              overwrite=args.overwrite, verification_data=data)
    except ExportError as e:
        print(f"keras-deit: export failed: {' '.join(str(e).split())}", file=sys.stderr)
        return 1
    print(result.summary(), file=out)
    return 0


def _cli_verification_data(spec, processor, pictures):
    """Real images for the verification: the given pictures, else sample photos; shaped as the
    artifact's input. None (random inputs) without either."""
    from PIL import Image

    free = spec["shape"][1:3]
    if spec["dtype"] == "uint8":
        size = tuple(d if d is not None else s for d, s in zip(free, (56, 48)))
    else:
        size = (256, 256)  # the processor resizes and crops to the model's input
    if pictures:
        arrays = np.stack([np.asarray(p.resize(size[::-1], Image.BICUBIC)) for p in pictures])
    else:
        try:
            arrays = sample_photos(8, size)
        except MissingDependencyError:
            return None
    if spec["dtype"] == "uint8":
        return arrays
    return processor(list(arrays))["pixel_values"]


if __name__ == "__main__":
    worker = argparse.ArgumentParser(prog="python -m keras_deit.export")
    worker.add_argument("--worker", nargs=2, required=True, metavar=("REQUEST", "RESPONSE"))
    _worker(*worker.parse_args().worker)
