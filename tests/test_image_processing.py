"""Tests of keras_deit.image_processing.

Parity tests compare with transformers' DeiT image processor (PIL backend) on
the two photographs shipped with scikit-learn (china.jpg, flower.jpg, 427x640).
"""

import json

import numpy as np
import PIL.Image
import pytest

from keras_deit.image_processing import (
    CONFIG_NAME,
    IMAGENET_DEFAULT_MEAN,
    IMAGENET_DEFAULT_STD,
    IMAGENET_STANDARD_MEAN,
    IMAGENET_STANDARD_STD,
    DeiTFeatureExtractor,
    DeiTImageProcessor,
)

IMAGENET = {"image_mean": IMAGENET_DEFAULT_MEAN, "image_std": IMAGENET_DEFAULT_STD}

# The preprocessor_config.json layout of the facebook/deit-* hub checkpoints.
HUB_CONFIG = {
    "crop_size": 224,
    "do_center_crop": True,
    "do_normalize": True,
    "do_resize": True,
    "feature_extractor_type": "DeiTFeatureExtractor",
    "image_mean": list(IMAGENET_DEFAULT_MEAN),
    "image_std": list(IMAGENET_DEFAULT_STD),
    "resample": 3,
    "size": 256,
}


@pytest.fixture(scope="module")
def photos():
    from sklearn.datasets import load_sample_images

    china, flower = load_sample_images().images
    return china, flower


def hf_processor_class():
    transformers = pytest.importorskip("transformers")
    # transformers >= 5 names its NumPy/PIL implementation DeiTImageProcessorPil
    # (DeiTImageProcessor needs torchvision there).
    return getattr(transformers, "DeiTImageProcessorPil", None) or transformers.DeiTImageProcessor


def hf_pixel_values(images, **kwargs):
    """transformers' output, (N, 3, H, W) float."""
    processor = hf_processor_class()(**kwargs)
    out = processor(images, return_tensors="np", data_format="channels_first")
    return np.asarray(out["pixel_values"])


def ours_pixel_values(images, **kwargs):
    processor = DeiTImageProcessor(data_format="channels_first", **kwargs)
    return processor(images, return_tensors="np")["pixel_values"]


def _rgba(image):
    # A horizontal alpha ramp from fully transparent to opaque.
    alpha = np.linspace(0, 255, image.shape[1]).astype(np.uint8)
    alpha = np.broadcast_to(alpha[None, :, None], image.shape[:2] + (1,))
    return np.concatenate([image, alpha], axis=-1)


def _gray(image):
    return np.asarray(PIL.Image.fromarray(image).convert("L"))


# Each case: photos -> (our input, transformers input, our kwargs, extra transformers kwargs).
PARITY_CASES = {
    "defaults": lambda c, f: (c, c, {}, {}),
    "deit_hub_imagenet": lambda c, f: (
        [c, f], [c, f], {"size": 256, "crop_size": 224, **IMAGENET}, {}
    ),
    "shortest_edge": lambda c, f: (
        [c, f.transpose(1, 0, 2)], [c, f.transpose(1, 0, 2)], {"size": {"shortest_edge": 256}}, {}
    ),
    "smaller_than_crop": lambda c, f: (c, c, {"size": {"height": 181, "width": 300}}, {}),
    "smaller_than_crop_no_resize": lambda c, f: (
        c[:181, :201], c[:181, :201], {"do_resize": False}, {}
    ),
    "grayscale_pil": lambda c, f: (
        PIL.Image.fromarray(_gray(c)), PIL.Image.fromarray(_gray(c)), {}, {"do_convert_rgb": True}
    ),
    "grayscale_2d": lambda c, f: (_gray(c), _gray(c)[..., None], {}, {"do_convert_rgb": True}),
    "grayscale_hw1": lambda c, f: (
        _gray(c)[..., None], _gray(c)[..., None], {}, {"do_convert_rgb": True}
    ),
    "rgba_pil": lambda c, f: (
        PIL.Image.fromarray(_rgba(c)), PIL.Image.fromarray(_rgba(c)), {}, {"do_convert_rgb": True}
    ),
    "rgba_numpy": lambda c, f: (_rgba(c), _rgba(c), {}, {"do_convert_rgb": True}),
    "numpy_hwc_uint8": lambda c, f: (c, c, IMAGENET, {}),
    "numpy_chw_uint8": lambda c, f: (c.transpose(2, 0, 1), c.transpose(2, 0, 1), IMAGENET, {}),
    "float_unit_range_no_rescale": lambda c, f: (
        c.astype(np.float32) / 255, c.astype(np.float32) / 255, {"do_rescale": False}, {}
    ),
    "list_of_images": lambda c, f: (
        [c, f, c[:300, :200], PIL.Image.fromarray(f)],
        [c, f, c[:300, :200], PIL.Image.fromarray(f)],
        {},
        {},
    ),
    "batch_array": lambda c, f: (np.stack([c, f]), np.stack([c, f]), IMAGENET, {}),
}


