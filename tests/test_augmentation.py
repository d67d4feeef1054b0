"""The DeiT data recipe (`keras_deit.augmentation`): each transform's contract, and `fit` on the
tf.data pipeline, on the current backend."""

import numpy as np
import pytest
from keras import ops

import keras_deit as kd
from keras_deit import augmentation as aug


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


def test_random_resized_crop_of_the_whole_image_is_pil_bicubic():
    from PIL import Image

    image = np.random.default_rng(1).integers(0, 256, (40, 40, 3)).astype("uint8")
    whole = aug.RandomResizedCrop(16, 16, scale=(1.0, 1.0), ratio=(1.0, 1.0))
    ours = numpy(whole(image[None].astype("float32")))[0]
    pil = np.asarray(Image.fromarray(image).resize((16, 16), Image.Resampling.BICUBIC), "float32")
    assert np.abs(ours - pil).max() <= 1.0  # PIL rounds to uint8
    same = aug.RandomResizedCrop(40, 40, scale=(1.0, 1.0), ratio=(1.0, 1.0))
    np.testing.assert_allclose(numpy(same(image.astype("float32"))), image, atol=1e-3)


def test_crop_boxes_follow_scale_and_ratio():
    crop = aug.RandomResizedCrop(8, 8, seed=3)
    top, left, h, w = (numpy(v) for v in crop._crop_boxes(2000, 64.0, 64.0))
    assert (top >= 0).all() and (left >= 0).all()
    assert (top + h <= 64).all() and (left + w <= 64).all()
    area, ratio = h * w / 64.0**2, w / h
    # Rounding the sides to pixels moves area and ratio a little beyond the draws' ranges.
    assert area.min() > 0.06 and area.max() <= 1.0
    assert ratio.min() > 0.7 and ratio.max() < 1.43
    assert 0.45 < area.mean() < 0.6  # uniform in (0.08, 1), less the draws that do not fit


def test_rand_augment_is_timms_policy_at_deits_settings():
    policy = aug.rand_augment(seed=0)
    assert policy.get_config() == {"magnitude": 9.0, "magnitude_std": 0.5, "num_ops": 2,
                                   "seed": 0}
    image = np.arange(8 * 8 * 3, dtype="uint8").reshape(8, 8, 3)
    out = numpy(policy(image))
    assert out.shape == (8, 8, 3) and out.dtype == np.uint8


def test_random_erasing_probability_and_noise():
    erase = aug.random_erasing(value_range=(-1.0, 1.0), seed=0)
    images = np.zeros((800, 8, 8, 3), "float32")
    out = numpy(erase(images))
    erased = np.abs(out).reshape(len(out), -1).max(-1) > 0
    assert abs(erased.mean() - 0.25) < 0.05
    assert out.min() >= -1.0 and out.max() <= 1.0


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
