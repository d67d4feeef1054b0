"""DeiT's training recipe (facebookresearch/deit `main.py`), piece by piece, from Keras' own parts.

Here: the learning-rate rule and schedule; the data side is `keras_deit.augmentation`, the
command line `keras_deit.fine_tuning`. `DEIT_MAIN_DEFAULTS` holds the values of `main.py` that
those pieces take their defaults from, so the two are compared in one place (the README's
table lists every argument of `main.py` beside ours).
"""

import keras

# facebookresearch/deit `main.py` defaults that keras_deit uses (argument names with "_").
DEIT_MAIN_DEFAULTS = dict(
    lr=5e-4,  # for a total batch of 512; scaled linearly (`linear_scaled_lr` in main.py)
    warmup_lr=1e-6,
    min_lr=1e-5,
    warmup_epochs=5,
    weight_decay=0.05,
    drop_path=0.1,
    epochs=300,
    batch_size=64,  # per GPU; deit's paper runs 8 GPUs (a total of 512 at lr 5e-4)
    input_size=224,
    model_ema_decay=0.99996,
    aa="rand-m9-mstd0.5-inc1",
    train_interpolation="bicubic",
    smoothing=0.1,
    reprob=0.25,
    remode="pixel",
    recount=1,
    mixup=0.8,
    cutmix=1.0,
    mixup_prob=1.0,
    mixup_switch_prob=0.5,
    mixup_mode="batch",
    repeated_aug_repeats=3,  # RASampler(num_repeats=3) when --repeated-aug (the default)
    distillation_type="none",
    distillation_alpha=0.5,
    distillation_tau=1.0,
)

# main.py scales `lr` by the total batch over this.
REFERENCE_BATCH_SIZE = 512


def scaled_learning_rate(batch_size, base_learning_rate=DEIT_MAIN_DEFAULTS["lr"]):
    """DeiT's linear rule: `base_learning_rate * batch_size / 512` (batch over all devices).

    Args:
        batch_size: int > 0, the total batch size.
        base_learning_rate: float > 0, the rate for a batch of 512.

    Returns:
        A float.
    """
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size <= 0:
        raise ValueError(f"`batch_size` must be a positive int. Received: batch_size={batch_size!r}")
    return base_learning_rate * batch_size / REFERENCE_BATCH_SIZE


def deit_learning_rate_schedule(batch_size, steps_per_epoch, epochs,
                                base_learning_rate=DEIT_MAIN_DEFAULTS["lr"],
                                warmup_epochs=DEIT_MAIN_DEFAULTS["warmup_epochs"],
                                warmup_learning_rate=DEIT_MAIN_DEFAULTS["warmup_lr"],
                                min_learning_rate=DEIT_MAIN_DEFAULTS["min_lr"]):
    """Linear warmup from `warmup_learning_rate` to the scaled rate, then cosine decay to
    `min_learning_rate`, per step: Keras' `CosineDecay` with its warmup.

    deit steps timm's cosine scheduler once per epoch, and timm counts the cosine from epoch 0
    (warmup included) where Keras starts it after the warmup: over deit's 300 epochs the two
    curves are at most 1.5% of the peak apart (tests/test_recipe.py). deit also trains 10
    `cooldown_epochs` at `min_lr` after `epochs`; train longer at the end rate for that.

    Args:
        batch_size: int, the total batch size (sets the peak, see `scaled_learning_rate`).
        steps_per_epoch: int > 0, optimizer steps per epoch.
        epochs: int, the epochs of warmup plus decay; more than `warmup_epochs`.
        base_learning_rate: float, the rate for a batch of 512.
        warmup_epochs: int >= 0.
        warmup_learning_rate: float, the rate at step 0.
        min_learning_rate: float, the rate at the end of the decay.

    Returns:
        A `keras.optimizers.schedules.CosineDecay` (step -> float32 learning rate).
    """
    peak = scaled_learning_rate(batch_size, base_learning_rate)
    if not isinstance(steps_per_epoch, int) or steps_per_epoch <= 0:
        raise ValueError(
            f"`steps_per_epoch` must be a positive int. Received: steps_per_epoch={steps_per_epoch!r}"
        )
    if not isinstance(epochs, int) or not 0 <= warmup_epochs < epochs:
        raise ValueError(
            "`epochs` must be an int greater than `warmup_epochs` (the cosine needs at least one "
            f"epoch). Received: epochs={epochs!r}, warmup_epochs={warmup_epochs!r}"
        )
    warmup_steps = warmup_epochs * steps_per_epoch
    return keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=warmup_learning_rate if warmup_steps else peak,
        decay_steps=(epochs - warmup_epochs) * steps_per_epoch,
        # CosineDecay ends at alpha times its target: min_lr as a fraction of the peak.
        alpha=min_learning_rate / peak,
        warmup_target=peak if warmup_steps else None,
        warmup_steps=warmup_steps,
    )
