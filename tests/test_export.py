"""Export to SavedModel, TFLite and ONNX from any backend, each checked against Keras.

The artifacts are built once per module (one call, so on JAX and PyTorch one TensorFlow child
process and one PyTorch child process) and every test reads them back with its own runtime.
"""

import importlib.util
import os
import shutil
import subprocess
import sys

import keras
import numpy as np
import PIL.Image
import pytest

import keras_deit as kd
from keras_deit import export as ex
from keras_deit.export import core as export_core
from keras_deit.cli import main
from helpers import HF, tiny_config

WITH_TEACHER = os.path.join(HF, "with_teacher")
BACKEND = keras.backend.backend()


@pytest.fixture(scope="module")
def teacher():
    """The 5-label, 32px distilled checkpoint and the processor `keras-deit` uses for it."""
    model = kd.DeiTForImageClassificationWithTeacher.from_pretrained(WITH_TEACHER)
    return model, kd.DeiTImageProcessor.from_timm_recipe(image_size=32)


@pytest.fixture(scope="module")
def photos(teacher):
    """16 real photos (crops and flips of scikit-learn's two), preprocessed for the model."""
    _, processor = teacher
    return processor(list(ex.sample_photos(16, (48, 48))))["pixel_values"]


@pytest.fixture(scope="module")
def exported(teacher, photos, tmp_path_factory):
    """SavedModel, TFLite float32 / float16 / int8 and ONNX of the checkpoint, verified on the
    real photos."""
    model, _ = teacher
    folder = tmp_path_factory.mktemp("exported")
    requests = {
        "saved_model": (folder / "saved_model", "saved_model", None),
        "float32": (folder / "model.tflite", "tflite", None),
        "float16": (folder / "model_f16.tflite", "tflite", "float16"),
        "int8": (folder / "model_int8.tflite", "tflite", "int8"),
        "onnx": (folder / "model.onnx", "onnx", None),
    }
    results = ex.export_models(model, list(requests.values()), verification_data=photos)
    return dict(zip(requests, results))


def keras_logits(model, pixel_values):
    return {k: keras.ops.convert_to_numpy(v) for k, v in model(pixel_values).items()}


def max_abs(a, b):
    return float(np.max(np.abs(np.asarray(a, "float64") - np.asarray(b, "float64"))))


# ---- SavedModel ---------------------------------------------------------------------------------
def test_saved_model_reloads_with_dynamic_batch_and_matches_keras(exported, teacher, photos):
    import tensorflow as tf

    result = exported["saved_model"]
    assert result.verification.passed and result.verification.max_abs <= 1e-5
    assert result.inputs == {"pixel_values": ((None, 32, 32, 3), "float32")}
    model, _ = teacher
    weights = sum(np.asarray(keras.ops.convert_to_numpy(w)).nbytes for w in model.weights)
    stored = os.path.getsize(os.path.join(result.path, "variables",
                                          "variables.data-00000-of-00001"))
    assert weights <= stored < 1.1 * weights  # each variable stored once
    serve = tf.saved_model.load(result.path).signatures["serving_default"]
    for batch in (photos[:1], photos[:3]):  # other batch sizes than the verification's 16
        outputs = serve(pixel_values=tf.constant(batch))
        expected = keras_logits(model, batch)
        assert sorted(outputs) == sorted(expected)
        for name in expected:
            assert max_abs(outputs[name], expected[name]) <= 1e-5, name


def test_preprocessing_inside_saved_model_any_size_and_tflite(teacher, tmp_path):
    """uint8 images in: any size for the SavedModel, the resize size for TFLite (no builtin op
    resizes the way DeiTPreprocessing does)."""
    model, _ = teacher
    layer = kd.DeiTPreprocessing(size=(36, 36), crop_size=32,
                                 image_mean=kd.IMAGENET_DEFAULT_MEAN,
                                 image_std=kd.IMAGENET_DEFAULT_STD)
    saved_model, tflite = ex.export_models(
        model, [(tmp_path / "sm", "saved_model", None), (tmp_path / "m.tflite", "tflite", None)],
        preprocessing=layer,
    )
    assert saved_model.inputs == {"images": ((None, None, None, 3), "uint8")}
    assert tflite.inputs == {"images": ((None, 36, 36, 3), "uint8")}
    assert saved_model.verification.max_abs <= 1e-5 and tflite.verification.max_abs <= 1e-4
    assert "GELU" in tflite.ops and "CAST" in tflite.ops
    for size in ((36, 36), (50, 41)):  # the resize skipped, then done
        images = ex.sample_photos(2, size, seed=1)
        outputs = ex.run_saved_model(saved_model.path, images)
        expected = keras_logits(model, layer(images))
        # Exact on TensorFlow; elsewhere the resize itself may round a pixel differently.
        assert max_abs(outputs["logits"], expected["logits"]) <= (
            1e-5 if BACKEND == "tensorflow" or size == (36, 36) else 1e-3)
    images = ex.sample_photos(3, (36, 36), seed=2)
    assert max_abs(ex.run_tflite(tflite.path, images)["logits"],
                   keras_logits(model, layer(images))["logits"]) <= 1e-4


