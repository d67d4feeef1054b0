"""Does DeiT's distillation help at small scale? A tiny DeiT on scikit-learn's digits.

Data: `sklearn.datasets.load_digits` (1797 8x8 images, values 0-16, 10 classes), a fixed
stratified 70/30 train/test split (seed 0). Each image becomes uint8 grayscale
(`round(v * 255 / 16)`, white ink on black) and is preprocessed by `DeiTImageProcessor`:
resize to 32x32 with NEAREST interpolation, no crop, x/255, normalize with mean = std = 0.5,
RGB. Nearest (not bicubic) is chosen so that a digit saved as a nearest-upscaled PNG (the
bundled 64x64 examples) goes through the same processor to exactly the same tensor as the
in-memory 8x8 image: the shipped preprocessor_config.json reproduces training bit for bit.

Protocol: a small Keras CNN teacher is trained once; then the same small DeiT student
(`DeiTForImageClassificationWithTeacher`, distillation token on) is trained from scratch with
`DeiTDistiller` for `distillation_type` "none", "soft" and "hard", several seeds each, with
the same epochs, optimizer (`deit_adamw`, warmup + cosine), batch and augmentation (random
shifts of up to `--shift` pixels, new every epoch; the teacher sees the same augmented images,
as in the paper). Hyper-parameters of the distillation terms are the paper's: hard alpha 0.5;
soft alpha 0.1, tau 3.0.

Which prediction is scored: soft / hard students predict with the averaged `logits` of both
heads (the paper's inference). With "none" the distillation head never receives a gradient
(facebookresearch/deit), so that student is scored on its class head (`cls_logits`), the
prediction of a DeiT trained without distillation; the table also lists each head alone.

Run (about 11 minutes on 2 shared CPU cores with JAX):

    KERAS_BACKEND=jax python benchmarks/distillation_experiment.py --save keras_deit/data

`--save DIR` writes the best distilled student (the distilled setting with the best mean, and
its best seed on the test split) to DIR/deit_digits/ (model.keras, preprocessor_config.json)
and 10 test-split digits (the first of each class) as 64x64 PNGs to DIR/examples/.
"""

import argparse
import os
import sys
import time

import numpy as np

os.environ.setdefault("KERAS_BACKEND", "jax")

import keras  # noqa: E402

import keras_deit as kd  # noqa: E402
from keras_deit.training.distillation import DeiTDistiller  # noqa: E402
from keras_deit.training.fine_tuning import deit_adamw  # noqa: E402

IMAGE_SIZE = 32
EXAMPLE_SIZE = 64
NUM_CLASSES = 10
SETTINGS = {  # distillation_type -> DeiTDistiller arguments (the paper's values)
    "none": dict(distillation_type="none"),
    "soft": dict(distillation_type="soft", alpha=0.1, tau=3.0),
    "hard": dict(distillation_type="hard", alpha=0.5),
}


# ---- data -------------------------------------------------------------------------------------
def digits_to_uint8(pixels):
    """(n, 64) or (n, 8, 8) digits values 0-16 -> (n, 8, 8) uint8 grayscale."""
    pixels = np.asarray(pixels, "float64").reshape(-1, 8, 8)
    return np.round(pixels * (255.0 / 16.0)).astype(np.uint8)


def example_png(image8):
    """A (8, 8) uint8 digit as a nearest-upscaled 64x64 grayscale PIL image."""
    from PIL import Image

    return Image.fromarray(image8).resize((EXAMPLE_SIZE, EXAMPLE_SIZE), Image.Resampling.NEAREST)


def image_processor():
    """The preprocessing of training, evaluation and the shipped model."""
    return kd.DeiTImageProcessor(
        do_resize=True, size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}, resample="nearest",
        do_center_crop=False, crop_size=IMAGE_SIZE, do_rescale=True, rescale_factor=1 / 255,
        do_normalize=True,
        image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5],
    )


def preprocess(images8, processor=None):
    """(n, 8, 8) uint8 -> (n, 32, 32, 3) float32, through the image processor."""
    processor = processor or image_processor()
    rgb = [np.repeat(image[..., None], 3, axis=-1) for image in images8]
    return processor(rgb, return_tensors="np")["pixel_values"]


