"""The DeiT recipe's pieces (`keras_deit.training.recipe`) against facebookresearch/deit `main.py`."""

import numpy as np
import pytest

from helpers import to_numpy
from keras_deit.training.recipe import (
    DEIT_MAIN_DEFAULTS,
    FINE_TUNE_DEFAULTS,
    deit_learning_rate_schedule,
    scaled_learning_rate,
    training_plan,
)


def test_defaults_are_deit_main_py():
    assert DEIT_MAIN_DEFAULTS == dict(
        lr=5e-4, warmup_lr=1e-6, min_lr=1e-5, warmup_epochs=5, weight_decay=0.05, drop_path=0.1,
        epochs=300, batch_size=64, input_size=224, model_ema_decay=0.99996,
        aa="rand-m9-mstd0.5-inc1", train_interpolation="bicubic", smoothing=0.1, reprob=0.25,
        remode="pixel", recount=1, mixup=0.8, cutmix=1.0, mixup_prob=1.0, mixup_switch_prob=0.5,
        mixup_mode="batch", repeated_aug_repeats=3, distillation_type="none",
        distillation_alpha=0.5, distillation_tau=1.0)


def test_learning_rate_scales_linearly_with_the_batch():
    assert scaled_learning_rate(512) == 5e-4
    assert scaled_learning_rate(1024) == 1e-3
    assert scaled_learning_rate(64, base_learning_rate=1e-3) == 1.25e-4
    with pytest.raises(ValueError, match="batch_size=0"):
        scaled_learning_rate(0)


def timm_cosine(epoch, epochs=300, warmup=5, lr=5e-4, warmup_lr=1e-6, min_lr=1e-5):
    """timm's CosineLRScheduler as deit's main.py sets it up (per epoch, no warmup prefix)."""
    if epoch < warmup:
        return warmup_lr + epoch * (lr - warmup_lr) / warmup
    return min_lr + 0.5 * (lr - min_lr) * (1 + np.cos(np.pi * epoch / epochs))


def test_schedule_warms_up_then_decays_to_min_lr():
    schedule = deit_learning_rate_schedule(batch_size=256, steps_per_epoch=10, epochs=20)
    rate = lambda step: float(to_numpy(schedule(step)))  # noqa: E731
    peak = 2.5e-4
    assert abs(rate(0) - 1e-6) < 1e-12
    assert abs(rate(25) - (1e-6 + (peak - 1e-6) / 2)) < 1e-9  # halfway through the warmup
    assert abs(rate(50) - peak) < 1e-9
    assert abs(rate(125) - (1e-5 + (peak - 1e-5) / 2)) < 1e-9  # halfway through the cosine
    assert abs(rate(200) - 1e-5) < 1e-9
    assert abs(rate(10_000) - 1e-5) < 1e-9  # stays at the end rate
    # deit's own curve (timm, per epoch) over its 300 epochs, at batch 512.
    deit = deit_learning_rate_schedule(batch_size=512, steps_per_epoch=1, epochs=300)
    # Every 10th epoch and the end of the warmup: a call per step of all 300 costs a minute of
    # dispatch on JAX (a schedule takes one step at a time).
    epochs = sorted(set(range(0, 300, 10)) | {4, 5, 6})
    gap = max(abs(float(to_numpy(deit(e))) - timm_cosine(e)) for e in epochs)
    assert gap < 0.015 * 5e-4


def test_schedule_arguments_are_checked():
    with pytest.raises(ValueError, match="steps_per_epoch=0"):
        deit_learning_rate_schedule(512, 0, 10)
    with pytest.raises(ValueError, match="epochs=5, warmup_epochs=5"):
        deit_learning_rate_schedule(512, 10, 5)


def test_training_plan_fine_tune_and_from_scratch_defaults():
    fine = training_plan(from_scratch=False)
    assert (fine.recipe, fine.batch_size, fine.epochs, fine.learning_rate, fine.warmup_epochs) == (
        "light", 8, 10, 1e-4, 1)
    assert fine.describe(7) == (
        "recipe light, batch 8, 7 steps per epoch, 10 epochs, learning rate 0.0001 (fine-tuning "
        "default), warm-up 1 epoch from 1e-06, cosine to 1e-06")
    scratch = training_plan(from_scratch=True)
    assert (scratch.recipe, scratch.batch_size, scratch.epochs, scratch.warmup_epochs) == (
        "deit", 64, 300, 5)
    assert scratch.learning_rate == scaled_learning_rate(64) == 6.25e-5
    assert "learning rate 6.25e-05 (0.0005 x batch 64 / 512)" in scratch.describe(3)
    assert scratch.min_learning_rate == 1e-5 and FINE_TUNE_DEFAULTS["min_lr"] == 1e-6


def test_training_plan_takes_the_users_choices():
    plan = training_plan(from_scratch=False, recipe="deit", batch_size=32, epochs=3,
                         base_learning_rate=1e-3, warmup_epochs=5)
    assert (plan.recipe, plan.batch_size, plan.learning_rate) == ("deit", 32, 1e-3 * 32 / 512)
    assert plan.warmup_epochs == 2  # the cosine keeps one epoch
    assert "no warm-up" in training_plan(False, epochs=1).describe(1)
    assert training_plan(True, learning_rate=3e-4).learning_rate == 3e-4
    with pytest.raises(ValueError, match="not both"):
        training_plan(False, learning_rate=1e-4, base_learning_rate=5e-4)
    schedule = training_plan(False, epochs=4).schedule(steps_per_epoch=2)
    assert abs(float(to_numpy(schedule(2))) - 1e-4) < 1e-9  # the peak after the warm-up (float32)