@pytest.mark.parametrize("case", sorted(PARITY_CASES))
def test_parity_with_transformers(photos, case):
    ours_input, hf_input, kwargs, hf_kwargs = PARITY_CASES[case](*photos)
    expected = hf_pixel_values(hf_input, **kwargs, **hf_kwargs)
    actual = ours_pixel_values(ours_input, **kwargs)
    assert actual.dtype == np.float32
    assert actual.shape == expected.shape
    assert np.abs(actual - expected).max() <= 1e-6


def test_channels_last_is_default_and_matches_channels_first(photos):
    china, flower = photos
    processor = DeiTImageProcessor(**IMAGENET)
    last = processor([china, flower])["pixel_values"]
    first = processor([china, flower], data_format="channels_first")["pixel_values"]
    assert last.shape == (2, 224, 224, 3) and first.shape == (2, 3, 224, 224)
    np.testing.assert_array_equal(last, first.transpose(0, 2, 3, 1))
    expected = hf_pixel_values([china, flower], **IMAGENET)
    assert np.abs(last - expected.transpose(0, 2, 3, 1)).max() <= 1e-6


def test_timm_recipe_resizes_shorter_side(photos):
    china, flower = photos
    processor = DeiTImageProcessor.from_timm_recipe(data_format="channels_first")
    assert processor.size == {"shortest_edge": 256}
    assert processor.crop_size == {"height": 224, "width": 224}
    assert processor.image_mean == list(IMAGENET_DEFAULT_MEAN)
    large = DeiTImageProcessor.from_timm_recipe(image_size=384, crop_pct=1.0)
    assert large.size == {"shortest_edge": 384}
    expected = hf_pixel_values([china, flower], size={"shortest_edge": 256}, **IMAGENET)
    actual = processor([china, flower])["pixel_values"]
    assert np.abs(actual - expected).max() <= 1e-6


def test_unstackable_outputs(photos):
    china, _ = photos
    images = [china, china[:300, :200]]
    processor = DeiTImageProcessor(size={"shortest_edge": 64}, do_center_crop=False)
    out = processor(images)["pixel_values"]
    assert [image.shape for image in out] == [(64, 95, 3), (96, 64, 3)]
    with pytest.raises(ValueError, match="different shapes"):
        processor(images, return_tensors="np")


# --- configuration files ------------------------------------------------------


def test_hub_config_load_matches_transformers(photos, tmp_path):
    (tmp_path / CONFIG_NAME).write_text(json.dumps(HUB_CONFIG))
    processor = DeiTImageProcessor.from_pretrained(tmp_path)
    assert processor.size == {"height": 256, "width": 256}
    assert processor.crop_size == {"height": 224, "width": 224}
    assert processor.extra_config == {"feature_extractor_type": "DeiTFeatureExtractor"}
    from_file = DeiTImageProcessor.from_pretrained(tmp_path / CONFIG_NAME)
    assert from_file.to_dict() == processor.to_dict()

    hf = hf_processor_class().from_pretrained(str(tmp_path))
    expected = np.asarray(hf(list(photos), return_tensors="np")["pixel_values"])
    actual = processor(list(photos), data_format="channels_first")["pixel_values"]
    assert np.abs(actual - expected).max() <= 1e-6


