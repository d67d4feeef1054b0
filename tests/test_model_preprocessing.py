"""`include_preprocessing`: models that take uint8 images of any size, with the checkpoint's
resize / crop / normalize inside the graph."""

import json
import os
import shutil
import warnings

import keras
import numpy as np
import pytest

import keras_deit as kd
from keras_deit import export as ex

WITH_TEACHER = os.path.join(os.path.dirname(__file__), "data", "hf", "with_teacher")
BACKEND = keras.backend.backend()
# The hub configs' layout ({"height", "width"} resize), at the fixtures' 32px.
PREPROCESSOR = {"do_resize": True, "size": {"height": 36, "width": 36}, "resample": 3,
                "do_center_crop": True, "crop_size": {"height": 32, "width": 32},
                "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True,
                "image_mean": list(kd.IMAGENET_DEFAULT_MEAN),
                "image_std": list(kd.IMAGENET_DEFAULT_STD)}


def _images(size, batch=2, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (batch, *size, 3)).astype("uint8")


def _max_abs(a, b):
    return float(np.max(np.abs(np.asarray(a, "float64") - np.asarray(b, "float64"))))


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """The distilled 32px fixture with a preprocessor_config.json beside it."""
    folder = tmp_path_factory.mktemp("with_preprocessor") / "checkpoint"
    shutil.copytree(WITH_TEACHER, folder)
    (folder / "preprocessor_config.json").write_text(json.dumps(PREPROCESSOR))
    return str(folder)


@pytest.fixture(scope="module")
def models(checkpoint):
    """(the model with preprocessing inside, the plain model, the checkpoint's processor)."""
    cls = kd.DeiTForImageClassificationWithTeacher
    return (cls.from_pretrained(checkpoint, include_preprocessing=True),
            cls.from_pretrained(checkpoint), kd.DeiTImageProcessor.from_pretrained(checkpoint))


def test_predict_on_raw_images_equals_processor_then_model(models):
    inside, plain, processor = models
    assert inside.input.dtype == "uint8" and tuple(inside.input.shape) == (None, None, None, 3)
    assert inside.include_preprocessing["size"] == {"height": 36, "width": 36}
    for size, tolerance in (((36, 36), 1e-5), ((45, 60), 1e-2)):
        images = _images(size)
        expected = plain.predict(processor(images)["pixel_values"], verbose=0)["logits"]
        # At the resize size the resize is skipped: equal to float32 rounding. At other sizes
        # keras.ops.image.resize and Pillow round some pixels one level apart.
        assert _max_abs(inside.predict(images, verbose=0)["logits"], expected) <= tolerance


def test_saves_and_loads_as_one_keras_file(models, tmp_path):
    inside, _, _ = models
    path = str(tmp_path / "raw.keras")
    inside.save(path)
    loaded = keras.saving.load_model(path)
    assert loaded.get_config() == inside.get_config()
    images = _images((40, 52))
    np.testing.assert_allclose(loaded.predict(images, verbose=0)["logits"],
                               inside.predict(images, verbose=0)["logits"], rtol=0, atol=1e-6)


def test_constructor_option_and_channels_first():
    config = kd.DeiTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                           intermediate_size=64, image_size=32, patch_size=16, num_labels=3)
    model = kd.DeiTForImageClassification(config, include_preprocessing=True)
    # True: transformers' processor defaults at the config's size.
    assert model.include_preprocessing["crop_size"] == {"height": 32, "width": 32}
    assert model.include_preprocessing["size"] == {"height": 36, "width": 36}
    first = kd.DeiTForImageClassification(config, data_format="channels_first",
                                          include_preprocessing=True)
    first.set_weights(model.get_weights())
    images = _images((36, 36))  # raw images stay channels-last
    assert _max_abs(first.predict(images, verbose=0)["logits"],
                    model.predict(images, verbose=0)["logits"]) <= 1e-6
    backbone = kd.DeiTModel(config, include_preprocessing=model.include_preprocessing)
    assert backbone.predict(images, verbose=0)["last_hidden_state"].shape == (2, 6, 32)


def test_a_model_without_it_warns_once_on_uint8_images(models):
    _, plain, _ = models
    images = _images((32, 32))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        plain.predict(images, verbose=0)
        plain.predict(images, verbose=0)
    named = [w for w in caught if "include_preprocessing=True" in str(w.message)]
    assert len(named) == 1


def test_a_model_without_it_warns_once_on_float_0_255_images(checkpoint):
    plain = kd.DeiTForImageClassificationWithTeacher.from_pretrained(checkpoint)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        plain.predict(_images((32, 32)).astype("float32") / 255.0 * 2 - 1, verbose=0)  # fine
        plain.predict(_images((32, 32)).astype("float32"), verbose=0)
        plain.predict(_images((32, 32)).astype("float32"), verbose=0)
    named = [str(w.message) for w in caught if "include_preprocessing=True" in str(w.message)]
    assert len(named) == 1 and "float images of 0-255 pixel values" in named[0]


@pytest.mark.parametrize("method", ["fit", "evaluate", "predict"])
def test_a_model_without_it_warns_on_a_dataset_of_float_0_255_images(checkpoint, method):
    """What `keras.utils.image_dataset_from_directory` yields: float32 batches of 0-255 pixels.
    The first batch is read as it flows, the dataset is not iterated ahead of Keras."""
    import tensorflow as tf

    plain = kd.DeiTForImageClassificationWithTeacher.from_pretrained(checkpoint)
    plain.compile(optimizer="sgd")
    labels = np.zeros((4,), "int32")
    normalised = tf.data.Dataset.from_tensor_slices(
        (_images((32, 32), 4).astype("float32") / 255.0 * 2 - 1, labels)).batch(2)
    raw = tf.data.Dataset.from_tensor_slices(
        (_images((32, 32), 4).astype("float32"), labels)).batch(2)
    if method == "predict":
        normalised, raw = (d.map(lambda x, y: x) for d in (normalised, raw))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        getattr(plain, method)(normalised, verbose=0)
        assert not [w for w in caught if "include_preprocessing=True" in str(w.message)]
        getattr(plain, method)(raw, verbose=0)
        getattr(plain, method)(raw, verbose=0)
    named = [str(w.message) for w in caught if "include_preprocessing=True" in str(w.message)]
    assert len(named) == 1 and "float images of 0-255 pixel values" in named[0]


