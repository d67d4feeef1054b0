"""DeiT's training recipe (facebookresearch/deit `main.py`), piece by piece, from Keras' own parts.

Here: the learning-rate rule and schedule; the data side is `keras_deit.training.augmentation`, the
command line `keras_deit.training.command`. `DEIT_MAIN_DEFAULTS` holds the values of `main.py` that
those pieces take their defaults from, so the two are compared in one place (the README's
table lists every argument of `main.py` beside ours).
"""

import dataclasses

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

# `keras-deit train --recipe` and `--distillation` (here, not in fine_tuning, so that the CLI
# checks them without importing Keras).
RECIPES = ("deit", "light")
DISTILLATION_CHOICES = ("hard", "soft", "none")

# main.py scales `lr` by the total batch over this.
REFERENCE_BATCH_SIZE = 512

# Fine-tuning a checkpoint that already holds trained weights, as transformers' image
# classification example sets it up (its Trainer: AdamW, batch 8, a few epochs, the
# checkpoint's own preprocessing): a fixed peak rate, not the paper's batch rule, since the
# rule is tuned for 300 epochs from scratch. 1e-4 where the Trainer says 5e-5: the head is
# new whenever the classes change (RESULTS.md, "Defaults that learn", measures both).
FINE_TUNE_DEFAULTS = dict(
    recipe="light",
    batch_size=8,
    epochs=10,
    lr=1e-4,
    warmup_epochs=1,
    warmup_lr=1e-6,
    min_lr=1e-6,
)


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
    return learning_rate_schedule(
        scaled_learning_rate(batch_size, base_learning_rate), steps_per_epoch, epochs,
        warmup_epochs, warmup_learning_rate, min_learning_rate)


def learning_rate_schedule(peak, steps_per_epoch, epochs, warmup_epochs, warmup_learning_rate,
                           min_learning_rate):
    """`deit_learning_rate_schedule` with the peak rate given as it is (no batch rule).

    Args:
        peak: float > 0, the rate after the warmup.
        Everything else as `deit_learning_rate_schedule`.

    Returns:
        A `keras.optimizers.schedules.CosineDecay`.
    """
    if not isinstance(peak, (int, float)) or isinstance(peak, bool) or not peak > 0:
        raise ValueError(f"the learning rate must be a number > 0. Received: {peak!r}")
    if not isinstance(steps_per_epoch, int) or steps_per_epoch <= 0:
        raise ValueError(
            f"`steps_per_epoch` must be a positive int. Received: steps_per_epoch={steps_per_epoch!r}"
        )
    if not isinstance(epochs, int) or not 0 <= warmup_epochs < epochs:
        raise ValueError(
            "`epochs` must be an int greater than `warmup_epochs` (the cosine needs at least one "
            f"epoch). Received: epochs={epochs!r}, warmup_epochs={warmup_epochs!r}"
        )
    import keras  # here: the CLI reads this module's defaults before a backend is chosen

    warmup_steps = warmup_epochs * steps_per_epoch
    return keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=warmup_learning_rate if warmup_steps else peak,
        decay_steps=(epochs - warmup_epochs) * steps_per_epoch,
        # CosineDecay ends at alpha times its target: min_lr as a fraction of the peak.
        alpha=min_learning_rate / peak,
        warmup_target=peak if warmup_steps else None,
        warmup_steps=warmup_steps,
    )


@dataclasses.dataclass(frozen=True)
class TrainingPlan:
    """What `keras-deit train` runs: the defaults of a fine-tune or of the paper, with the user's
    choices applied. `learning_rate` is the peak after the warmup (the batch rule applied)."""

    recipe: str
    batch_size: int
    epochs: int
    learning_rate: float
    learning_rate_rule: str
    warmup_epochs: int
    warmup_learning_rate: float
    min_learning_rate: float

    def schedule(self, steps_per_epoch):
        """The per-step `CosineDecay` of this plan."""
        return learning_rate_schedule(self.learning_rate, steps_per_epoch, self.epochs,
                                      self.warmup_epochs, self.warmup_learning_rate,
                                      self.min_learning_rate)

    def describe(self, steps_per_epoch):
        """One line for the start of a run."""
        warmup = (f"warm-up {self.warmup_epochs} epoch{'s' * (self.warmup_epochs != 1)} from "
                  f"{self.warmup_learning_rate:.3g}" if self.warmup_epochs else "no warm-up")
        return (f"recipe {self.recipe}, batch {self.batch_size}, {steps_per_epoch} "
                f"step{'s' * (steps_per_epoch != 1)} per epoch, {self.epochs} epoch{'s' * (self.epochs != 1)}, learning rate "
                f"{self.learning_rate:.3g} ({self.learning_rate_rule}), {warmup}, cosine to "
                f"{self.min_learning_rate:.3g}")


def training_plan(from_scratch, recipe=None, batch_size=None, epochs=None, learning_rate=None,
                  base_learning_rate=None, warmup_epochs=None):
    """The `TrainingPlan` of `keras-deit train`: `FINE_TUNE_DEFAULTS` for a checkpoint's trained
    weights, the paper's (`DEIT_MAIN_DEFAULTS`: the deit recipe, 5e-4 x batch / 512, 5 warm-up
    epochs, 300 epochs) `from_scratch`; any argument given replaces its default.

    Args:
        learning_rate: the peak rate as it is; or
        base_learning_rate: the rate for a batch of 512, scaled by `batch_size` (deit's rule).
            At most one of the two.
        warmup_epochs: capped at `epochs - 1` (the cosine needs an epoch).
    """
    if learning_rate is not None and base_learning_rate is not None:
        raise ValueError("pass a learning rate (--lr) or a rate per 512 images (--base-lr), not "
                         f"both. Received: {learning_rate!r} and {base_learning_rate!r}")
    defaults = DEIT_MAIN_DEFAULTS if from_scratch else FINE_TUNE_DEFAULTS
    recipe = recipe or ("deit" if from_scratch else FINE_TUNE_DEFAULTS["recipe"])
    batch_size = batch_size or defaults["batch_size"]
    epochs = epochs or defaults["epochs"]
    if learning_rate is None and base_learning_rate is None and from_scratch:
        base_learning_rate = DEIT_MAIN_DEFAULTS["lr"]
    if base_learning_rate is not None:
        peak = scaled_learning_rate(batch_size, base_learning_rate)
        rule = f"{base_learning_rate:.3g} x batch {batch_size} / {REFERENCE_BATCH_SIZE}"
    elif learning_rate is not None:
        peak, rule = learning_rate, "--lr"
    else:
        peak, rule = FINE_TUNE_DEFAULTS["lr"], "fine-tuning default"
    warmup = defaults["warmup_epochs"] if warmup_epochs is None else warmup_epochs
    return TrainingPlan(recipe, batch_size, epochs, float(peak), rule, min(warmup, epochs - 1),
                        defaults["warmup_lr"], min(defaults["min_lr"], float(peak)))
