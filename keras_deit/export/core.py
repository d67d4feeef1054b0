"""The request/staging/atomic-move core: `export_model` and `export_models` check every request
before any work, stage each artifact beside its output, build it (here or in the worker),
verify it, and only then move it into place."""

import contextlib
import dataclasses
import json
import os

import numpy as np

from keras_deit import atomic, model_preprocessing
from keras_deit.keras_internals import flatten_layers
from keras_deit.preprocessing_spec import _resize_output_size
from keras_deit.export.artifacts import _build_artifact, describe_artifact, run_artifact
from keras_deit.export.common import (
    _BUILDER_BACKEND, TOLERANCES, ExportError, _disk_full_message,
    _is_disk_full, check_format, check_output, require,
)
from keras_deit.export.tflite import _check_builtin_only, tflite_op_names
from keras_deit.export.worker import _build_in_child
from keras_deit.export.verification import (
    Verification, _check_verification_data, _compare_outputs, _default_verification_data,
    _reference_outputs,
)

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
    model, preprocessing = split_included_preprocessing(model, preprocessing)
    backend = keras.backend.backend()
    jobs = []
    for output, format, quantize in requests:
        format, quantize = check_format(format, quantize)
        _check_keras_quantization(model, format, quantize)
        output = os.fspath(output)
        check_output(output, overwrite)
        require(format)
        spec = input_spec(model, preprocessing, input_size, format)
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


# Formats that carry a model quantized by Keras (`model.quantize(mode)`), as measured by
# benchmarks/quantization.py: the TFLite converter rejects int8 activations feeding
# fully-connected ops and has no float8 type; torch's ONNX export of Keras' int8 / float8
# kernels differs from Keras by 2e-2 to 7e-2, and ONNX Runtime cannot load its int4 file.
_KERAS_QUANTIZED_FORMATS = {"int8": ("saved_model",), "float8": ("saved_model",),
                            "int4": ("saved_model", "tflite")}


def _check_keras_quantization(model, format, quantize):
    """Refuses, before any work, a format that cannot hold this Keras-quantized model."""
    modes = sorted({layer.quantization_mode for layer in flatten_layers(model, include_self=True)
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


def split_included_preprocessing(model, preprocessing):
    """A model built with `include_preprocessing` is exported as (the same model without it,
    its `DeiTPreprocessing` layer), the pair the `preprocessing=` path builds and verifies;
    other models come back with `preprocessing` as given."""
    plain, included = model_preprocessing.split(model)
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


def input_spec(model, preprocessing, input_size, format):
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