def test_save_and_load_round_trip(tmp_path):
    processor = DeiTImageProcessor.from_dict(
        {**HUB_CONFIG, "some_future_key": [1, 2]}, size={"shortest_edge": 232}
    )
    processor.save_pretrained(tmp_path / "out")
    saved = json.loads((tmp_path / "out" / CONFIG_NAME).read_text())
    assert saved["image_processor_type"] == "DeiTImageProcessor"
    assert saved["some_future_key"] == [1, 2]
    assert saved["feature_extractor_type"] == "DeiTFeatureExtractor"
    assert saved["size"] == {"shortest_edge": 232}
    assert saved["crop_size"] == {"height": 224, "width": 224}
    # The channels_last default is ours, not transformers': it stays out of the file.
    assert "data_format" not in saved
    reloaded = DeiTImageProcessor.from_pretrained(tmp_path / "out")
    assert reloaded.to_dict() == processor.to_dict()
    assert reloaded.data_format == "channels_last"

    first = DeiTImageProcessor(
        data_format="channels_first", do_convert_rgb=True, resample="bilinear"
    )
    first.save_pretrained(tmp_path / "first")
    reloaded = DeiTImageProcessor.from_json_file(tmp_path / "first" / CONFIG_NAME)
    assert reloaded.to_dict() == first.to_dict()
    assert reloaded.data_format == "channels_first"
    assert reloaded.do_convert_rgb is True and reloaded.resample == 2


def test_transformers_reads_our_config(photos, tmp_path):
    processor = DeiTImageProcessor(**IMAGENET)
    processor.save_pretrained(tmp_path)
    hf = hf_processor_class().from_pretrained(str(tmp_path))
    expected = np.asarray(hf(list(photos), return_tensors="np")["pixel_values"])
    actual = processor(list(photos), data_format="channels_first")["pixel_values"]
    assert np.abs(actual - expected).max() <= 1e-6


def test_defaults_match_transformers():
    ours = DeiTImageProcessor().to_dict()
    assert ours["size"] == {"height": 256, "width": 256}
    assert ours["crop_size"] == {"height": 224, "width": 224}
    assert ours["resample"] == int(PIL.Image.Resampling.BICUBIC)
    assert ours["rescale_factor"] == 1 / 255
    assert ours["image_mean"] == list(IMAGENET_STANDARD_MEAN)
    assert ours["image_std"] == list(IMAGENET_STANDARD_STD)
    hf = hf_processor_class()().to_dict()
    for key, value in ours.items():
        hf_value = hf[key]
        hf_value = list(hf_value) if isinstance(hf_value, tuple) else hf_value
        assert hf_value == value, key


def test_feature_extractor_alias_warns():
    with pytest.warns(FutureWarning, match="DeiTImageProcessor"):
        extractor = DeiTFeatureExtractor(size=224)
    assert isinstance(extractor, DeiTImageProcessor)
    assert extractor.to_dict()["image_processor_type"] == "DeiTImageProcessor"


# --- errors -----------------------------------------------------------------