def test_from_pretrained_of_a_trained_keras_file_with_preprocessing(models, tmp_path):
    """`keras-deit train`'s output (a .keras file beside its preprocessor_config.json) loads
    with include_preprocessing=True, taking raw images."""
    _, plain, processor = models
    plain.save(str(tmp_path / "model.keras"))
    processor.save_pretrained(str(tmp_path))
    cls = kd.DeiTForImageClassificationWithTeacher
    inside = cls.from_pretrained(str(tmp_path / "model.keras"), include_preprocessing=True)
    assert inside.input.dtype == "uint8"
    images = _images((36, 36))
    expected = plain.predict(processor(images)["pixel_values"], verbose=0)["logits"]
    assert _max_abs(inside.predict(images, verbose=0)["logits"], expected) <= 1e-5
    with pytest.raises(ValueError, match=r"takes no options but include_preprocessing.*"
                                         r"\['num_labels'\]"):
        cls.from_pretrained(str(tmp_path / "model.keras"), num_labels=2)
    # A resize to the model's size without a crop (the train command's digits processor).
    resize_only = kd.DeiTImageProcessor(size={"height": 32, "width": 32}, do_center_crop=False)
    model = cls.from_pretrained(str(tmp_path / "model.keras"), include_preprocessing=resize_only)
    assert model.predict(_images((50, 40)), verbose=0)["logits"].shape == (2, 5)


def test_bad_options_and_inputs_are_one_line(models):
    inside, _, _ = models
    config = inside.config
    with pytest.raises(ValueError, match="crop to the model's image size"):
        kd.DeiTModel(config, include_preprocessing=kd.DeiTImageProcessor())  # crops 224
    with pytest.raises(ValueError, match="cannot include the preprocessing"):
        kd.DeiTForMaskedImageModeling(config, include_preprocessing=True)
    with pytest.raises(ValueError, match=r"uint8 images, channels-last.*shape=\(2, 3, 36, 36\)"):
        inside.predict(np.zeros((2, 3, 36, 36), "uint8"), verbose=0)


def test_exports_to_saved_model_and_tflite(models, tmp_path):
    inside, _, _ = models
    saved_model, tflite = ex.export_models(
        inside, [(tmp_path / "sm", "saved_model", None), (tmp_path / "m.tflite", "tflite", None)],
    )
    assert saved_model.inputs == {"images": ((None, None, None, 3), "uint8")}
    assert tflite.inputs == {"images": ((None, 36, 36, 3), "uint8")}
    assert saved_model.verification.max_abs <= 1e-5 and tflite.verification.max_abs <= 1e-4
    images = _images((36, 36), seed=3)
    expected = inside.predict(images, verbose=0)["logits"]
    assert _max_abs(ex.run_saved_model(saved_model.path, images)["logits"], expected) <= 1e-5
    assert _max_abs(ex.run_tflite(tflite.path, images)["logits"], expected) <= 1e-4


def test_from_pretrained_without_preprocessor_config_uses_the_deit_recipe():
    model = kd.DeiTForImageClassificationWithTeacher.from_pretrained(
        WITH_TEACHER, include_preprocessing=True
    )
    recipe = kd.DeiTImageProcessor.from_timm_recipe(image_size=32)
    assert model.include_preprocessing == recipe.to_dict()
    plain = kd.DeiTForImageClassificationWithTeacher.from_pretrained(WITH_TEACHER)
    # One image size: a {"shortest_edge"} resize in a TensorFlow graph needs a known size.
    images = _images((36, 36))
    expected = plain.predict(recipe(images)["pixel_values"], verbose=0)["logits"]
    assert _max_abs(model.predict(images, verbose=0)["logits"], expected) <= 1e-5


def test_cli_predict_gives_raw_images_to_such_a_model(models, tmp_path, capsys):
    import PIL.Image

    from keras_deit.cli import main

    inside, plain, processor = models
    path = str(tmp_path / "raw.keras")
    inside.save(path)
    photo = str(tmp_path / "photo.png")
    PIL.Image.fromarray(_images((36, 36), batch=1)[0]).save(photo)
    assert main(["predict", photo, "--model", path, "--top-k", "1"]) == 0
    logits = plain.predict(processor(PIL.Image.open(photo))["pixel_values"], verbose=0)["logits"]
    best = int(np.argmax(logits[0]))
    assert f"1. {inside.config.id2label[best]}  " in capsys.readouterr().out.splitlines()[1]


def test_cli_export_of_such_a_model_takes_raw_images(models, tmp_path, capsys):
    from keras_deit.cli import main

    inside, _, _ = models
    path = str(tmp_path / "raw.keras")
    inside.save(path)
    output = str(tmp_path / "sm")
    assert main(["export", path, "--format", "saved_model", output]) == 0
    assert "verified" in capsys.readouterr().out
    images = _images((36, 36), seed=5)
    expected = inside.predict(images, verbose=0)["logits"]
    assert _max_abs(ex.run_saved_model(output, images)["logits"], expected) <= 1e-5
