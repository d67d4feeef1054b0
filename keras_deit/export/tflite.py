"""TFLite (LiteRT): converted from the SavedModel with builtin ops only, run and read back with
the standalone `ai_edge_litert` interpreter and flatbuffer schema."""

import os

import numpy as np

from keras_deit.export.common import _SIGNATURE, ExportError, MissingDependencyError

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


def describe_tflite(path):
    """({input name: (shape, dtype)}, [output names]) as the TFLite signature declares them."""
    from ai_edge_litert.interpreter import Interpreter

    runner = Interpreter(model_path=path).get_signature_runner(_SIGNATURE)
    inputs = {name: (tuple(None if d < 0 else int(d) for d in info["shape_signature"]),
                     np.dtype(info["dtype"]).name)
              for name, info in runner.get_input_details().items()}
    return inputs, sorted(runner.get_output_details())


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