def test_shortest_edge_preprocessing_needs_a_fixed_size(teacher, tmp_path):
    model, processor = teacher
    with pytest.raises(ValueError, match=r"shortest edge to 36.*input_size=\(height, width\)"):
        ex.export_model(model, tmp_path / "sm", preprocessing=processor)
    assert os.listdir(tmp_path) == []


# ---- TFLite -------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["float32", "float16", "int8"])
def test_tflite_has_builtin_ops_only_with_gelu(exported, kind):
    result = exported[kind]
    ops = ex.tflite_op_names(result.path)
    assert ops == result.ops
    assert "GELU" in ops and "BATCH_MATMUL" in ops and "SOFTMAX" in ops
    builtin = set(vars(ex._tflite_schema().BuiltinOperator))
    assert all(op in builtin for op in ops), ops  # no Flex / custom op
    assert not any(op.startswith("Flex") for op in ops)
    assert result.inputs == {"pixel_values": ((None, 32, 32, 3), "float32")}


def _gelu_approximate_flags(path):
    """The `approximate` option of every GELU operator in a .tflite file."""
    schema = ex._tflite_schema()
    with open(path, "rb") as f:
        model = schema.Model.GetRootAs(f.read(), 0)
    flags = []
    for s in range(model.SubgraphsLength()):
        graph = model.Subgraphs(s)
        for i in range(graph.OperatorsLength()):
            op = graph.Operators(i)
            if op.BuiltinOptionsType() == schema.BuiltinOptions.GeluOptions:
                table = op.BuiltinOptions()
                options = schema.GeluOptions()
                options.Init(table.Bytes, table.Pos)
                flags.append(bool(options.Approximate()))
    return flags


def test_tflite_gelu_is_the_exact_form(exported):
    """Keras computes exact GELU as tf.nn.gelu's erfc form; the converter fuses it into the
    builtin GELU with approximate=false (one per block)."""
    assert _gelu_approximate_flags(exported["float32"].path) == [False, False]


def test_tflite_float32_matches_keras_at_any_batch(exported, teacher, photos):
    result = exported["float32"]
    assert result.verification.passed and result.verification.max_abs <= 1e-4
    model, _ = teacher
    for batch in (photos[:1], photos[:5]):
        outputs = ex.run_tflite(result.path, batch)
        assert max_abs(outputs["logits"], keras_logits(model, batch)["logits"]) <= 1e-4


def test_quantized_tflite_files_are_smaller_and_agree_on_real_photos(exported):
    f32, f16, int8 = exported["float32"], exported["float16"], exported["int8"]
    assert f16.size_bytes < 0.75 * f32.size_bytes and int8.size_bytes < 0.6 * f32.size_bytes
    assert "DEQUANTIZE" in f16.ops  # float16 weights, float32 compute
    for result in (f16, int8):
        v = result.verification
        assert v.tolerance is None and v.num_inputs == 16
        print(f"{result.quantize}: max-abs {v.max_abs:.3g}, top-1 agreement "
              f"{v.top1_agreement:.3f}, {result.size_bytes} bytes")
    assert f16.verification.max_abs < 1e-2 and f16.verification.top1_agreement == 1.0
    assert int8.verification.max_abs < 0.1 and int8.verification.top1_agreement >= 0.8
    assert "top-1 agreement" in int8.verification_line()


def test_evaluate_accuracy_on_a_tiny_labelled_set(exported, teacher, photos):
    model, _ = teacher
    predicted = keras_logits(model, photos[:6])["logits"].argmax(-1)
    labels = np.concatenate([predicted[:4], (predicted[4:] + 1) % 5])  # 4 right, 2 wrong
    assert ex.evaluate_accuracy(exported["float32"].path, photos[:6], labels, batch_size=4) == (
        pytest.approx(4 / 6))
    with pytest.raises(ValueError, match="one integer label per image"):
        ex.evaluate_accuracy(exported["float32"].path, photos[:6], labels[:5])


