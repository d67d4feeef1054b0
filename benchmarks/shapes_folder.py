"""An easy folder for `keras-deit train`: coloured shapes on noisy backgrounds.

    python benchmarks/shapes_folder.py OUT_DIR [--train 30] [--val 12]

writes OUT_DIR/train/<class>/<i>.png and OUT_DIR/val/<class>/<i>.png for three classes (a red
circle, a green square, a blue triangle; each colour jittered by up to 30 levels) of random
sizes (48-95 pixels a side) and positions, on uniform noise in [64, 191]. A model that learns
anything learns it: the defaults of `keras-deit train` are judged on it (tests/test_fine_tuning.py,
RESULTS.md "Defaults that learn").
"""

import argparse
import os

import numpy as np

COLOURS = {"circle": (220, 40, 40), "square": (40, 200, 40), "triangle": (40, 60, 220)}


def _picture(kind, rng):
    from PIL import Image, ImageDraw

    width, height = (int(v) for v in rng.integers(48, 96, 2))
    image = Image.fromarray((rng.integers(0, 128, (height, width, 3)) + 64).astype("uint8"))
    side = min(width, height) * rng.uniform(0.4, 0.8)
    x, y = width / 2 + rng.uniform(-5, 5), height / 2 + rng.uniform(-5, 5)
    colour = tuple(int(np.clip(c + rng.integers(-30, 31), 0, 255)) for c in COLOURS[kind])
    box = [x - side / 2, y - side / 2, x + side / 2, y + side / 2]
    draw = ImageDraw.Draw(image)
    if kind == "circle":
        draw.ellipse(box, fill=colour)
    elif kind == "square":
        draw.rectangle(box, fill=colour)
    else:
        draw.polygon([(x, box[1]), (box[0], box[3]), (box[2], box[3])], fill=colour)
    return image


def write_shapes_folder(out_dir, train_per_class=30, val_per_class=12, seed=0):
    """Writes the folder; returns {split: image count}."""
    rng = np.random.default_rng(seed)
    counts = {}
    for split, count in (("train", train_per_class), ("val", val_per_class)):
        for kind in COLOURS:
            folder = os.path.join(out_dir, split, kind)
            os.makedirs(folder, exist_ok=True)
            for i in range(count):
                _picture(kind, rng).save(os.path.join(folder, f"{i}.png"))
        counts[split] = count * len(COLOURS)
    return counts


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir")
    parser.add_argument("--train", type=int, default=30, help="training images per class")
    parser.add_argument("--val", type=int, default=12, help="validation images per class")
    args = parser.parse_args(argv)
    print(write_shapes_folder(args.out_dir, args.train, args.val))


if __name__ == "__main__":
    main()
