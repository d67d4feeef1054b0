"""The four models: options, outputs, saving, and weights across backends."""

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest

import keras_deit as kd
from helpers import HF, max_abs_diff, tiny_config, to_numpy

MODELS = [
    kd.DeiTModel,
    kd.DeiTForImageClassification,
    kd.DeiTForImageClassificationWithTeacher,
    kd.DeiTForMaskedImageModeling,
]


def _feed(model, images):
    if isinstance(model.input, dict):
        masked = np.zeros((images.shape[0], model.config.num_patches), bool)
        masked[:, ::3] = True
        return {"pixel_values": images, "bool_masked_pos": masked}
    return images


@pytest.mark.parametrize("cls", MODELS, ids=lambda c: c.__name__)
def test_keras_saving_round_trip(cls, config, images, tmp_path):
    model = cls(config, output_hidden_states=True)
    feed = _feed(model, images)
    expected = model(feed)
    path = str(tmp_path / "model.keras")
    model.save(path)
    restored = keras.saving.load_model(path)
    assert type(restored) is cls and restored.config == config
    assert restored.output_hidden_states
    out = restored(feed)
    assert set(out) == set(expected)
    for key in expected:
        if key != "hidden_states":
            assert max_abs_diff(out[key], expected[key]) == 0.0, key


def test_output_keys_and_shapes(config, images):
    out = kd.DeiTModel(config, output_hidden_states=True, output_attentions=True)(images)
    assert set(out) == {"last_hidden_state", "pooler_output", "hidden_states", "attentions"}
    assert tuple(out["last_hidden_state"].shape) == (2, 18, 48)
    assert len(out["hidden_states"]) == 3 and len(out["attentions"]) == 2
    out = kd.DeiTModel(config, add_pooling_layer=False)(images)
    assert set(out) == {"last_hidden_state"}
    out = kd.DeiTForImageClassificationWithTeacher(config)(images)
    assert max_abs_diff(out["logits"], (to_numpy(out["cls_logits"]) + to_numpy(out["distillation_logits"])) / 2) < 1e-6


def test_non_distilled_and_deit3_variants(images):
    vit = kd.DeiTForImageClassification(tiny_config(use_distillation_token=False))
    assert tuple(vit(images)["logits"].shape) == (2, 5)
    deit3 = kd.DeiTModel(tiny_config(use_distillation_token=False, class_token_position_embedding=False,
                                     layer_scale_init_value=1e-6))
    assert tuple(deit3.embeddings.position_embeddings.shape) == (1, 16, 48)
    assert tuple(deit3(images)["last_hidden_state"].shape) == (2, 17, 48)


def test_zero_labels_gives_features_as_logits(images):
    model = kd.DeiTForImageClassification(tiny_config(num_labels=0))
    assert tuple(model(images)["logits"].shape) == (2, 48)


def test_head_mask_changes_only_masked_heads(images):
    config = tiny_config()
    full = kd.DeiTModel(config, output_attentions=True)
    masked = kd.DeiTModel(config, output_attentions=True, head_mask=[[1, 0, 1], [1, 1, 1]])
    masked.set_weights(full.get_weights())
    a, b = full(images)["attentions"][0], masked(images)["attentions"][0]
    assert np.all(to_numpy(b)[:, 1] == 0)
    assert max_abs_diff(to_numpy(a)[:, 0], to_numpy(b)[:, 0]) == 0.0


def test_interpolation_accepts_any_divisible_size(config):
    model = kd.DeiTForImageClassificationWithTeacher(config, interpolate_pos_encoding=True)
    for size in [(32, 32), (48, 40), (16, 64)]:
        x = np.random.rand(1, *size, 3).astype("float32")
        assert tuple(model(x)["logits"].shape) == (1, 5)
    fixed = kd.DeiTForImageClassificationWithTeacher(config)
    fixed.set_weights(model.get_weights())
    x = np.random.rand(1, 32, 32, 3).astype("float32")
    assert max_abs_diff(fixed(x)["logits"], model(x)["logits"]) < 1e-6


def test_predict_and_base_model_reuse(config, images):
    model = kd.DeiTForImageClassificationWithTeacher(config)
    predicted = model.predict(images, verbose=0)
    assert max_abs_diff(predicted["logits"], model(images)["logits"]) < 1e-5
    assert isinstance(model.deit, kd.DeiTModel)
    features = model.deit(images)["last_hidden_state"]
    assert tuple(features.shape) == (2, 18, 48)


_CROSS_BACKEND_SCRIPT = """
import json, sys, numpy as np, keras
import keras_deit as kd
path, kind, images_path = sys.argv[1:4]
images = np.load(images_path)
if kind == "weights":
    config = kd.DeiTConfig.from_json(path + ".config.json")
    model = kd.DeiTForImageClassificationWithTeacher(config)
    model.load_weights(path)
else:
    model = keras.saving.load_model(path)
print(json.dumps(np.asarray(keras.ops.convert_to_numpy(model(images)["logits"])).tolist()))
"""


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["weights", "keras"])
def test_files_saved_on_this_backend_load_on_the_others(kind, config, images, tmp_path):
    model = kd.DeiTForImageClassificationWithTeacher(config)
    expected = to_numpy(model(images)["logits"])
    np.save(tmp_path / "images.npy", images)
    if kind == "weights":
        path = str(tmp_path / "model.weights.h5")
        model.save_weights(path)
        config.to_json(path + ".config.json")
    else:
        path = str(tmp_path / "model.keras")
        model.save(path)
    for backend in {"tensorflow", "jax", "torch"} - {keras.backend.backend()}:
        env = dict(os.environ, KERAS_BACKEND=backend)
        result = subprocess.run(
            [sys.executable, "-c", _CROSS_BACKEND_SCRIPT, path, kind, str(tmp_path / "images.npy")],
            env=env, capture_output=True, text=True, timeout=300,
        )
        assert result.returncode == 0, result.stderr[-2000:]
        logits = np.array(json.loads(result.stdout.strip().splitlines()[-1]), "float32")
        assert np.abs(logits - expected).max() < 1e-5, backend


def test_pretrained_model_keeps_its_config(tmp_path):
    model = kd.DeiTForImageClassificationWithTeacher.from_pretrained(os.path.join(HF, "with_teacher"))
    assert model.config.layer_norm_eps == 1e-12 and model.config.num_labels == 5
    path = str(tmp_path / "m.keras")
    model.save(path)
    assert keras.saving.load_model(path).config == model.config


def test_from_config_keeps_trainable_false(config):
    model = kd.DeiTForImageClassificationWithTeacher(config)
    model.trainable = False
    clone = kd.DeiTForImageClassificationWithTeacher.from_config(model.get_config())
    assert not clone.trainable and clone.trainable_weights == []