def test_tflite_refuses_a_resize_inside(teacher, tmp_path):
    model, _ = teacher
    layer = kd.DeiTPreprocessing(size=(36, 36), crop_size=32)
    with pytest.raises(ValueError, match=r"cannot resize inside .*input_size=\(40, 48\)"):
        ex.export_model(model, tmp_path / "m.tflite", "tflite", preprocessing=layer,
                        input_size=(40, 48))
    assert os.listdir(tmp_path) == []


def test_tflite_conversion_fails_loudly_on_non_builtin_ops(tmp_path):
    """Builtins only: a graph that would need Flex is an error that names the op."""
    import tensorflow as tf

    module = tf.Module()
    module.serve = tf.function(
        lambda x: {"y": tf.image.resize(x, (8, 8), "bicubic", antialias=True)},
        input_signature=[tf.TensorSpec((None, 12, 12, 3), tf.float32, name="x")],
    )
    tf.saved_model.save(module, str(tmp_path / "sm"),
                        signatures={"serving_default": module.serve})
    with pytest.raises(ex.ExportError, match="no kernel for ScaleAndTranslate; Flex"):
        ex._write_tflite(str(tmp_path / "sm"), None, str(tmp_path / "m.tflite"))
    assert not (tmp_path / "m.tflite").exists()


# ---- ONNX ---------------------------------------------------------------------------------------
def test_onnx_matches_keras_with_dynamic_batch(exported, teacher, photos):
    import onnx

    result = exported["onnx"]
    assert result.verification.passed and result.verification.max_abs <= 1e-4
    assert result.inputs == {"pixel_values": ((None, 32, 32, 3), "float32")}
    assert "Gelu" in {node.op_type for node in onnx.load(result.path).graph.node}
    model, _ = teacher
    outputs = ex.run_onnx(result.path, photos[:3])
    assert max_abs(outputs["logits"], keras_logits(model, photos[:3])["logits"]) <= 1e-4


# ---- API checks, atomicity ----------------------------------------------------------------------
@pytest.mark.parametrize("kwargs, error, message", [
    (dict(format="tf"), ValueError, "unsupported export format 'tf'"),
    (dict(format="saved_model", quantize="int8"), ValueError, "TFLite files only"),
    (dict(format="tflite", quantize="int4"), ValueError, "unsupported quantization 'int4'"),
    (dict(format="tflite", input_size=(40, 40)), ValueError, "differs from the model's input"),
])
def test_bad_arguments(kwargs, error, message, tmp_path):
    model = kd.DeiTForImageClassification(tiny_config())
    with pytest.raises(error, match=message):
        ex.export_model(model, tmp_path / "out", **kwargs)


def test_multi_input_models_are_refused(tmp_path):
    model = kd.DeiTForMaskedImageModeling(tiny_config())
    with pytest.raises(ValueError, match="single-input models"):
        ex.export_model(model, tmp_path / "out")


def test_existing_output_needs_overwrite(tmp_path):
    (tmp_path / "out.tflite").write_bytes(b"old")
    with pytest.raises(FileExistsError, match="overwrite=True"):
        ex.export_model(kd.DeiTForImageClassification(tiny_config()), tmp_path / "out.tflite",
                        "tflite")
    assert (tmp_path / "out.tflite").read_bytes() == b"old"


def test_missing_dependency_is_named(monkeypatch, tmp_path):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name: None if name == "onnxscript" else real(name))
    with pytest.raises(ex.MissingDependencyError, match="pip install onnxscript"):
        ex.export_model(kd.DeiTForImageClassification(tiny_config()), tmp_path / "m.onnx",
                        "onnx")


def _failing_build(*args, **kwargs):
    """Writes part of an artifact, then fails, as a crash in the middle of a conversion would."""
    jobs = args[2] if len(args) > 2 and isinstance(args[2], list) else [args[2]]
    for job in jobs:
        with open(job["path"], "wb") as f:
            f.write(b"partial")
    raise ex.ExportError("conversion crashed")


