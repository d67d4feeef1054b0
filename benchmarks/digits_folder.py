"""scikit-learn's digits as a folder of PNGs, for `keras-deit train`.

    python benchmarks/digits_folder.py OUT_DIR

writes OUT_DIR/train/<digit>/<index>.png and OUT_DIR/val/<digit>/<index>.png: the stratified
70/30 split (seed 0) of benchmarks/distillation_experiment.py, on which the built-in
`deit-digits` model was trained (train/ only), so it can serve as a teacher that never saw
val/. Each image is the 8x8 digit as uint8 grayscale (`round(v * 255 / 16)`, white on black);
`keras-deit train` reads it as RGB.
"""

import argparse
import importlib.util
import os
import sys


def _experiment():
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "distillation_experiment.py")
    spec = importlib.util.spec_from_file_location("distillation_experiment", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def write_digits_folder(out_dir):
    """Writes the folder; returns {split: image count}."""
    from PIL import Image

    train_idx, test_idx, images8, labels = _experiment().load_split()
    counts = {}
    for split, indices in (("train", train_idx), ("val", test_idx)):
        for index in indices:
            folder = os.path.join(out_dir, split, str(labels[index]))
            os.makedirs(folder, exist_ok=True)
            Image.fromarray(images8[index]).save(os.path.join(folder, f"{index}.png"))
        counts[split] = len(indices)
    return counts


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir")
    args = parser.parse_args(argv)
    if os.path.exists(args.out_dir) and os.listdir(args.out_dir):
        print(f"{args.out_dir} is not empty: pass a new folder", file=sys.stderr)
        return 2
    print(write_digits_folder(args.out_dir))
    return 0


if __name__ == "__main__":
    sys.exit(main())