def load_split(seed=0, test_size=0.3):
    """Stratified split of the digits: (train_idx, test_idx, images8, labels)."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    labels = digits.target.astype("int32")
    train_idx, test_idx = train_test_split(np.arange(len(labels)), test_size=test_size,
                                           stratify=labels, random_state=seed)
    return train_idx, test_idx, digits_to_uint8(digits.images), labels


def shift(images, rng, max_shift, background):
    """Each image moved by a random (dy, dx) in [-max_shift, max_shift], background fill."""
    n, h, w, _ = images.shape
    padded = np.pad(images, ((0, 0), (max_shift,) * 2, (max_shift,) * 2, (0, 0)),
                    constant_values=background)
    out = np.empty_like(images)
    offsets = rng.integers(0, 2 * max_shift + 1, size=(n, 2))
    for i, (dy, dx) in enumerate(offsets):
        out[i] = padded[i, dy:dy + h, dx:dx + w]
    return out


# ---- models -----------------------------------------------------------------------------------
def cnn_teacher():
    """A small CNN: its convolutional bias is what the student is meant to inherit."""
    layers = keras.layers
    return keras.Sequential([
        keras.Input((IMAGE_SIZE, IMAGE_SIZE, 3)),
        # Stride 2 first: the 32x32 inputs are 4x-upscaled 8x8 digits, so little is lost.
        layers.Conv2D(32, 3, strides=2, padding="same", use_bias=False),
        layers.BatchNormalization(momentum=0.9), layers.ReLU(),
        layers.Conv2D(64, 3, padding="same", use_bias=False),
        layers.BatchNormalization(momentum=0.9), layers.ReLU(), layers.MaxPooling2D(),
        layers.Conv2D(64, 3, padding="same", use_bias=False),
        layers.BatchNormalization(momentum=0.9), layers.ReLU(), layers.GlobalAveragePooling2D(),
        layers.Dense(NUM_CLASSES),
    ], name="cnn_teacher")


def student_config(args):
    return kd.DeiTConfig(
        hidden_size=args.hidden, num_hidden_layers=args.layers, num_attention_heads=args.heads,
        intermediate_size=2 * args.hidden, image_size=IMAGE_SIZE, patch_size=args.patch,
        encoder_stride=args.patch, layer_norm_eps=1e-6, drop_path_rate=0.1,
        use_distillation_token=True, id2label={i: str(i) for i in range(NUM_CLASSES)},
    )


def optimizer(args, steps_per_epoch):
    total = args.epochs * steps_per_epoch
    warmup = max(1, total // 10)
    schedule = keras.optimizers.schedules.CosineDecay(
        0.0, decay_steps=total - warmup, warmup_target=args.lr, warmup_steps=warmup, alpha=0.01)
    return deit_adamw(schedule, weight_decay=args.weight_decay)


def fit_augmented(model, x, y, args, seed):
    """`args.epochs` epochs, freshly shifted images each epoch (same stream for every model of
    a seed, so settings differ only in the loss)."""
    rng = np.random.default_rng(seed)
    background = float(x.min())  # pixel value 0 after normalization
    for epoch in range(args.epochs):
        xa = shift(x, rng, args.shift, background) if args.shift else x
        model.fit(xa, y, batch_size=args.batch, epochs=epoch + 1, initial_epoch=epoch,
                  shuffle=True, verbose=0)


def accuracy(logits, labels):
    return float(np.mean(np.argmax(np.asarray(logits), -1) == labels))


# ---- experiment -------------------------------------------------------------------------------
def train_teacher(x, y, x_test, y_test, args):
    keras.utils.set_random_seed(1000)
    teacher = cnn_teacher()
    teacher.compile(optimizer(args, -(-len(x) // args.batch)),
                    keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    fit_augmented(teacher, x, y, args, seed=1000)
    return teacher, accuracy(teacher.predict(x_test, verbose=0), y_test)


def train_student(setting, seed, teacher, x, y, x_test, y_test, args):
    keras.utils.set_random_seed(seed)
    student = kd.DeiTForImageClassificationWithTeacher(student_config(args))
    distiller = DeiTDistiller(student, teacher, **SETTINGS[setting])
    distiller.compile(optimizer(args, -(-len(x) // args.batch)))
    fit_augmented(distiller, x, y, args, seed)
    out = student.predict(x_test, batch_size=256, verbose=0)
    heads = {key: accuracy(out[key], y_test) for key in ("logits", "cls_logits",
                                                        "distillation_logits")}
    heads["score"] = heads["cls_logits" if setting == "none" else "logits"]
    return student, heads


def stats(values):
    v = 100 * np.asarray(values)
    return v.mean(), v.std(ddof=1) if len(v) > 1 else 0.0, v.min(), v.max()


def table(results, teacher_acc):
    rows = ["| setting | test accuracy % (mean ± std) | min-max | class head | dist. head "
            "| seeds |", "|---|---|---|---|---|---|"]
    for setting, runs in results.items():
        mean, std, lo, hi = stats([r["score"] for r in runs])
        cls = stats([r["cls_logits"] for r in runs])[0]
        dist = stats([r["distillation_logits"] for r in runs])[0]
        dist_text = "untrained" if setting == "none" else f"{dist:.2f}"
        rows.append(f"| {setting} | {mean:.2f} ± {std:.2f} | {lo:.2f}-{hi:.2f} | {cls:.2f} | "
                    f"{dist_text} | {len(runs)} |")
    rows.append(f"| CNN teacher | {100 * teacher_acc:.2f} | | | | 1 |")
    return "\n".join(rows)


def compare(results, a, b):
    """(mean gap a - b in points, seeds a wins, whether the gap is beyond 2 standard errors).

    Paired by seed: runs of a seed share the initialization and the augmentation stream."""
    gaps = 100 * (np.array([r["score"] for r in results[a]])
                  - np.array([r["score"] for r in results[b]]))
    error = gaps.std(ddof=1) / np.sqrt(len(gaps)) if len(gaps) > 1 else np.inf
    return gaps.mean(), int(np.sum(gaps > 0)), abs(gaps.mean()) > 2 * error


def verdict(results):
    """The paper's two claims, tested on these runs; returns (best distilled setting, text)."""
    means = {s: np.mean([r["score"] for r in runs]) for s, runs in results.items()}
    best_distilled = max(("soft", "hard"), key=means.get)
    seeds = len(results["none"])
    lines, outcomes = [], {}
    for a, b in (("hard", "none"), ("soft", "none"), ("hard", "soft")):
        gap, wins, clear = compare(results, a, b)
        outcomes[a, b] = (gap > 0, clear)
        lines.append(f"{a} - {b}: {gap:+.2f} points (mean of per-seed gaps; {a} ahead on {wins} "
                     f"of {seeds} seeds; {'beyond' if clear else 'within'} 2 standard errors)")

    def claim(pairs):
        if all(ahead and clear for ahead, clear in pairs):
            return "HOLDS"
        if all(ahead for ahead, _ in pairs):
            return "same direction, but not significant with this many seeds"
        if any(not ahead and clear for ahead, clear in pairs):
            return "DOES NOT HOLD (reversed beyond the noise)"
        return "NOT SHOWN (mixed or reversed, within the noise)"

    distilled = claim([outcomes["hard", "none"]]) if best_distilled == "hard" else claim(
        [outcomes["soft", "none"]])
    lines += [
        f"Claim 1, a distilled student beats the same student without distillation "
        f"(best distilled setting: {best_distilled}): {distilled}.",
        f"Claim 2, hard distillation beats soft: {claim([outcomes['hard', 'soft']])}.",
    ]
    return best_distilled, "\n".join(lines)


