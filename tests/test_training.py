"""Training with `model.fit` (and keras_deit.training.fine_tuning): Keras losses and metrics, fine-tuning, the recipe's
tools (stochastic depth, mixed precision, jit, weight decay, data parallelism) and bad input."""

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest

import keras_deit as kd
from helpers import (
    HF, batch, head_outputs, max_abs_diff, np_cross_entropy, small_config, to_numpy,
)
from keras_deit.training.fine_tuning import (
    deit_adamw,
    is_excluded_from_weight_decay,
    rebuild_at_image_size,
)

BACKEND = keras.backend.backend()
HEADS = [kd.DeiTForImageClassification, kd.DeiTForImageClassificationWithTeacher]


# ---- 1. fit with the loss the problem type implies ---------------------------------------------
@pytest.mark.parametrize("cls", HEADS, ids=lambda c: c.__name__)
def test_fit_evaluate_predict_with_an_optimizer_alone(cls):
    model = cls(small_config())
    images, labels = batch()
    heads = [layer for layer in ("classifier", "cls_classifier", "distillation_classifier")
             if layer in [sub.name for sub in model.layers]]
    kernels = [to_numpy(model.get_layer(name).kernel) for name in heads]
    model.compile(keras.optimizers.Adam(2e-3), metrics=["accuracy"])
    logits = head_outputs(model, images)
    result = model.evaluate(images, labels, verbose=0, return_dict=True)
    assert abs(result["loss"] - np.mean([np_cross_entropy(z, labels) for z in logits])) < 1e-5
    history = model.fit(images, labels, epochs=3, verbose=0).history
    assert set(history) == {"loss", "accuracy"} and history["loss"][-1] < history["loss"][0]
    # WithTeacher without a teacher trains both heads on the labels.
    for name, before in zip(heads, kernels):
        assert max_abs_diff(model.get_layer(name).kernel, before) > 0, name
    predicted = model.predict(images, verbose=0)
    assert max_abs_diff(predicted["logits"], model(images)["logits"]) < 1e-5


