"""The DeiT data recipe (`keras_deit.training.augmentation`): each transform's contract, and `fit` on the
tf.data pipeline, on the current backend."""

import numpy as np
import pytest
from keras import ops

import keras_deit as kd
from keras_deit.training import augmentation as aug


def numpy(x):
    return np.asarray(ops.convert_to_numpy(x))


def test_random_resized_crop_shapes_dtype_and_config():
    images = np.random.default_rng(0).integers(0, 256, (3, 40, 30, 3)).astype("uint8")
    crop = aug.RandomResizedCrop(16, 20, seed=1)
    out = numpy(crop(images))
    assert out.shape == (3, 16, 20, 3) and out.dtype == np.float32
    assert out.min() >= 0 and out.max() <= 255
    assert numpy(crop(images[0])).shape == (16, 20, 3)
    assert crop.compute_output_shape((None, 40, 30, 3)) == (None, 16, 20, 3)
    clone = aug.RandomResizedCrop.from_config(crop.get_config())
    assert clone.get_config() == crop.get_config()
    with pytest.raises(ValueError, match="scale=\\(0.5, 0.1\\)"):
        aug.RandomResizedCrop(8, 8, scale=(0.5, 0.1))


def _photo(height, width, seed=1):
    """A smooth pattern with mild noise, closer to a photograph than uniform noise is."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    image = np.stack([128 + 90 * np.sin(xx / 7.0) * np.cos(yy / 11.0), (xx * 0.6) % 256,
                      (yy * 0.8) % 256], -1)
    return np.clip(image + rng.normal(0, 6, image.shape), 0, 255).astype("uint8")


def test_random_resized_crop_of_the_whole_image_is_pil_bicubic():
    from PIL import Image

    image = _photo(40, 40)
    whole = aug.RandomResizedCrop(16, 16, scale=(1.0, 1.0), ratio=(1.0, 1.0))
    ours = numpy(whole(image[None].astype("float32")))[0]
    pil = np.asarray(Image.fromarray(image).resize((16, 16), Image.Resampling.BICUBIC), "float32")
    assert np.abs(ours - pil).max() <= 1.0  # PIL rounds to uint8
    same = aug.RandomResizedCrop(40, 40, scale=(1.0, 1.0), ratio=(1.0, 1.0))
    np.testing.assert_allclose(numpy(same(image.astype("float32"))), image, atol=1e-3)


@pytest.mark.parametrize("box", [(10, 20, 210, 170), (50, 40, 110, 90), (3, 7, 390, 290)])
def test_pil_bicubic_of_a_window_is_pil_crop_then_resize(box):
    # torchvision's resized_crop on PIL images: img.crop(box).resize(size, BICUBIC), shrinking
    # (antialiased) and enlarging.
    from PIL import Image

    image = _photo(300, 400)
    left, top, right, bottom = box
    pil = np.asarray(Image.fromarray(image).crop(box).resize((96, 96), Image.Resampling.BICUBIC),
                     "float32")
    window = image[None, top:bottom, left:right].astype("float32")
    ours = numpy(aug.pil_bicubic(ops, ops.convert_to_tensor(window), 96, 96))[0]
    assert np.abs(ours - pil).max() <= 4.0 and np.abs(ours - pil).mean() < 0.5


def test_crop_window_follows_scale_and_ratio_and_falls_back_to_the_centre():
    draws = np.random.default_rng(3).random((2000, 2 * aug.CROP_ATTEMPTS + 2)).astype("float32")
    top, left, h, w = (numpy(v).astype(float) for v in aug.crop_window(
        ops, np.full(2000, 64.0, "float32"), np.full(2000, 64.0, "float32"), draws))
    assert (top >= 0).all() and (left >= 0).all()
    assert (top + h <= 64).all() and (left + w <= 64).all()
    area, ratio = h * w / 64.0**2, w / h
    # Rounding the sides to pixels moves area and ratio a little beyond the draws' ranges.
    assert area.min() > 0.06 and area.max() <= 1.0
    assert ratio.min() > 0.7 and ratio.max() < 1.43
    assert 0.45 < area.mean() < 0.6  # uniform in (0.08, 1), less the draws that do not fit
    # A 10 x 100 strip fits no draw of scale (0.9, 1): the centre crop of ratio 4/3.
    window = aug.crop_window(ops, np.float32(10), np.float32(100), draws[0], scale=(0.9, 1.0))
    assert [int(numpy(v)) for v in window] == [0, 43, 10, 13]


def test_random_erasing_is_timms_box_and_unclipped_noise():
    erase = aug.random_erasing(seed=0)
    images = np.zeros((800, 16, 16, 3), "float32")
    out = numpy(erase(images))
    erased = np.abs(out).reshape(len(out), -1).max(-1) > 0
    assert abs(erased.mean() - 0.25) < 0.05
    boxes = out[erased] != 0
    area = boxes[..., 0].mean((1, 2))
    assert area.min() >= 0.01 and area.max() <= 1 / 3 + 0.05
    assert (boxes == boxes[..., :1]).all()  # every channel of the box
    noise = out[erased][boxes]
    assert abs(noise.std() - 1.0) < 0.05 and np.abs(noise).max() > 2.5  # N(0, 1), unclipped
    rows, cols = boxes[..., 0].any(2).sum(1), boxes[..., 0].any(1).sum(1)
    assert (rows < 16).all() and (cols < 16).all()  # timm: fits if h < H and w < W
    assert (rows * cols == boxes[..., 0].sum((1, 2))).all()  # one rectangle
    assert aug.RandomErasing.from_config(erase.get_config()).probability == 0.25


def test_deit_image_transform_is_a_function_of_its_seed():
    import tensorflow as tf

    transform = aug.DeiTImageTransform(24, [0.5] * 3, [0.5] * 3, seed=0)
    transform.augment = lambda image: image  # RandAugment draws from its own generator
    image = tf.constant(_photo(30, 40))
    seed = tf.constant([1, 2], tf.int64)
    top, left, h, w = (int(v) for v in transform.window(30, 40, seed))
    assert 0 <= top <= 30 - h and 0 <= left <= 40 - w
    window = image[top:top + h, left:left + w]
    first, again = transform(window, seed).numpy(), transform(window, seed).numpy()
    other = transform(window, tf.constant([1, 3], tf.int64)).numpy()
    assert first.shape == (24, 24, 3) and first.dtype == np.float32
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)


def test_rand_augment_is_timms_policy_at_deits_settings():
    policy = aug.rand_augment(seed=0)
    assert policy.get_config() == {"magnitude": 9.0, "magnitude_std": 0.5, "num_ops": 2,
                                   "seed": 0}
    image = np.arange(8 * 8 * 3, dtype="uint8").reshape(8, 8, 3)
    out = numpy(policy(image))
    assert out.shape == (8, 8, 3) and out.dtype == np.uint8


def test_smoothing_floor_and_rows():
    rows = numpy(aug.smooth_labels(np.array([0, 3]), 4, 0.1))
    np.testing.assert_allclose(rows, [[0.925, 0.025, 0.025, 0.025], [0.025, 0.025, 0.025, 0.925]],
                               rtol=1e-6)


def _batch(n=4, size=8, classes=5):
    rng = np.random.default_rng(2)
    return rng.normal(size=(n, size, size, 3)).astype("float32"), np.arange(n) % classes


def test_mixup_is_a_convex_pair_with_the_reversed_batch():
    images, labels = _batch()
    mix = aug.MixupCutmix(5, mixup_alpha=0.8, cutmix_alpha=0.0, seed=0)
    out = mix({"images": images, "labels": labels})
    targets = numpy(out["labels"])
    np.testing.assert_allclose(targets.sum(-1), 1.0, rtol=1e-5)
    assert targets.min() >= 0.1 / 5 - 1e-6
    lam = (targets[0, labels[0]] - 0.02) / 0.9  # on = 0.92, off = 0.02 for 5 classes
    np.testing.assert_allclose(numpy(out["images"]), lam * images + (1 - lam) * images[::-1],
                               atol=1e-5)


def test_cutmix_pastes_a_box_of_the_reversed_batch_with_its_area_as_lambda():
    images, labels = _batch(size=16)
    mix = aug.MixupCutmix(5, mixup_alpha=0.0, cutmix_alpha=1.0, label_smoothing=0.0, seed=4)
    for _ in range(3):
        out = mix({"images": images, "labels": labels})
        pasted = numpy(out["images"]) != images
        assert (numpy(out["images"])[pasted] == images[::-1][pasted]).all()
        lam = numpy(out["labels"])[0, labels[0]]
        np.testing.assert_allclose(pasted[0, ..., 0].mean(), 1 - lam, atol=1e-6)


def test_switch_probability_picks_cutmix_half_the_time():
    images, labels = _batch(n=4, size=8)
    mix = aug.MixupCutmix(5, seed=5)
    cutmix = 0
    for _ in range(60):
        out = numpy(mix({"images": images, "labels": labels})["images"])
        # cutmix leaves some pixels exactly as they were; mixup changes every pixel
        cutmix += bool((out == images).any())
    assert 18 <= cutmix <= 42


def test_repeated_augmentation_counts():
    import tensorflow as tf

    dataset = aug.repeated_augmentation(tf.data.Dataset.range(30), repeats=3, seed=0)
    assert int(dataset.cardinality()) == 30
    epochs = [[int(v) for v in dataset] for _ in range(2)]
    for epoch in epochs:
        assert len(epoch) == 30
        values, counts = np.unique(epoch, return_counts=True)
        assert len(values) == 10 and (counts == 3).all()
        assert all(len(set(epoch[i:i + 3])) == 1 for i in range(0, 30, 3))  # copies in a row
    assert epochs[0] != epochs[1]


def test_each_copy_gets_its_own_augmentation():
    import tensorflow as tf

    images = np.random.default_rng(6).integers(0, 256, (4, 24, 24, 3)).astype("uint8")
    crop = aug.RandomResizedCrop(12, 12, seed=7)
    dataset = aug.repeated_augmentation(tf.data.Dataset.from_tensor_slices(images), seed=1)
    outs = [np.asarray(x) for x in dataset.map(crop)]
    assert not np.allclose(outs[0], outs[1]) and not np.allclose(outs[1], outs[2])


def test_fit_on_the_deit_pipeline():
    images = np.random.default_rng(8).integers(0, 256, (24, 32, 32, 3)).astype("uint8")
    labels = np.arange(24) % 3
    dataset = aug.deit_train_dataset(images, labels, 3, 8, 32, [0.5] * 3, [0.5] * 3, seed=0)
    x, y = next(iter(dataset))
    assert tuple(x.shape) == (8, 32, 32, 3) and tuple(y.shape) == (8, 3)
    config = kd.DeiTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                           intermediate_size=64, image_size=32, patch_size=8, num_labels=3,
                           problem_type="single_label_classification")
    model = kd.DeiTForImageClassification(config)
    model.compile(optimizer=kd.deit_adamw(1e-3))
    history = model.fit(dataset, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])
