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
  (`python -m keras_deit.export --worker`, `worker.py`), which writes the artifact. Keras' own exporters are
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

Layout (one module per format, as `keras/src/export/`): `core` (checks, staging, atomic move,
`export_model`), `common` (formats, errors, the serving function), `saved_model`, `tflite`,
`onnx` (write, run and describe each format), `artifacts` (routes to them), `worker` (the child
process), `verification` (inputs, reference outputs, comparison). The `keras-deit export`
command lives in `keras_deit/cli.py`.
"""

import importlib

# Name -> the module that defines it: loaded on first use, so that importing a keras-free
# part (the `keras-deit export` argument checks in `common`) imports no Keras backend.
_EXPORTS = {
    "_build_artifact": "keras_deit.export.artifacts",
    "describe_artifact": "keras_deit.export.artifacts",
    "run_artifact": "keras_deit.export.artifacts",
    "FORMATS": "keras_deit.export.common",
    "QUANTIZATIONS": "keras_deit.export.common",
    "TOLERANCES": "keras_deit.export.common",
    "ExportError": "keras_deit.export.common",
    "MissingDependencyError": "keras_deit.export.common",
    "require": "keras_deit.export.common",
    "ExportResult": "keras_deit.export.core",
    "export_model": "keras_deit.export.core",
    "export_models": "keras_deit.export.core",
    "run_onnx": "keras_deit.export.onnx",
    "run_saved_model": "keras_deit.export.saved_model",
    "_tflite_schema": "keras_deit.export.tflite",
    "_write_tflite": "keras_deit.export.tflite",
    "evaluate_accuracy": "keras_deit.export.tflite",
    "run_tflite": "keras_deit.export.tflite",
    "tflite_op_names": "keras_deit.export.tflite",
    "Verification": "keras_deit.export.verification",
    "sample_photos": "keras_deit.export.verification",
    "_build_in_child": "keras_deit.export.worker",
    "_exit_with_parent": "keras_deit.export.worker",
}

__all__ = [
    "FORMATS", "QUANTIZATIONS", "TOLERANCES", "ExportError", "MissingDependencyError",
    "Verification", "ExportResult", "export_model", "export_models", "require", "run_artifact",
    "run_saved_model", "run_tflite", "run_onnx", "describe_artifact", "tflite_op_names",
    "evaluate_accuracy", "sample_photos",
]


def __getattr__(name):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