def test_failure_leaves_nothing_behind(monkeypatch, tmp_path):
    monkeypatch.setattr(export_core, "_build_artifact", _failing_build)
    monkeypatch.setattr(export_core, "_build_in_child", _failing_build)
    model = kd.DeiTForImageClassification(tiny_config())
    (tmp_path / "kept.tflite").write_bytes(b"old")
    for name in ("new.tflite", "kept.tflite"):
        with pytest.raises(ex.ExportError, match="conversion crashed"):
            ex.export_model(model, tmp_path / name, "tflite", overwrite=True)
    assert sorted(os.listdir(tmp_path)) == ["kept.tflite"]
    assert (tmp_path / "kept.tflite").read_bytes() == b"old"


def test_a_failed_verification_writes_nothing(monkeypatch, exported, tmp_path):
    """The check runs on the staged artifact, before the rename."""
    monkeypatch.setattr(export_core, "_build_artifact", lambda model, pre, job: shutil.copy(
        exported["int8"].path, job["path"]))
    monkeypatch.setattr(export_core, "_build_in_child", lambda model, pre, jobs, *args: [
        shutil.copy(exported["int8"].path, job["path"]) for job in jobs])
    model = kd.DeiTForImageClassificationWithTeacher.from_pretrained(WITH_TEACHER)
    with pytest.raises(ex.ExportError, match=r"differs from the Keras model .*tolerance 0\.0001"):
        ex.export_model(model, tmp_path / "m.tflite", "tflite")  # an int8 file as float32
    assert os.listdir(tmp_path) == []


def test_export_module_imports_no_framework():
    code = ("import sys, keras_deit.export; "
            "print(sorted(m for m in ('torch', 'tensorflow', 'onnx', 'ai_edge_litert') "
            "if m in sys.modules))")
    env = dict(os.environ, KERAS_BACKEND="jax")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "[]"


# ---- the command --------------------------------------------------------------------------------
def test_cli_exports_with_preprocessing_and_replaces_the_output(tmp_path, capsys):
    output = tmp_path / "served"
    output.mkdir()
    (output / "stale.txt").write_text("old export")
    photo = str(tmp_path / "photo.png")
    PIL.Image.fromarray(ex.sample_photos(1, (60, 80))[0]).save(photo)
    code = main(["export", WITH_TEACHER, "--format", "saved_model", "--with-preprocessing",
                 "--input-size", "40x48", "--overwrite", "--verify-image", photo,
                 "--verify-image", photo, str(output)])
    printed = capsys.readouterr()
    assert code == 0, printed.err
    lines = printed.out.splitlines()
    assert lines[0].startswith(f"exported saved_model to {output} (") and "KB" in lines[0]
    assert "  input: images uint8 (batch, 40, 48, 3)" in lines
    verified = [line for line in lines if "verified: max-abs difference vs Keras" in line]
    assert len(verified) == 1 and "on 2 inputs (tolerance 1e-05: ok)" in verified[0]
    assert sorted(os.listdir(tmp_path)) == ["photo.png", "served"]
    assert "stale.txt" not in os.listdir(output) and "saved_model.pb" in os.listdir(output)


@pytest.mark.parametrize("args, message", [
    (["--format", "keras"], "unsupported export format 'keras'"),
    (["--format", "saved_model", "--quantize", "int8"], "TFLite files only"),
    (["--format", "tflite", "--quantize", "bf16"], "unsupported quantization 'bf16'"),
    (["--format", "tflite", "--input-size", "32x32"], "--input-size applies with"),
    (["--format", "tflite", "--with-preprocessing", "--input-size", "3by4"], "HEIGHTxWIDTH"),
    (["--format", "tflite", "{exists}"], "already exists: pass overwrite=True (--overwrite)"),
    (["--format", "onnx", "{missing-dep}"], "pip install onnxscript"),
])
def test_cli_bad_input_is_one_line_exit_2(args, message, tmp_path, capsys, monkeypatch):
    output = str(tmp_path / "out.tflite")
    if "{exists}" in args:
        open(output, "w").close()
    if "{missing-dep}" in args:
        real = importlib.util.find_spec
        monkeypatch.setattr(importlib.util, "find_spec",
                            lambda name: None if name == "onnxscript" else real(name))
    args = [a for a in args if not a.startswith("{")]
    assert main(["export", WITH_TEACHER, *args, output]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("keras-deit: error:") and message in err[0], err


def test_cli_build_failure_is_one_line_exit_1(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(export_core, "_build_artifact", _failing_build)
    monkeypatch.setattr(export_core, "_build_in_child", _failing_build)
    assert main(["export", WITH_TEACHER, "--format", "tflite", str(tmp_path / "m.tflite")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["keras-deit: export failed: conversion crashed"]
    assert os.listdir(tmp_path) == []
