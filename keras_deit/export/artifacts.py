"""Routes to the format modules: build one artifact with the current backend, run it, describe
its signature."""

import os
import shutil
import tempfile

import numpy as np

from keras_deit.export.common import _BUILDER_BACKEND
from keras_deit.export.onnx import _write_onnx, describe_onnx, run_onnx
from keras_deit.export.saved_model import _write_saved_model, describe_saved_model, run_saved_model
from keras_deit.export.tflite import _write_tflite, describe_tflite, run_tflite

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


def run_artifact(path, format, inputs):
    """Runs an exported artifact on `inputs` with its own runtime; returns {name: ndarray}."""
    runner = {"saved_model": run_saved_model, "tflite": run_tflite, "onnx": run_onnx}[format]
    return runner(path, inputs)


def describe_artifact(path, format):
    """({input name: (shape, dtype)}, [output names]) as the artifact declares them."""
    describe = {"saved_model": describe_saved_model, "tflite": describe_tflite,
                "onnx": describe_onnx}[format]
    return describe(path)