def save_builtin(folder, student, processor, images8, labels, test_idx):
    model_dir = os.path.join(folder, "deit_digits")
    os.makedirs(model_dir, exist_ok=True)
    student.save(os.path.join(model_dir, "model.keras"))
    processor.save_pretrained(model_dir)
    examples = os.path.join(folder, "examples")
    os.makedirs(examples, exist_ok=True)
    written = []
    for digit in range(NUM_CLASSES):  # the first test image of each class: no cherry-picking
        index = next(i for i in test_idx if labels[i] == digit)
        path = os.path.join(examples, f"digit_{digit}_{index:04d}.png")
        example_png(images8[index]).save(path)
        written.append(path)
    return model_dir, written


def check_png_path(model_dir, paths, test_idx, images8, labels):
    """Accuracy through PNG files + the saved processor, against the in-memory path."""
    import io

    from PIL import Image

    from keras_deit.inference import load_classifier

    model, processor = load_classifier(os.path.join(model_dir, "model.keras"))
    pictures = []
    for index in test_idx:
        buffer = io.BytesIO()
        example_png(images8[index]).save(buffer, format="PNG")
        buffer.seek(0)
        pictures.append(Image.open(buffer).convert("RGB"))  # as `keras-deit predict` reads
    logits = model.predict(processor(pictures)["pixel_values"], verbose=0)["logits"]
    png_acc = accuracy(logits, labels[test_idx])
    example_pred = np.argmax(model.predict(
        processor([Image.open(p).convert("RGB") for p in paths])["pixel_values"],
        verbose=0)["logits"], -1)
    truth = [int(os.path.basename(p).split("_")[1]) for p in paths]
    return png_acc, example_pred.tolist(), truth


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3])
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--weight-decay", type=float, default=0.05)
    parser.add_argument("--shift", type=int, default=3, help="max shift in 32x32 pixels")
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--patch", type=int, default=8)
    parser.add_argument("--save", metavar="DIR", help="write the built-in model and examples")
    args = parser.parse_args(argv)

    start = time.time()
    train_idx, test_idx, images8, labels = load_split()
    processor = image_processor()
    x, x_test = preprocess(images8[train_idx], processor), preprocess(images8[test_idx], processor)
    y, y_test = labels[train_idx], labels[test_idx]
    print(f"backend {keras.backend.backend()}; train {len(y)}, test {len(y_test)}; "
          f"args {vars(args)}", flush=True)

    teacher, teacher_acc = train_teacher(x, y, x_test, y_test, args)
    print(f"teacher: {100 * teacher_acc:.2f}% ({time.time() - start:.0f}s)", flush=True)
    results, best = {s: [] for s in args.settings}, {}
    for seed in args.seeds:
        for setting in args.settings:
            student, heads = train_student(setting, seed, teacher, x, y, x_test, y_test, args)
            results[setting].append(heads)
            if setting != "none" and heads["score"] > best.get(setting, (-1, None))[0]:
                best[setting] = (heads["score"], student, seed)
            print(f"  {setting} seed {seed}: {100 * heads['score']:.2f}% "
                  f"(logits {100 * heads['logits']:.2f}, cls {100 * heads['cls_logits']:.2f}, "
                  f"dist {100 * heads['distillation_logits']:.2f}; {time.time() - start:.0f}s)",
                  flush=True)

    command = "KERAS_BACKEND=" + keras.backend.backend() + " python " + " ".join(
        ["benchmarks/distillation_experiment.py", *(argv if argv is not None else sys.argv[1:])])
    params = student.count_params()
    print(f"\n## Distillation on scikit-learn digits\n\n`{command}`\n")
    print(f"Student: DeiT hidden {args.hidden}, {args.layers} layers, {args.heads} heads, patch "
          f"{args.patch} on 32x32 ({params:,} parameters); {args.epochs} epochs, batch "
          f"{args.batch}, deit_adamw lr {args.lr} (warmup + cosine), weight decay "
          f"{args.weight_decay}, random shifts of up to {args.shift} px; seeds "
          f"{args.seeds}. Test split: {len(y_test)} images. soft: alpha 0.1, tau 3; hard: "
          "alpha 0.5. Score: averaged logits (soft, hard), class head (none).\n")
    print(table(results, teacher_acc))
    if {"none", "soft", "hard"} <= set(results):
        best_setting, text = verdict(results)
        print("\nVerdict, the paper's central claim at this small scale:\n" + text)
    else:
        best_setting = max(best, key=lambda s: np.mean([r["score"] for r in results[s]]))
    print(f"\ntotal {time.time() - start:.0f}s", flush=True)

    if args.save and best:
        score, student, seed = best[best_setting]
        model_dir, paths = save_builtin(args.save, student, processor, images8, labels, test_idx)
        size = os.path.getsize(os.path.join(model_dir, "model.keras"))
        png_acc, predicted, truth = check_png_path(model_dir, paths, test_idx, images8, labels)
        print(f"\nBuilt-in model: {best_setting} seed {seed}, test accuracy "
              f"{100 * score:.2f}% in memory, {100 * png_acc:.2f}% through PNG files and the "
              f"saved preprocessor_config.json; {size / 1e6:.2f} MB")
        print(f"examples: predicted {predicted}, true {truth}")


if __name__ == "__main__":
    main()