@pytest.mark.parametrize("cls", HEADS, ids=lambda c: c.__name__)
def test_keras_loss_names_and_metrics_apply_to_logits(cls):
    model = cls(small_config())
    images, labels = batch()
    model.compile("adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    logits = to_numpy(model(images)["logits"])
    result = model.evaluate(images, labels, verbose=0, return_dict=True)
    # The name is read as logits (from_logits=True): the softmax cross-entropy of `logits`.
    assert abs(result["loss"] - np_cross_entropy(logits, labels)) < 1e-5
    assert abs(result["accuracy"] - np.mean(logits.argmax(-1) == labels)) < 1e-6
    with pytest.raises(ValueError, match=r"values \[5, 6, 7\]"):
        model.fit(images, labels + 3, verbose=0)


def test_loss_dict_per_output_gets_the_same_labels():
    model = kd.DeiTForImageClassificationWithTeacher(small_config())
    images, labels = batch()
    model.compile(
        "adam",
        loss={"cls_logits": "sparse_categorical_crossentropy",
              "distillation_logits": keras.losses.SparseCategoricalCrossentropy(from_logits=True)},
        metrics={"logits": ["accuracy"]},
    )
    cls_logits, distillation_logits = head_outputs(model, images)
    result = model.evaluate(images, labels, verbose=0, return_dict=True)
    expected = np_cross_entropy(cls_logits, labels) + np_cross_entropy(distillation_logits, labels)
    assert abs(result["loss"] - expected) < 1e-5
    with pytest.warns(UserWarning, match="from_logits=True"):
        model.compile("adam", loss=keras.losses.SparseCategoricalCrossentropy())


def test_compiled_model_saves_and_reloads_compiled(tmp_path):
    model = kd.DeiTForImageClassification(small_config())
    images, labels = batch()
    model.compile("adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(images, labels, verbose=0)
    path = str(tmp_path / "model.keras")
    model.save(path)
    restored = keras.saving.load_model(path)
    assert restored.compiled and restored._has_compiled_loss
    loss, accuracy = restored.evaluate(images, labels, verbose=0)
    assert abs(loss - np_cross_entropy(to_numpy(model(images)["logits"]), labels)) < 1e-5


def test_fine_tune_pretrained_on_new_classes():
    source = os.path.join(HF, "with_teacher")
    with pytest.warns(UserWarning, match="freshly initialized"):
        model = kd.DeiTForImageClassificationWithTeacher.from_pretrained(source, num_labels=3)
    # Everything but the two new heads comes from the checkpoint.
    assert sorted(model.loading_info.fresh) == sorted(
        f"{head}/{name}" for head in ("cls_classifier", "distillation_classifier")
        for name in ("kernel", "bias"))
    assert tuple(model.get_layer("cls_classifier").kernel.shape) == (48, 3)
    images, _ = batch()
    labels = np.arange(8) % 3
    model.compile(keras.optimizers.Adam(1e-3), metrics=["accuracy"])
    history = model.fit(images, labels, epochs=2, verbose=0).history["loss"]
    assert history[-1] < history[0]
    assert tuple(model(images)["logits"].shape) == (8, 3)


@pytest.mark.parametrize("deit3", [False, True], ids=["deit", "deit3"])
def test_rebuild_at_image_size_matches_interpolation(deit3):
    config = small_config(class_token_position_embedding=not deit3,
                          use_distillation_token=not deit3,
                          layer_scale_init_value=0.1 if deit3 else None)
    model = kd.DeiTForImageClassification(config)
    large = rebuild_at_image_size(model, 48)
    assert large.config.image_size == 48 and tuple(large.input_shape) == (None, 48, 48, 3)
    interpolating = kd.DeiTForImageClassification(config, interpolate_pos_encoding=True)
    interpolating.set_weights(model.get_weights())
    images, labels = batch(size=48)
    assert max_abs_diff(large(images)["logits"], interpolating(images)["logits"]) < 1e-5
    if not deit3:
        large.compile(keras.optimizers.Adam(1e-3))
        large.fit(images, labels, verbose=0)


# ---- 4. the recipe's tools ----------------------------------------------------------------------
def test_stochastic_depth_is_on_in_fit_and_off_in_predict():
    model = kd.DeiTForImageClassification(small_config(num_hidden_layers=2, drop_path_rate=0.5))
    images, labels = batch()
    first, second = model(images, training=True)["logits"], model(images, training=True)["logits"]
    assert max_abs_diff(first, second) > 1e-4
    inference = to_numpy(model(images)["logits"])
    for _ in range(2):
        assert max_abs_diff(model.predict(images, verbose=0)["logits"], inference) < 1e-5
    # Stochastic depth is the model's only randomness: with a zero learning rate, fit's loss
    # (training mode) differs from evaluate's, which equals the loss of the inference logits.
    model.compile(keras.optimizers.SGD(0.0))
    evaluated = model.evaluate(images, labels, verbose=0)
    assert abs(evaluated - np_cross_entropy(inference, labels)) < 1e-5
    assert abs(model.fit(images, labels, verbose=0).history["loss"][0] - evaluated) > 1e-4


@pytest.fixture
def policy(request):
    keras.mixed_precision.set_global_policy(request.param)
    try:
        yield request.param
    finally:
        keras.mixed_precision.set_global_policy("float32")


@pytest.mark.parametrize("policy", [
    "mixed_bfloat16", "mixed_float16",
], indirect=True)
def test_mixed_precision_trains_without_nan(policy):
    keras.mixed_precision.set_global_policy("float32")
    config = small_config(num_hidden_layers=2)
    reference = kd.DeiTForImageClassificationWithTeacher(config)
    images, labels = batch()
    expected = to_numpy(reference(images)["logits"])
    keras.mixed_precision.set_global_policy(policy)
    model = kd.DeiTForImageClassificationWithTeacher(config)
    model.set_weights(reference.get_weights())
    compute = policy.split("_")[1]
    assert all(keras.backend.standardize_dtype(v.dtype) == "float32" for v in model.weights)
    logits = model(images)["logits"]
    assert keras.backend.standardize_dtype(logits.dtype) == compute
    assert max_abs_diff(logits, expected) < (2e-2 if compute == "bfloat16" else 2e-3)
    model.compile(keras.optimizers.Adam(1e-2), metrics=["accuracy"])
    if compute == "float16":
        assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
    history = model.fit(images, labels, epochs=3, verbose=0).history["loss"]
    assert np.all(np.isfinite(history)) and history[-1] < history[0]
    predicted = to_numpy(model.predict(images, verbose=0)["logits"]).astype("float32")
    assert np.all(np.isfinite(predicted))


@pytest.mark.parametrize("policy", ["mixed_bfloat16", "mixed_float16"], indirect=True)
def test_layer_norm_and_softmax_run_in_float32(policy):
    compute = policy.split("_")[1]
    block = kd.DeiTLayer(32, 2, 64, layer_norm_eps=1e-6)
    # Values whose variance (~9e4) overflows float16 (max 65504): only a float32 LayerNorm
    # stays finite, and it matches the float32 result.
    x = np.random.RandomState(0).randn(2, 5, 32).astype("float32") * 300
    block.build(x.shape)
    normed = block.layernorm_before(x)
    assert keras.backend.standardize_dtype(normed.dtype) == compute
    keras.mixed_precision.set_global_policy("float32")
    reference = keras.layers.LayerNormalization(epsilon=1e-6)
    reference.build(x.shape)
    assert max_abs_diff(normed, reference(x)) < 2e-2
    # The explicit attention path keeps probabilities that sum to one per row.
    keras.mixed_precision.set_global_policy(policy)
    out, probs = block(x / 300, return_attention_scores=True)
    assert np.all(np.isfinite(to_numpy(out).astype("float32")))
    assert np.abs(to_numpy(probs).astype("float32").sum(-1) - 1).max() < 2e-2


def test_jit_compile():
    model = kd.DeiTForImageClassificationWithTeacher(small_config())
    images, labels = batch()
    model.compile(keras.optimizers.Adam(1e-2), metrics=["accuracy"], jit_compile=True)
    assert model.jit_compile
    history = model.fit(images, labels, epochs=3, verbose=0).history["loss"]
    assert history[-1] < history[0]
    assert max_abs_diff(model.predict(images, verbose=0)["logits"], model(images)["logits"]) < 1e-4


def test_deit_adamw_excludes_norms_biases_and_tokens():
    mim = kd.DeiTForMaskedImageModeling(small_config(layer_scale_init_value=0.1))
    student = kd.DeiTForImageClassificationWithTeacher(small_config())
    variables = mim.trainable_variables + student.trainable_variables
    for i, variable in enumerate(variables):  # Non-zero everywhere, so decay would show.
        variable.assign(np.full(variable.shape, 0.5 + i / 100, "float32"))
    before = [to_numpy(v) for v in variables]
    optimizer = deit_adamw(learning_rate=0.1, weight_decay=0.5)
    optimizer.build(variables)
    optimizer.apply([keras.ops.zeros(tuple(v.shape)) for v in variables], variables)
    tokens = {"cls_token", "distillation_token", "mask_token", "position_embeddings"}
    names = set()
    for variable, old in zip(variables, before):
        names.add(variable.name)
        # timm's rule: no decay on 1-D parameters and on the tokens / position embeddings.
        excluded = len(variable.shape) <= 1 or variable.name in tokens
        decayed = max_abs_diff(variable, old) > 0
        assert decayed != excluded, (variable.path, excluded)
        assert is_excluded_from_weight_decay(variable) == excluded, variable.path
    assert {"gamma", "beta", "kernel", "bias", "ls1", "mask_token"} <= names


_DATA_PARALLEL_SCRIPT = r"""
import json
import keras, numpy as np
import keras_deit as kd
devices = keras.distribution.list_devices("cpu")
distribution = keras.distribution.DataParallel(devices=devices)
keras.distribution.set_distribution(distribution)
keras.utils.set_random_seed(0)  # A fresh process: the autouse seed fixture does not reach it.
config = kd.DeiTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                       intermediate_size=64, image_size=32, patch_size=8, encoder_stride=8,
                       num_labels=5)
model = kd.DeiTForImageClassificationWithTeacher(config)
images = np.random.RandomState(0).rand(8, 32, 32, 3).astype("float32")
labels = np.arange(8) % 5
before = [np.array(v.value) for v in model.trainable_variables]
model.compile(keras.optimizers.Adam(1e-3))
loss_before = model.evaluate(images, labels, batch_size=4, verbose=0)
model.fit(images, labels, batch_size=4, epochs=5, shuffle=False, verbose=0)
loss_after = model.evaluate(images, labels, batch_size=4, verbose=0)
after = [np.array(v.value) for v in model.trainable_variables]
print(json.dumps(dict(
    devices=len(devices),
    losses=[loss_before, loss_after],
    changed=sum(not np.array_equal(a, b) for a, b in zip(before, after)),
    total=len(after),
    replicated=all(v.value.sharding.is_fully_replicated
                   and len(v.value.sharding.device_set) == len(devices) for v in model.variables),
    data_axes=list(distribution.get_data_layout((4, 32, 32, 3)).axes),
)))
"""


@pytest.mark.slow
def test_data_parallel_training_on_two_jax_devices():
    # A fresh process: the virtual devices must be requested before JAX is imported.
    env = dict(os.environ, KERAS_BACKEND="jax",
               XLA_FLAGS="--xla_force_host_platform_device_count=2")
    result = subprocess.run([sys.executable, "-c", _DATA_PARALLEL_SCRIPT], env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["devices"] == 2
    assert report["losses"][-1] < report["losses"][0]
    assert report["changed"] == report["total"]
    assert report["replicated"]
    assert report["data_axes"][0] == "batch" and set(report["data_axes"][1:]) == {None}


# ---- 5. bad input, caught before any step -------------------------------------------------------
@pytest.fixture
def compiled():
    model = kd.DeiTForImageClassificationWithTeacher(small_config())
    model.compile(keras.optimizers.Adam(1e-2))
    return model


@pytest.mark.parametrize("labels, message", [
    (np.array([0, 1, 7, 2]), r"\[0, 5\).*values \[7\].*num_labels=8"),
    (np.array([0, 1, -100, 2]), "ignore_index"),
    (np.eye(5, dtype="int64")[:4], "one-hot or multi-hot.*argmax"),
    (np.array([0.0, 1.0, 2.0, 3.0], "float32"), r"cast them to int"),
    (np.array([0, 1, 2]), "Got 4 images but 3 labels"),
    (np.full((4, 5), 2.0, "float32"), r"in \[0, 1\]"),
])
def test_bad_labels_raise_before_any_step(compiled, labels, message):
    images, _ = batch(4)
    weights = [to_numpy(w) for w in compiled.weights]
    with pytest.raises(ValueError, match=message):
        compiled.fit(images, labels, verbose=0)
    with pytest.raises(ValueError, match=message):
        compiled.evaluate(images, labels, verbose=0)
    with pytest.raises(ValueError, match=message):
        compiled.train_on_batch(images, labels)
    assert all(max_abs_diff(a, b) == 0 for a, b in zip(compiled.weights, weights))
    compiled.predict(images, verbose=0)  # The model is intact (JAX keeps its state).


def test_bad_validation_labels_and_dataset_specs(compiled):
    images, labels = batch(4)
    with pytest.raises(ValueError, match=r"values \[9\]"):
        compiled.fit(images, labels, validation_data=(images, np.array([0, 1, 9, 2])), verbose=0)
    tf = pytest.importorskip("tensorflow")
    dataset = tf.data.Dataset.from_tensor_slices((images, np.eye(5, dtype="int64")[:4])).batch(2)
    with pytest.raises(ValueError, match="one-hot or multi-hot"):
        compiled.fit(dataset, verbose=0)


def test_missing_labels_and_missing_loss_are_named():
    images, labels = batch(4)
    model = kd.DeiTForImageClassification(small_config())
    model.compile("adam")
    with pytest.raises(ValueError, match="trains on labels"):
        model.fit(images, verbose=0)
    backbone = kd.DeiTModel(small_config())
    backbone.compile("adam")
    with pytest.raises(ValueError, match="no task loss"):
        backbone.fit(images, labels, verbose=0)
    features = kd.DeiTForImageClassification(small_config(num_labels=0))
    features.compile("adam")
    with pytest.raises(ValueError, match="num_labels=0"):
        features.fit(images, labels, verbose=0)


def test_transferred_source_survives_training_the_target():
    """On JAX, fit() frees the arrays it replaces: the transfer must copy, not share them."""
    source = kd.DeiTForImageClassification(small_config())
    target = kd.DeiTForImageClassification(small_config())
    kd.transfer_backbone_weights(source, target)
    images = np.random.RandomState(0).rand(4, 32, 32, 3).astype("float32")
    expected = source.predict(images, verbose=0)["logits"]
    target.compile(keras.optimizers.SGD(0.1))
    target.fit(images, np.arange(4) % 5, epochs=1, verbose=0)
    assert max_abs_diff(source.predict(images, verbose=0)["logits"], expected) == 0.0
