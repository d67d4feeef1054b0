"""What Keras offers every model: quantization, LoRA, dtype policies, layouts, old files."""

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest

import keras_deit as kd
from helpers import DATA, HF, max_abs_diff, small_config, tiny_config, to_numpy
from keras_deit import keras_native, saving

MODELS = [kd.DeiTModel, kd.DeiTForImageClassification, kd.DeiTForImageClassificationWithTeacher,
          kd.DeiTForMaskedImageModeling]
MODES = ["int8", "int4", "float8"]


def inputs_for(model, batch=2, seed=0):
    rng = np.random.RandomState(seed)
    images = rng.rand(batch, 32, 32, 3).astype("float32")
    if isinstance(model, kd.DeiTForMaskedImageModeling):
        return {"pixel_values": images, "bool_masked_pos": rng.rand(batch, 16) > 0.5}
    return images


def outputs(model, x):
    return {key: to_numpy(value) for key, value in model(x).items()
            if not isinstance(value, (list, tuple))}


def assert_same_outputs(a, b, atol=0.0):
    assert a.keys() == b.keys()
    for key in a:
        assert max_abs_diff(a[key], b[key]) <= atol, key


# ---- projections are Keras' Dense --------------------------------------------------------------
def test_every_projection_is_a_keras_dense_with_a_structural_path(config):
    model = kd.DeiTForImageClassificationWithTeacher(config)
    paths = {layer.path for layer in keras_native.projections(model)}
    for i in range(config.num_hidden_layers):
        for name in ("attention/qkv", "attention/proj", "mlp/fc1", "mlp/fc2"):
            assert f"encoder/layer_{i}/{name}" in paths
    assert {"cls_classifier", "distillation_classifier"} <= paths
    qkv = model.deit.encoder.blocks[0].attention.qkv
    assert tuple(qkv.kernel.shape) == (48, 3 * 48)  # q/k/v stay one fused Dense


# ---- quantization ------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("cls", MODELS, ids=lambda c: c.__name__)
def test_quantize_reaches_every_projection_and_survives_saving(cls, mode, tmp_path):
    model = cls(tiny_config())
    x = inputs_for(model)
    reference = outputs(model, x)
    model.quantize(mode)
    left_in_float = [layer.path for layer in keras_native.projections(model)
                     if layer.quantization_mode != mode]
    assert left_in_float == []
    quantized = outputs(model, x)
    for key in quantized:
        # Quantization moves the outputs, but not far (random weights of std 0.02).
        assert 0 < max_abs_diff(quantized[key], reference[key]) < 0.25, key

    model.save(tmp_path / "model.keras")
    assert_same_outputs(outputs(keras.saving.load_model(tmp_path / "model.keras"), x), quantized)
    # The checked loader of `keras-deit predict` takes quantized files (int4: half a byte per
    # parameter).
    assert_same_outputs(outputs(saving.load_model(tmp_path / "model.keras"), x), quantized)
    model.save_weights(tmp_path / "model.weights.h5")
    rebuilt = cls.from_config(model.get_config())
    assert all(layer.quantization_mode == mode for layer in keras_native.projections(rebuilt))
    rebuilt.load_weights(tmp_path / "model.weights.h5")
    assert_same_outputs(outputs(rebuilt, x), quantized)


def test_quantize_filters_match_layer_paths(config):
    model = kd.DeiTForImageClassification(config)
    model.quantize("int8", filters="attention")
    quantized = {layer.path for layer in keras_native.projections(model)
                 if layer.quantization_mode == "int8"}
    assert quantized == {f"encoder/layer_{i}/attention/{n}" for i in range(2)
                         for n in ("qkv", "proj")}


@pytest.mark.parametrize("mode, message", [
    ("int3", "quantization mode.*int3"),
    ("gptq", "calibration dataset|GPTQ"),
    (None, "mode"),
])
def test_bad_quantization_modes_leave_the_model_unchanged(config, mode, message):
    model = kd.DeiTForImageClassification(config)
    with pytest.raises(ValueError, match=message):
        model.quantize(mode)
    assert all(layer.quantization_mode is None for layer in keras_native.projections(model))


