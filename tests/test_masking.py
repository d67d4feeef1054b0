"""SimMIM: the mask generator (numpy and tf.data), `fit` with the SimMIM loss, and moving the
pre-trained encoder into a classifier."""

import math

import keras
import numpy as np
import pytest

import keras_deit as kd
from helpers import max_abs_diff, small_config, to_numpy
from keras_deit.masking import MaskGenerator
from keras_deit.training.fine_tuning import transfer_backbone_weights


def check_masks(masks, generator):
    """Exact count of masked blocks, each block constant over the model patches it covers."""
    rows, cols = generator.coarse_grid
    scale = generator.scale
    grid = masks.reshape(-1, rows * scale, cols * scale)
    blocks = grid.reshape(-1, rows, scale, cols, scale)
    assert np.all(blocks == blocks[:, :, :1, :, :1])
    coarse = blocks[:, :, 0, :, 0].reshape(len(masks), -1)
    assert np.all(coarse.sum(1) == generator.mask_count)


@pytest.mark.parametrize("input_size, mask_patch, patch, ratio", [
    (32, 16, 8, 0.6),   # 2x2 blocks of 2x2 patches: ceil(4 * 0.6) = 3 blocks
    (192, 32, 4, 0.6),  # SimMIM's ViT setting: 36 blocks, 22 masked
    ((48, 64), 16, 8, 0.5),
    (32, 8, 8, 0.0),
    (32, 8, 8, 1.0),
])
def test_numpy_masks_follow_simmim(input_size, mask_patch, patch, ratio):
    generator = MaskGenerator(input_size, mask_patch, patch, ratio, seed=0)
    blocks = generator.block_count
    assert generator.mask_count == math.ceil(blocks * ratio)
    one = generator()
    assert one.shape == (generator.num_patches,) and one.dtype == bool
    masks = generator(batch_size=16)
    assert masks.shape == (16, generator.num_patches)
    check_masks(masks, generator)
    again = MaskGenerator(input_size, mask_patch, patch, ratio, seed=0)
    again()
    assert np.array_equal(again(batch_size=16), masks)  # Seeded: the same draws.
    if 0 < generator.mask_count < blocks:
        assert len({m.tobytes() for m in masks}) > 1  # ... and the draws vary.


def test_tf_data_pipeline_masks():
    tf = pytest.importorskip("tensorflow")
    generator = MaskGenerator(32, 16, 8, 0.6, seed=1)
    images = np.random.RandomState(0).rand(12, 32, 32, 3).astype("float32")

    def masks_of(dataset):
        return np.concatenate([b["bool_masked_pos"].numpy() for b in dataset])

    per_image = tf.data.Dataset.from_tensor_slices(images).map(generator.tf_map_fn()).batch(4)
    masks = masks_of(per_image)
    assert masks.shape == (12, 16) and masks.dtype == bool
    check_masks(masks, generator)
    again = tf.data.Dataset.from_tensor_slices(images).map(generator.tf_map_fn()).batch(4)
    assert np.array_equal(masks_of(again), masks)
    batched = tf.data.Dataset.from_tensor_slices((images, np.arange(12))).batch(4)
    inputs, labels = next(iter(batched.map(generator.tf_map_fn())))
    assert inputs["bool_masked_pos"].shape == (4, 16) and labels.shape == (4,)
    check_masks(inputs["bool_masked_pos"].numpy(), generator)


def test_bad_generator_settings_are_named():
    with pytest.raises(ValueError, match="divisible by `mask_patch_size`"):
        MaskGenerator(40, 16, 8)
    with pytest.raises(ValueError, match="multiple of the model patch size 8"):
        MaskGenerator(48, 12, 8)
    with pytest.raises(ValueError, match="mask_ratio"):
        MaskGenerator(32, 16, 8, 1.5)
    generator = MaskGenerator.from_config(small_config(), mask_patch_size=16, mask_ratio=0.5)
    assert generator.num_patches == small_config().num_patches