@pytest.mark.parametrize(
    "images, match",
    [
        (np.zeros((8, 8, 5), np.uint8), "got 5|shape \\(8, 8, 5\\)"),
        (np.zeros((5, 8, 8), np.uint8), "shape \\(5, 8, 8\\)"),
        (np.zeros((2, 2, 8, 8, 3), np.uint8), "shape \\(2, 2, 8, 8, 3\\)"),
        (np.zeros(8, np.uint8), "shape \\(8,\\)"),
        ("cat.jpg", "str"),
        (42, "int"),
        ([], "empty"),
        ([np.zeros((8, 8, 3), np.uint8), "cat.jpg"], "Image 1 .*str"),
        (np.zeros((8, 8, 3), bool), "dtype bool"),
        (np.full((8, 8, 3), 1.5, np.float32), "1.5"),
    ],
)
def test_bad_images(images, match):
    with pytest.raises(ValueError, match=match):
        DeiTImageProcessor()(images)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"size": {"foo": 3}}, "foo"),
        ({"size": {"height": 0, "width": 3}}, "got 0"),
        ({"size": "large"}, "large"),
        ({"crop_size": {"shortest_edge": 3}}, "shortest_edge"),
        ({"resample": "cubic"}, "cubic"),
        ({"data_format": "NHWC"}, "NHWC"),
        ({"input_data_format": "NHWC"}, "NHWC"),
        ({"image_mean": "imagenet"}, "imagenet"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        DeiTImageProcessor(**kwargs)


def test_bad_call_and_source_arguments(tmp_path):
    image = np.zeros((8, 8, 3), np.uint8)
    with pytest.raises(ValueError, match="'pt'"):
        DeiTImageProcessor()(image, return_tensors="pt")
    with pytest.raises(ValueError, match="do_rezise"):
        DeiTImageProcessor()(image, do_rezise=False)
    with pytest.raises(ValueError, match="size.*foo"):
        DeiTImageProcessor()(image, size={"foo": 1})
    with pytest.raises(ValueError, match="facebook/deit-base-patch16-224"):
        DeiTImageProcessor.from_pretrained("facebook/deit-base-patch16-224")
    with pytest.raises(ValueError, match="No preprocessor_config.json"):
        DeiTImageProcessor.from_pretrained(tmp_path)
    gray = np.zeros((8, 8), np.uint8)
    with pytest.raises(ValueError, match="image_mean has 3 values .* 1 channels"):
        DeiTImageProcessor(do_convert_rgb=False)(gray)


# --- Keras layer --------------------------------------------------------------


@pytest.fixture(scope="module")
def keras():
    import keras

    return keras


def _to_numpy(keras, x):
    return keras.ops.convert_to_numpy(x)


@pytest.mark.parametrize("resample", ["bicubic", "bilinear"])
def test_layer_matches_processor_without_resize(keras, photos, resample):
    processor = DeiTImageProcessor(resample=resample, **IMAGENET)
    layer = processor.to_keras_layer()
    # Resized outside with the processor's own (Pillow) resize, so the layer skips it.
    batch = np.stack(
        [np.asarray(PIL.Image.fromarray(p).resize((256, 256), processor.resample)) for p in photos]
    )
    expected = processor(batch)["pixel_values"]
    for images in (batch, batch.astype("float32")):
        out = _to_numpy(keras, layer(images))
        assert out.dtype == np.float32 and out.shape == (2, 224, 224, 3)
        assert np.abs(out - expected).max() <= 1e-5


@pytest.mark.parametrize("resample", ["bicubic", "bilinear"])
def test_layer_close_to_processor_when_resizing(keras, photos, resample):
    processor = DeiTImageProcessor(resample=resample, **IMAGENET)
    batch = np.stack(photos)
    out = _to_numpy(keras, processor.to_keras_layer()(batch))
    # Not bit-identical with Pillow; measured about 0.003 on every backend.
    assert np.abs(out - processor(batch)["pixel_values"]).mean() < 0.02


def test_layer_in_model_with_varying_sizes(keras, photos):
    china, flower = photos
    batch = np.stack([china, flower])
    for processor in (DeiTImageProcessor(**IMAGENET), DeiTImageProcessor(do_resize=False)):
        inputs = keras.Input((None, None, 3), dtype="uint8")
        model = keras.Model(inputs, processor.to_keras_layer()(inputs))
        assert tuple(model.output.shape) == (None, 224, 224, 3)
        # Includes images smaller than the crop, zero-padded on both axes or one.
        for images in (batch, batch[:, :181, :201], batch[:, :300, :100]):
            out = model.predict(images, verbose=0)
            assert out.shape == (2, 224, 224, 3)
            assert np.abs(out - processor(images)["pixel_values"]).mean() < 0.02
            if not processor.do_resize:
                assert np.abs(out - processor(images)["pixel_values"]).max() <= 1e-5


def test_layer_maps_over_tf_data_on_every_backend(keras, photos):
    """Mapped over a `tf.data.Dataset` (before or after `batch`, images of mixed sizes), as
    Keras' own Resizing is: TensorFlow ops there, whatever the backend."""
    import tensorflow as tf

    processor = DeiTImageProcessor(**IMAGENET)
    layer = processor.to_keras_layer()
    china, flower = photos
    pictures = [china, flower[:300, :260]]  # two sizes: only single images can be mapped
    dataset = tf.data.Dataset.from_generator(
        lambda: iter(pictures), output_signature=tf.TensorSpec((None, None, 3), tf.uint8))
    out = np.stack([np.asarray(x) for x in dataset.map(layer)])
    assert out.shape == (2, 224, 224, 3) and out.dtype == np.float32
    assert np.abs(out - processor(pictures)["pixel_values"]).mean() < 0.02
    batched = tf.data.Dataset.from_tensor_slices(np.stack(photos)).batch(2).map(layer)
    out = np.asarray(next(iter(batched)))
    assert out.shape == (2, 224, 224, 3)
    assert np.abs(out - processor(np.stack(photos))["pixel_values"]).mean() < 0.02
    # One image outside tf.data too.
    assert tuple(_to_numpy(keras, layer(china)).shape) == (224, 224, 3)


def test_layer_shortest_edge(keras, photos):
    processor = DeiTImageProcessor.from_timm_recipe()
    layer = processor.to_keras_layer()
    portrait = np.ascontiguousarray(np.stack(photos).transpose(0, 2, 1, 3))
    for images in (np.stack(photos), portrait):
        out = _to_numpy(keras, layer(images))
        assert np.abs(out - processor(images)["pixel_values"]).mean() < 0.02


def test_layer_config_round_trip(keras):
    from keras_deit.layers.preprocessing import DeiTPreprocessing

    layer = DeiTPreprocessing(
        size={"shortest_edge": 256},
        crop_size=224,
        image_mean=IMAGENET_DEFAULT_MEAN,
        image_std=IMAGENET_DEFAULT_STD,
        interpolation="bilinear",
        name="prep",
    )
    config = layer.get_config()
    assert config["size"] == {"shortest_edge": 256}
    assert config["crop_size"] == {"height": 224, "width": 224}
    assert DeiTPreprocessing.from_config(config).get_config() == config
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(layer))
    assert isinstance(restored, DeiTPreprocessing)
    assert restored.get_config() == config

    disabled = DeiTPreprocessing(
        size=None, crop_size=None, rescale_factor=None, image_mean=None, image_std=None
    )
    disabled_config = disabled.get_config()
    assert DeiTPreprocessing.from_config(disabled_config).get_config() == disabled_config
    images = np.arange(2 * 5 * 7 * 3, dtype="uint8").reshape(2, 5, 7, 3)
    np.testing.assert_array_equal(_to_numpy(keras, disabled(images)), images.astype("float32"))