def test_quantizing_twice_or_over_lora_is_refused(config):
    model = kd.DeiTForImageClassification(config)
    model.quantize("int8")
    with pytest.raises(ValueError, match="already quantized"):
        model.quantize("int4")
    adapted = kd.DeiTForImageClassification(config)
    adapted.enable_lora(2)
    with pytest.raises(ValueError, match="before enable_lora"):
        adapted.quantize("int8")


def test_quantized_dtype_policy_on_the_constructor_and_from_pretrained(config, images):
    built = kd.DeiTForImageClassification(config, dtype="int8_from_float32")
    assert all(layer.quantization_mode == "int8" for layer in keras_native.projections(built))
    loaded = kd.DeiTForImageClassification.from_pretrained(
        os.path.join(HF, "classification"), dtype="int8_from_float32")
    assert all(layer.quantization_mode == "int8" for layer in keras_native.projections(loaded))
    float_model = kd.DeiTForImageClassification.from_pretrained(os.path.join(HF, "classification"))
    # Quantized from the checkpoint's float kernels, not from a random initialization.
    assert max_abs_diff(loaded(images)["logits"], float_model(images)["logits"]) < 0.05


# ---- LoRA --------------------------------------------------------------------------------------
def trainable_count(model):
    return sum(int(np.prod(v.shape)) for v in model.trainable_weights)


@pytest.mark.parametrize("cls", MODELS[1:], ids=lambda c: c.__name__)
def test_lora_trains_only_the_adapters_and_heads(cls, tmp_path):
    model = cls(small_config())
    full = trainable_count(model)
    model.enable_lora(2)
    trainable = {v.path for v in model.trainable_weights}
    assert trainable and all("lora_kernel" in p or p.split("/")[0] in keras_native.HEAD_NAMES
                             for p in trainable)
    assert any("attention/qkv/lora_kernel_a" in p for p in trainable)
    assert trainable_count(model) < full / 3

    x = inputs_for(model, batch=4)
    y = None if isinstance(model, kd.DeiTForMaskedImageModeling) else np.array([0, 1, 2, 3])
    frozen = {v.path: to_numpy(v) for v in model.weights if not v.trainable}
    adapters = {v.path: to_numpy(v) for v in model.trainable_weights if "lora_kernel_b" in v.path}
    model.compile(keras.optimizers.Adam(1e-2))
    model.fit(x, y, epochs=2, batch_size=4, verbose=0)
    assert all(max_abs_diff(v, frozen[v.path]) == 0 for v in model.weights if v.path in frozen)
    assert all(max_abs_diff(v, adapters[v.path]) > 0 for v in model.weights if v.path in adapters)

    adapted = outputs(model, x)
    merged = model.merge_lora()
    assert not any(getattr(layer, "lora_enabled", False)
                   for layer in keras_native.projections(merged))
    assert_same_outputs(outputs(merged, x), adapted, atol=1e-5)
    model.save(tmp_path / "adapted.keras")  # Keras merges the adapters into the saved kernels.
    assert_same_outputs(outputs(keras.saving.load_model(tmp_path / "adapted.keras"), x), adapted,
                        atol=1e-5)


def test_lora_options_and_bad_input(config):
    model = kd.DeiTForImageClassification(config)
    model.enable_lora(3, target_names=["qkv", "fc2"], train_heads=False)
    assert {v.path.rsplit("/", 2)[-2] for v in model.trainable_weights} == {"qkv", "fc2"}
    with pytest.raises(ValueError, match="already has adapters"):
        model.enable_lora(3)
    fresh = kd.DeiTForImageClassification(config)
    with pytest.raises(ValueError, match=r"No projection named \['query'\]"):
        fresh.enable_lora(2, target_names=["query"])
    with pytest.raises(ValueError, match="rank=0"):
        fresh.enable_lora(0)
    assert fresh.trainable_weights == [v for v in fresh.weights]  # unchanged by the refusals


def test_lora_on_an_int8_model(config, images):
    model = kd.DeiTForImageClassification(config)
    model.quantize("int8")
    model.enable_lora(2)
    model.compile(keras.optimizers.Adam(1e-2))
    history = model.fit(images, np.array([0, 1]), epochs=2, verbose=0)
    assert np.isfinite(history.history["loss"]).all()