def test_fit_with_simmim_loss_then_transfer_the_encoder():
    config = small_config()
    mim = kd.DeiTForMaskedImageModeling(config)
    images = np.random.RandomState(0).rand(8, 32, 32, 3).astype("float32")
    masks = MaskGenerator.from_config(config, mask_patch_size=16, seed=0)(batch_size=8)
    inputs = {"pixel_values": images, "bool_masked_pos": masks}
    mim.compile(keras.optimizers.Adam(1e-2))
    reconstruction = mim(inputs)["reconstruction"]
    expected = kd.masked_image_modeling_loss(images, reconstruction, masks, 8)
    assert abs(mim.evaluate(inputs, batch_size=8, verbose=0) - float(to_numpy(expected))) < 1e-5
    history = mim.fit(inputs, epochs=3, batch_size=4, verbose=0).history["loss"]
    assert history[-1] < history[0]

    # The trained encoder goes into a classifier; the mask token stays behind.
    classifier = kd.DeiTForImageClassification(config)
    report = transfer_backbone_weights(mim.deit, classifier.deit)
    assert report.skipped == ["embeddings/mask_token"] and not report.missing
    assert len(report.copied) == len(classifier.deit.weights)
    unmasked = {"pixel_values": images, "bool_masked_pos": np.zeros_like(masks)}
    assert max_abs_diff(classifier.deit(images)["last_hidden_state"],
                        mim.deit(unmasked)["last_hidden_state"]) == 0
    # Whole models: the decoder is skipped and the classifier left as initialized.
    whole = transfer_backbone_weights(mim, kd.DeiTForImageClassification(config))
    assert set(whole.skipped) == {"embeddings/mask_token", "decoder/dense/kernel", "decoder/dense/bias"}
    assert set(whole.missing) == {"classifier/kernel", "classifier/bias"}


def test_fit_on_a_tf_data_pipeline_and_transfer_across_sizes():
    tf = pytest.importorskip("tensorflow")
    config = small_config()
    mim = kd.DeiTForMaskedImageModeling(config)
    images = np.random.RandomState(0).rand(8, 32, 32, 3).astype("float32")
    generator = MaskGenerator.from_config(config, mask_patch_size=16, seed=0)
    dataset = tf.data.Dataset.from_tensor_slices(images).batch(4).map(generator.tf_map_fn())
    mim.compile(keras.optimizers.Adam(1e-3))
    assert np.isfinite(mim.fit(dataset, epochs=1, shuffle=False, verbose=0).history["loss"][0])
    # Into a classifier at 48 px: position embeddings are resampled to the 6x6 grid.
    large = kd.DeiTForImageClassification(config.replace(image_size=48))
    report = transfer_backbone_weights(mim, large)
    assert report.resampled == ["embeddings/position_embeddings"]
    with pytest.raises(ValueError, match="resample=True"):
        transfer_backbone_weights(mim, large, resample=False)


def test_wrong_mask_size_raises_before_any_step():
    mim = kd.DeiTForMaskedImageModeling(small_config())
    mim.compile("adam")
    images = np.zeros((2, 32, 32, 3), "float32")
    weights = [to_numpy(w) for w in mim.weights]
    for masks in (np.zeros((2, 64), bool), np.zeros((3, 16), bool), np.zeros((2, 4, 4), bool)):
        with pytest.raises(ValueError, match=r"bool_masked_pos.*\(2, 16\).*MaskGenerator"):
            mim.fit({"pixel_values": images, "bool_masked_pos": masks}, verbose=0)
    with pytest.raises(ValueError, match="takes a dict"):
        mim.fit(images, verbose=0)
    with pytest.raises(ValueError, match="shape of `pixel_values`"):
        mim.fit({"pixel_values": images, "bool_masked_pos": np.zeros((2, 16), bool)},
                np.zeros((2, 16, 16, 3), "float32"), verbose=0)
    assert all(max_abs_diff(a, b) == 0 for a, b in zip(mim.weights, weights))
