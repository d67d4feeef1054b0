"""timm's RandAugment in TensorFlow ops (`keras_deit.training.rand_augment`): every op against timm's own
output (tests/data/timm_augment, see /work/shared/fixtures/README.md), the policy's statistics
against timm's (policy_stats.json, made by make_policy_stats.py there), and the bad inputs.
TensorFlow ops on every Keras backend."""

import json
import os

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")

from keras_deit.training import augmentation as aug  # noqa: E402
from keras_deit.training.rand_augment import OP_NAMES, RandAugment  # noqa: E402

DATA = os.path.join(os.path.dirname(__file__), "data", "timm_augment")
FIXTURE = np.load(os.path.join(DATA, "rand_augment_ops.npz"))
IMAGES = FIXTURE["images"]  # (3, 96, 128, 3) uint8
CASES = sorted(key for key in FIXTURE.files if key not in ("images", "index"))
GEOMETRIC = ("Rotate", "ShearX", "ShearY", "TranslateXRel", "TranslateYRel")


def _run_case(case):
    name, magnitude, sign = case.split("|")
    out = aug.rand_augment_op(IMAGES, name, float(magnitude), int(sign))
    return name, np.abs(np.asarray(out).astype(int) - FIXTURE[case].astype(int))


def test_the_fixture_covers_every_op():
    assert {case.split("|")[0] for case in CASES} == set(OP_NAMES) and len(OP_NAMES) == 15


@pytest.mark.parametrize("case", CASES)
def test_op_matches_timm(case):
    name, diff = _run_case(case)
    if name in GEOMETRIC:  # bicubic resampling: float rounding may move a truncation
        assert diff.mean() <= 1.0, diff.mean()
        assert (diff > 8).mean() <= 0.01, (diff > 8).mean()
    else:
        assert (diff <= 1).mean() >= 0.999, (diff <= 1).mean()
        assert diff.max() <= 3, diff.max()


def test_an_op_on_a_batch_is_the_op_on_each_image():
    batch = np.asarray(aug.rand_augment_op(IMAGES, "Equalize", 9))
    single = np.asarray(aug.rand_augment_op(IMAGES[1], "Equalize", 9))
    assert batch.shape == IMAGES.shape and batch.dtype == np.uint8
    np.testing.assert_array_equal(batch[1], single)


def _policy_changes(policy, draws):
    """(draws x 3,) mean absolute change of each augmented image, in tf.data."""
    dataset = tf.data.Dataset.from_tensor_slices(IMAGES).repeat(draws)
    dataset = dataset.map(lambda image: (image, policy(image)),
                          num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return np.array([np.abs(out.astype(int) - image).mean()
                     for image, out in dataset.as_numpy_iterator()])


def test_policy_statistics_match_timms():
    with open(os.path.join(DATA, "policy_stats.json")) as f:
        timm = json.load(f)
    changes = _policy_changes(aug.rand_augment(seed=0), draws=200)
    n = len(changes)
    # 4 standard errors (timm's per-draw spreads): Keras' RandAugment was at 0.0 and ~69.
    unchanged = (changes == 0).mean()
    assert abs(unchanged - timm["unchanged_share"]) < 4 * timm["unchanged_std"] / n**0.5, \
        unchanged
    assert abs(changes.mean() - timm["mean_change"]) < 4 * timm["change_std"] / n**0.5, \
        changes.mean()


def test_policy_is_seeded_and_round_trips_its_config():
    first, second = RandAugment(seed=3), RandAugment(seed=3)
    outs = [[np.asarray(policy(IMAGES[i % 3])) for i in range(6)] for policy in (first, second)]
    for a, b in zip(*outs):
        np.testing.assert_array_equal(a, b)
    config = RandAugment(magnitude=5, magnitude_std=1.0, num_ops=3, seed=7).get_config()
    assert RandAugment.from_config(config).get_config() == config
    assert config == {"magnitude": 5.0, "magnitude_std": 1.0, "num_ops": 3, "seed": 7}


@pytest.mark.parametrize("call, match", [
    (lambda: aug.rand_augment_op(IMAGES, "Cutout", 5), "name='Cutout'"),
    (lambda: aug.rand_augment_op(IMAGES, "Rotate", 11), "magnitude=11"),
    (lambda: aug.rand_augment_op(IMAGES, "Rotate", -0.5), "magnitude=-0.5"),
    (lambda: aug.rand_augment_op(IMAGES.astype("float32"), "Rotate", 5), "dtype=float32"),
    (lambda: aug.rand_augment_op(IMAGES, "Rotate", 5, sign=0), "sign=0"),
    (lambda: aug.rand_augment(num_ops=0), "num_ops=0"),
    (lambda: aug.rand_augment(magnitude=12), "magnitude=12"),
    (lambda: aug.rand_augment(seed=0)(IMAGES[0].astype("float32")), "dtype=float32"),
])
def test_bad_input_names_the_received_value(call, match):
    with pytest.raises(ValueError, match=match):
        call()