# ---- dtype policies ----------------------------------------------------------------------------
@pytest.mark.parametrize("policy, variable_dtype, compute_dtype", [
    ("float32", "float32", "float32"),
    ("bfloat16", "bfloat16", "bfloat16"),
    ("float16", "float16", "float16"),
    ("mixed_bfloat16", "float32", "bfloat16"),
    ("mixed_float16", "float32", "float16"),
])
def test_dtype_policies_reach_every_layer_and_survive_saving(policy, variable_dtype,
                                                             compute_dtype, tmp_path):
    model = kd.DeiTForImageClassificationWithTeacher(small_config(), dtype=policy)
    assert {v.dtype for v in model.weights} == {variable_dtype}
    assert {layer.compute_dtype for layer in model._flatten_layers()
            if not isinstance(layer, keras.layers.InputLayer)} == {compute_dtype}
    images = np.random.RandomState(0).rand(2, 32, 32, 3).astype("float32")
    out = model(images)
    assert keras.backend.standardize_dtype(out["logits"].dtype) == compute_dtype
    assert np.isfinite(to_numpy(out["logits"]).astype("float32")).all()
    model.save(tmp_path / "model.keras")
    reloaded = keras.saving.load_model(tmp_path / "model.keras")
    assert reloaded.dtype_policy.name == policy
    assert {v.dtype for v in reloaded.weights} == {variable_dtype}
    assert max_abs_diff(reloaded(images)["logits"], out["logits"]) == 0


def test_dtype_on_from_pretrained_stays_close_to_float32(images):
    folder = os.path.join(HF, "with_teacher")
    reference = kd.DeiTForImageClassificationWithTeacher.from_pretrained(folder)
    half = kd.DeiTForImageClassificationWithTeacher.from_pretrained(folder, dtype="bfloat16")
    assert {v.dtype for v in half.weights} == {"bfloat16"}
    assert max_abs_diff(half(images)["logits"], reference(images)["logits"]) < 0.05


def test_a_global_policy_is_honoured():
    keras.config.set_dtype_policy("mixed_bfloat16")
    try:
        model = kd.DeiTForImageClassification(small_config())
    finally:
        keras.config.set_dtype_policy("float32")
    assert model.dtype_policy.name == "mixed_bfloat16"
    assert model.get_layer("classifier").compute_dtype == "bfloat16"


def test_unknown_keyword_arguments_and_dtypes_are_named(config):
    with pytest.raises(ValueError, match=r"unknown keyword arguments \['output_attention'\]"):
        kd.DeiTForImageClassification(config, output_attention=True)
    with pytest.raises(ValueError, match="Unknown dtype policy.*dtype='float13'"):
        kd.DeiTModel(config, dtype="float13")


# ---- layouts -----------------------------------------------------------------------------------
def test_layout_map_names_the_projection_paths(config):
    # Named devices: the map is plain data, built on every backend (PyTorch has no
    # keras.distribution runtime to list devices).
    mesh = keras.distribution.DeviceMesh((1, 1), ("batch", "model"), ["cpu:0"])
    layout_map = kd.DeiTModel.get_layout_map(mesh)
    model_paths = {v.path for v in kd.DeiTForImageClassification(config).weights}
    sharded = {path for path in model_paths if layout_map[path] is not None}
    assert sharded == {p for p in model_paths
                       if p.split("/", 2)[-1] in ("attention/qkv/kernel", "attention/qkv/bias",
                                                  "attention/proj/kernel", "mlp/fc1/kernel",
                                                  "mlp/fc1/bias", "mlp/fc2/kernel")}
    assert tuple(layout_map["encoder/layer_0/attention/qkv/kernel"].axes) == (None, "model")
    assert tuple(layout_map["encoder/layer_1/mlp/fc2/kernel"].axes) == ("model", None)
    with pytest.raises(ValueError, match="no axis 'tensor'"):
        kd.DeiTModel.get_layout_map(mesh, model_parallel_dim_name="tensor")


