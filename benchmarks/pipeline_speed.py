"""Training input pipeline throughput: keras-deit's tf.data DeiT recipe against timm's, on the
same JPEG files and the same cores, in images/s.

timm's side is deit's (`timm.data.create_transform(SIZE, is_training=True,
auto_augment="rand-m9-mstd0.5-inc1", interpolation="bicubic", re_prob=0.25, re_mode="pixel")`,
`timm.data.Mixup(mixup_alpha=0.8, cutmix_alpha=1.0, label_smoothing=0.1)`, a torch
`DataLoader` with --workers workers); it runs in a subprocess of --timm-python (a venv with
torch and timm: they stay out of keras-deit's environment). Ours: `deit_stream` (files) and
`deit_train_dataset` (decoded arrays in memory). Each round runs every pipeline once over the
images, alternating, so that load from other processes hits both alike.

    python benchmarks/pipeline_speed.py --timm-python /work/timm-venv/bin/python
    python benchmarks/pipeline_speed.py --quick          # smoke: a few tiny images, ours only
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

SOURCES = ("files", "memory")


def make_jpegs(folder, count, height=300, width=400, classes=10, seed=0):
    """`count` JPEGs (quality 90) of smooth patterns plus noise, in `classes` class folders
    of `folder`; returns the class folder root."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    root = os.path.join(folder, "train")
    for i in range(count):
        f = rng.uniform(3, 30, 3)
        image = np.stack([128 + 90 * np.sin(xx / f[0] + yy / f[1]), (xx * f[2]) % 256,
                          (yy + xx) % 256], -1)
        image = np.clip(image + rng.normal(0, 12, image.shape), 0, 255).astype("uint8")
        os.makedirs(os.path.join(root, f"c{i % classes}"), exist_ok=True)
        Image.fromarray(image).save(os.path.join(root, f"c{i % classes}", f"{i}.jpg"),
                                    quality=90)
    return root


def _rate(batches):
    """images/s over `batches` (an iterator of (images, labels)), the first batch (start-up)
    left out; returns (images/s, images after the first batch)."""
    iterator = iter(batches)
    next(iterator)
    start, count = time.perf_counter(), 0
    for images, _ in iterator:
        count += len(images)
    return count / (time.perf_counter() - start), count


def ours(root, source, size, batch_size, rand_augment=True):
    """images/s of one epoch of keras-deit's DeiT pipeline (3 repeats: the epoch has as many
    samples as files)."""
    from keras_deit.training import augmentation, image_folder

    paths, labels, names = image_folder.index_image_folder(root)
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    if not rand_augment:
        augmentation.rand_augment = lambda seed=None: (lambda image: image)
    if source == "files":
        stream = image_folder.deit_stream(paths, labels, len(names), batch_size, size, mean,
                                          std, seed=0)
        return _rate(stream.dataset)
    from PIL import Image

    images = np.stack([np.asarray(Image.open(p).convert("RGB")) for p in paths])
    dataset = augmentation.deit_train_dataset(images, labels, len(names), batch_size, size,
                                              mean, std, seed=0)
    return _rate(dataset)


def timm_worker(root, source, size, batch_size, workers, rand_augment=True):
    """images/s of timm's DeiT pipeline (run by --timm-python)."""
    import timm.data
    import torch
    from PIL import Image
    from torchvision.datasets import ImageFolder

    transform = timm.data.create_transform(
        size, is_training=True, auto_augment="rand-m9-mstd0.5-inc1" if rand_augment else None,
        interpolation="bicubic", re_prob=0.25, re_mode="pixel")
    folder = ImageFolder(root, transform=transform)
    if source == "memory":
        decoded = [(Image.open(p).convert("RGB"), label) for p, label in folder.samples]

        class Decoded(torch.utils.data.Dataset):
            def __len__(self):
                return len(decoded)

            def __getitem__(self, i):
                return transform(decoded[i][0]), decoded[i][1]

        folder = Decoded()
    mixup = timm.data.Mixup(mixup_alpha=0.8, cutmix_alpha=1.0, label_smoothing=0.1,
                            num_classes=len(os.listdir(root)))
    loader = torch.utils.data.DataLoader(folder, batch_size=batch_size, shuffle=True,
                                         num_workers=workers, drop_last=True)
    return _rate(mixup(x, y) for x, y in loader)


def run_timm(python, root, source, size, batch_size, workers, rand_augment):
    command = [python, os.path.abspath(__file__), "--worker", "timm", "--root", root,
               "--source", source, "--size", str(size), "--batch-size", str(batch_size),
               "--workers", str(workers)] + ([] if rand_augment else ["--no-rand-augment"])
    out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])["images_per_s"]


def run_ours(root, source, size, batch_size, rand_augment):
    """In a subprocess too: each measurement starts alike (no warm tf.data state)."""
    command = [sys.executable, os.path.abspath(__file__), "--worker", "ours", "--root", root,
               "--source", source, "--size", str(size), "--batch-size", str(batch_size)] + \
        ([] if rand_augment else ["--no-rand-augment"])
    out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])["images_per_s"]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=500)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", type=int, default=2, help="timm's DataLoader workers")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--sources", default="files,memory")
    parser.add_argument("--no-rand-augment", action="store_true",
                        help="leave RandAugment out on both sides")
    parser.add_argument("--timm-python", help="a python with torch and timm; none: ours only")
    parser.add_argument("--quick", action="store_true",
                        help="smoke: 24 images of 40x30 at 32 px, batch 4, one round")
    parser.add_argument("--worker", choices=("ours", "timm"), help=argparse.SUPPRESS)
    parser.add_argument("--root", help=argparse.SUPPRESS)
    parser.add_argument("--source", choices=SOURCES, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    augment = not args.no_rand_augment
    if args.worker:
        measure = ours if args.worker == "ours" else (
            lambda *a, **k: timm_worker(*a, workers=args.workers, **k))
        rate, count = measure(args.root, args.source, args.size, args.batch_size,
                              rand_augment=augment)
        print(json.dumps({"images_per_s": rate, "images": count}))
        return None
    if args.quick:
        args.images, args.size, args.batch_size, args.rounds = 24, 32, 4, 1
    sources = args.sources.split(",")
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        root = make_jpegs(folder, args.images, *((30, 40) if args.quick else (300, 400)))
        rates = {(side, s): [] for side in ("ours", "timm") for s in sources}
        for _ in range(args.rounds):
            for source in sources:
                rates["ours", source].append(
                    run_ours(root, source, args.size, args.batch_size, augment))
                if args.timm_python:
                    rates["timm", source].append(run_timm(
                        args.timm_python, root, source, args.size, args.batch_size,
                        args.workers, augment))
    print(f"{args.images} JPEGs of {'40x30' if args.quick else '400x300'}, {args.size} px, "
          f"batch {args.batch_size}, RandAugment {'on' if augment else 'off'}, "
          f"{os.cpu_count()} CPUs; median of {args.rounds} alternating round(s)")
    print("| source | keras-deit img/s | timm img/s | ratio |")
    print("|---|---|---|---|")
    for source in sources:
        mine = float(np.median(rates["ours", source]))
        theirs = float(np.median(rates["timm", source])) if args.timm_python else None
        ratio = mine / theirs if theirs else None
        rows.append(dict(source=source, ours=mine, timm=theirs, ratio=ratio))
        print(f"| {source} | {mine:.1f} | {'-' if theirs is None else f'{theirs:.1f}'} | "
              f"{'-' if ratio is None else f'{ratio:.2f}x'} |")
    return rows


if __name__ == "__main__":
    main()