def test_layer_errors(keras):
    from keras_deit.layers.preprocessing import DeiTPreprocessing

    with pytest.raises(ValueError, match="lanczos"):
        DeiTImageProcessor(resample="lanczos").to_keras_layer()
    with pytest.raises(ValueError, match="nearest"):
        DeiTPreprocessing(interpolation="nearest")
    with pytest.raises(ValueError, match="image_std=None"):
        DeiTPreprocessing(image_std=None)
    with pytest.raises(ValueError, match="shape \\(5, 7\\)"):
        DeiTPreprocessing()(np.zeros((5, 7), "uint8"))


def test_layer_saved_in_keras_model(keras, photos, tmp_path):
    processor = DeiTImageProcessor(**IMAGENET)
    inputs = keras.Input((None, None, 3), dtype="uint8")
    model = keras.Model(inputs, processor.to_keras_layer(name="prep")(inputs))
    model.save(tmp_path / "prep.keras")
    restored = keras.saving.load_model(tmp_path / "prep.keras")
    batch = np.stack(photos)
    expected = model.predict(batch, verbose=0)
    np.testing.assert_allclose(restored.predict(batch, verbose=0), expected, atol=1e-6)


def test_layer_shortest_edge_in_tensorflow_graph_needs_known_size(keras):
    if keras.backend.backend() != "tensorflow":
        pytest.skip("only a TensorFlow graph has unknown image sizes")
    import tensorflow as tf

    layer = DeiTImageProcessor.from_timm_recipe().to_keras_layer()
    spec = tf.TensorSpec((None, None, None, 3), tf.uint8)
    with pytest.raises(ValueError, match="shortest_edge"):
        tf.function(layer, input_signature=[spec]).get_concrete_function()
    # A {"height", "width"} size works with unknown sizes.
    fixed = DeiTImageProcessor().to_keras_layer()
    graph = tf.function(fixed, input_signature=[spec]).get_concrete_function()
    assert graph.structured_outputs.shape.as_list() == [None, 224, 224, 3]


# ---- every Pillow mode reaches the model as the 8-bit RGB picture ---------------------------
def _picture():
    """A 48x40 colour picture of 216 colours (so a palette holds it exactly), and its gray."""
    rng = np.random.RandomState(7)
    blocks = rng.randint(0, 6, size=(6, 5, 3)) * 51
    rgb = np.kron(blocks, np.ones((8, 8, 1))).astype(np.uint8)
    return rgb, np.asarray(PIL.Image.fromarray(rgb).convert("L"))


def _saved(tmp_path, image, name, **options):
    path = tmp_path / name
    image.save(path, **options)
    return str(path)


def _palette_image(rgb):
    colours, index = np.unique(rgb.reshape(-1, 3), axis=0, return_inverse=True)
    image = PIL.Image.fromarray(index.reshape(rgb.shape[:2]).astype(np.uint8), "P")
    image.putpalette(colours.astype(np.uint8).ravel().tolist())
    return image