_MODEL_PARALLEL_SCRIPT = """
import json, sys, numpy as np, keras, jax
import keras_deit as kd
from helpers import small_config
devices = int(sys.argv[1])
keras.utils.set_random_seed(0)
rng = np.random.RandomState(0)
images, labels = rng.rand(8, 32, 32, 3).astype("float32"), rng.randint(0, 5, 8)
config = small_config(num_attention_heads=4)

def train(distribution):
    keras.utils.set_random_seed(0)
    if distribution is None:
        model = kd.DeiTForImageClassification(config)
    else:
        with distribution.scope():
            model = kd.DeiTForImageClassification(config)
    model.compile(keras.optimizers.SGD(0.1))
    losses = model.fit(images, labels, epochs=3, batch_size=8, shuffle=False,
                       verbose=0).history["loss"]
    return model, losses

_, single = train(None)
mesh = keras.distribution.DeviceMesh((1, devices), ("batch", "model"), jax.devices())
distribution = keras.distribution.ModelParallel(
    layout_map=kd.DeiTModel.get_layout_map(mesh), batch_dim_name="batch")
model, parallel = train(distribution)
kernel = model.deit.encoder.blocks[0].attention.qkv.kernel.value
print(json.dumps(dict(
    devices=len(jax.devices()), single=single, parallel=parallel,
    shard_shape=list(kernel.sharding.shard_shape(kernel.shape)), shape=list(kernel.shape),
)))
"""


@pytest.mark.slow
@pytest.mark.parametrize("devices", [2, 4])
def test_model_parallel_fit_matches_one_device_on_jax(devices):
    # A fresh process: the virtual devices must be requested before JAX is imported.
    env = dict(os.environ, KERAS_BACKEND="jax",
               XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
               PYTHONPATH=os.pathsep.join([os.path.dirname(__file__), os.getcwd()]))
    result = subprocess.run([sys.executable, "-c", _MODEL_PARALLEL_SCRIPT, str(devices)],
                            env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["devices"] == devices
    np.testing.assert_allclose(report["parallel"], report["single"], rtol=1e-5, atol=1e-6)
    # The qkv kernel (32, 96) really is split by columns over the model axis.
    assert report["shard_shape"] == [report["shape"][0], report["shape"][1] // devices]


# ---- files of keras-deit 0.1.0 -----------------------------------------------------------------
LEGACY = os.path.join(DATA, "legacy_0_1_0")


def test_keras_files_of_the_previous_release_load_with_identical_outputs():
    # The outputs keras-deit 0.1.0 computed from these files on this backend, on another CPU
    # (AMD EPYC): this machine's kernels (another vector unit, e.g. AMX) round the same float32
    # products differently, ~4e-8 here, so equal means equal to float32 rounding.
    reference = np.load(os.path.join(LEGACY, f"reference_{keras.backend.backend()}.npz"))
    x = reference["pixel_values"]
    model = keras.saving.load_model(os.path.join(LEGACY, "with_teacher.keras"))
    assert max_abs_diff(model(x)["logits"], reference["with_teacher_logits"]) <= 1e-6

    with open(os.path.join(LEGACY, "masked_image_modeling.config.json")) as f:
        mim = kd.DeiTForMaskedImageModeling.from_config(json.load(f))
    mim.load_weights(os.path.join(LEGACY, "masked_image_modeling.weights.h5"))
    out = mim({"pixel_values": x, "bool_masked_pos": reference["bool_masked_pos"]})
    assert max_abs_diff(out["reconstruction"],
                        reference["masked_image_modeling_reconstruction"]) <= 1e-6


def test_a_legacy_file_of_another_architecture_is_named(tmp_path):
    from keras_deit.layers import projection

    dense = keras.layers.Dense(4)
    dense.build((None, 3))
    owner = keras.layers.Identity(name="attention")
    with pytest.raises(ValueError, match="'attention' expected 2 variables.*received 3"):
        projection.load_legacy_variables({"0": 0, "1": 1, "2": 2}, [dense], owner)


# ---- export of a quantized model ---------------------------------------------------------------
def test_an_int8_model_exports_to_saved_model_and_other_formats_are_refused(config, tmp_path):
    pytest.importorskip("tensorflow")
    from keras_deit import export

    model = kd.DeiTForImageClassificationWithTeacher(config)
    model.quantize("int8")
    result = export.export_model(model, tmp_path / "int8_saved_model", "saved_model")
    assert result.verification.passed  # the quantized graph, as Keras runs it
    for fmt in ("tflite", "onnx"):
        with pytest.raises(ValueError, match=r"quantized by Keras \(int8\) exports to "
                                             r"saved_model only"):
            export.export_model(model, tmp_path / f"int8.{fmt}", fmt)
    assert sorted(os.listdir(tmp_path)) == ["int8_saved_model"]
