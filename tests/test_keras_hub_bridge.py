"""kd.to_keras_hub / kd.from_keras_hub: the same outputs in keras-hub's DeiT, and back."""

import warnings

import numpy as np
import pytest

import keras_deit as kd

keras_hub = pytest.importorskip("keras_hub")

TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
            image_size=32, patch_size=16, layer_norm_eps=1e-6, num_labels=3)


def _images(data_format="channels_last", batch=2):
    images = np.random.default_rng(0).normal(size=(batch, 32, 32, 3)).astype("float32")
    return images.transpose(0, 3, 1, 2) if data_format == "channels_first" else images


def _randomized(model):
    """`model` with every weight drawn at random, so that zeros cannot hide a missed tensor."""
    rng = np.random.default_rng(1)
    for variable in model.weights:
        variable.assign(rng.normal(scale=0.2, size=variable.shape).astype("float32"))
    return model


def _max_diff(a, b):
    return float(np.max(np.abs(np.asarray(a, "float64") - np.asarray(b, "float64"))))


@pytest.mark.parametrize("data_format", ["channels_last", "channels_first"])
def test_classifier_round_trip(data_format):
    ours = _randomized(kd.DeiTForImageClassification(kd.DeiTConfig(**TINY),
                                                     data_format=data_format))
    images = _images(data_format)
    hub = kd.to_keras_hub(ours)
    assert isinstance(hub, keras_hub.models.DeiTImageClassifier)
    expected = ours.predict(images, verbose=0)["logits"]
    assert _max_diff(hub.predict(images, verbose=0), expected) <= 1e-6
    back = kd.from_keras_hub(hub)
    assert type(back) is kd.DeiTForImageClassification and back.data_format == data_format
    for mine, theirs in zip(ours.weights, back.weights):
        assert mine.path == theirs.path
        np.testing.assert_array_equal(mine.numpy(), theirs.numpy())  # exact
    assert back.config.num_labels == 3 and back.config.layer_norm_eps == 1e-6


def test_backbone_both_directions():
    hub = keras_hub.models.DeiTBackbone(
        image_shape=(32, 32, 3), patch_size=16, num_layers=2, num_heads=2, hidden_dim=32,
        intermediate_dim=64,
    )
    _randomized(hub)
    images = _images()
    ours = kd.from_keras_hub(hub)
    assert type(ours) is kd.DeiTModel and not ours.add_pooling_layer
    expected = hub.predict(images, verbose=0)
    assert _max_diff(ours.predict(images, verbose=0)["last_hidden_state"], expected) <= 1e-6
    again = kd.to_keras_hub(ours)  # no pooler: no warning
    for mine, theirs in zip(hub.weights, again.weights):
        assert mine.path == theirs.path
        np.testing.assert_array_equal(mine.numpy(), theirs.numpy())


def test_pooler_is_dropped_with_a_warning():
    ours = kd.DeiTModel(kd.DeiTConfig(**TINY))
    with pytest.warns(UserWarning, match="no pooler"):
        hub = kd.to_keras_hub(ours)
    images = _images(batch=1)
    expected = ours.predict(images, verbose=0)["last_hidden_state"]
    assert _max_diff(hub.predict(images, verbose=0), expected) <= 1e-6


@pytest.mark.parametrize("build, match", [
    (lambda: kd.DeiTForImageClassificationWithTeacher(kd.DeiTConfig(**TINY)),
     "cannot hold the distillation head"),
    (lambda: kd.DeiTForImageClassification(kd.DeiTConfig(**TINY, use_distillation_token=False)),
     "use_distillation_token=False"),
    (lambda: kd.DeiTModel(kd.DeiTConfig(**TINY, layer_scale_init_value=1e-5),
                          add_pooling_layer=False), "LayerScale"),
    (lambda: kd.DeiTForMaskedImageModeling(kd.DeiTConfig(**TINY)), "DeiTForMaskedImageModeling"),
])
def test_what_keras_hub_cannot_hold_is_refused(build, match):
    model = build()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(ValueError, match=match):
            kd.to_keras_hub(model)


def test_keras_hub_classifier_that_is_not_ours_is_refused():
    backbone = keras_hub.models.DeiTBackbone(
        image_shape=(32, 32, 3), patch_size=16, num_layers=1, num_heads=2, hidden_dim=32,
        intermediate_dim=64,
    )
    classifier = keras_hub.models.DeiTImageClassifier(backbone, 3, pooling="gap")
    with pytest.raises(ValueError, match="pooling='gap'"):
        kd.from_keras_hub(classifier)
    with pytest.raises(ValueError, match="Received: str"):
        kd.from_keras_hub("deit")