def _variants(tmp_path):
    """(name, file in that mode, the 8-bit file of the same picture)."""
    rgb, gray = _picture()
    rgb8 = _saved(tmp_path, PIL.Image.fromarray(rgb), "rgb8.png")
    gray8 = _saved(tmp_path, PIL.Image.fromarray(gray), "gray8.png")
    wide = gray.astype(np.uint16) * 257  # 8-bit value v is 16-bit v * 257
    other = np.full_like(rgb, 255)
    frames = [_palette_image(rgb), _palette_image(other)]
    rgba = np.concatenate([rgb, np.full(rgb.shape[:2] + (1,), 255, np.uint8)], -1)
    return [
        ("I;16 png", _saved(tmp_path, PIL.Image.fromarray(wide), "gray16.png"), gray8),
        ("I tiff", _saved(tmp_path, PIL.Image.fromarray(wide.astype(np.int32), "I"), "i.tif"),
         gray8),
        ("F tiff", _saved(tmp_path, PIL.Image.fromarray(gray.astype(np.float32) / 255), "f.tif"),
         gray8),
        ("L png", gray8, gray8),
        ("LA png", _saved(tmp_path, PIL.Image.fromarray(gray).convert("LA"), "la.png"), gray8),
        ("P png", _saved(tmp_path, _palette_image(rgb), "p.png"), rgb8),
        ("CMYK tiff", _saved(tmp_path, PIL.Image.fromarray(rgb).convert("CMYK"), "cmyk.tif"),
         rgb8),
        ("RGBA png", _saved(tmp_path, PIL.Image.fromarray(rgba), "rgba.png"), rgb8),
        ("animated gif", _saved(tmp_path, frames[0], "anim.gif", save_all=True,
                                append_images=frames[1:], duration=100), rgb8),
    ]


def test_every_mode_loads_as_the_8_bit_picture(tmp_path):
    from keras_deit.image_processing import load_image

    for name, path, reference in _variants(tmp_path):
        with PIL.Image.open(reference) as ref:
            expected = np.asarray(ref.convert("RGB"))
        loaded = load_image(path)
        assert loaded.mode == "RGB", name
        np.testing.assert_array_equal(np.asarray(loaded), expected, err_msg=name)


def test_every_mode_gives_the_8_bit_pixel_values_in_memory(tmp_path):
    """The processor fed the opened image (not a file path) sees the same numbers."""
    processor = DeiTImageProcessor(size={"height": 32, "width": 32}, do_center_crop=False)
    for name, path, reference in _variants(tmp_path):
        with PIL.Image.open(path) as image, PIL.Image.open(reference) as ref:
            got = processor(image)["pixel_values"]
            want = processor(ref.convert("RGB"))["pixel_values"]
        np.testing.assert_array_equal(got, want, err_msg=name)


def test_transparency_is_composited_on_white(tmp_path):
    from keras_deit.image_processing import load_image

    rgb, _ = _picture()
    alpha = np.zeros(rgb.shape[:2] + (1,), np.uint8)
    alpha[:, :20] = 255
    path = _saved(tmp_path, PIL.Image.fromarray(np.concatenate([rgb, alpha], -1)), "half.png")
    loaded = np.asarray(load_image(path))
    np.testing.assert_array_equal(loaded[:, :20], rgb[:, :20])
    assert (loaded[:, 20:] == 255).all()


def test_image_files_that_are_refused(tmp_path, monkeypatch):
    from keras_deit.image_processing import load_image

    with pytest.raises(ValueError, match="is a folder, not an image"):
        load_image(str(tmp_path))
    with pytest.raises(FileNotFoundError, match="no such image"):
        load_image(str(tmp_path / "missing.png"))
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG not really")
    with pytest.raises(ValueError, match="cannot read .*broken.png as an image"):
        load_image(str(broken))
    # A decompression bomb, made small by lowering the limit instead of writing a huge file.
    path = _saved(tmp_path, PIL.Image.new("L", (64, 64)), "bomb.png")
    for limit in (64 * 64 // 2 - 1, 64 * 64 - 1):  # the error, and the warning band below it
        monkeypatch.setattr(PIL.Image, "MAX_IMAGE_PIXELS", limit)
        with pytest.raises(ValueError, match="decompression bomb"):
            load_image(path)
