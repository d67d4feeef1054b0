"""Speed of our model at two revisions of keras-deit, measured in one run.

For each backend, child processes alternate between the working tree and another revision
(checked out with `git worktree` into a temporary folder), round after round, each timing
`predict_on_batch` of DeiTForImageClassificationWithTeacher (random weights, fp32, 224x224)
and, with `--train`, a `train_on_batch` step. Alternating processes makes a slow moment or a
slow process hit both revisions alike; the best round of each is kept. Prints new / old for
every cell: above 1.0 the working tree is faster.

    python benchmarks/compare_revisions.py --against e35e337
    python benchmarks/compare_revisions.py --against HEAD~3 --backends torch --sizes tiny
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile

from harness import per_second

SIZES = {"tiny": (192, 3), "small": (384, 6), "base": (768, 12)}


def child(sizes, batches, seconds, train):
    import keras
    import numpy as np

    import keras_deit as kd

    results = {}
    for size in sizes:
        hidden, heads = SIZES[size]
        config = kd.DeiTConfig(hidden_size=hidden, num_attention_heads=heads,
                               intermediate_size=4 * hidden, num_labels=1000,
                               layer_norm_eps=1e-6)
        model = kd.DeiTForImageClassificationWithTeacher(config)
        for batch in batches:
            x = np.random.RandomState(0).rand(batch, 224, 224, 3).astype("float32")
            results[f"{size} b{batch} predict"] = batch * per_second(
                lambda: model.predict_on_batch(x), 3, seconds, warmup=3)
        if train:
            batch = max(batches)
            x = np.random.RandomState(0).rand(batch, 224, 224, 3).astype("float32")
            y = np.arange(batch) % 1000
            model.compile(keras.optimizers.AdamW(1e-4))
            results[f"{size} b{batch} train"] = batch * per_second(
                lambda: model.train_on_batch(x, y), 2, seconds, warmup=2)
    print(json.dumps({"file": kd.__file__, "results": results}))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--against", help="the git revision to compare with (required)")
    parser.add_argument("--backends", default="tensorflow,jax,torch", type=lambda s: s.split(","))
    parser.add_argument("--sizes", default="tiny,base", type=lambda s: s.split(","))
    parser.add_argument("--batches", default="1,8",
                        type=lambda s: [int(b) for b in s.split(",")])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--train", action="store_true", help="also time a training step")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args.sizes, args.batches, args.seconds, args.train)
    if not args.against:
        parser.error("--against REVISION is required")

    root = subprocess.run(["git", "rev-parse", "--show-toplevel"], capture_output=True,
                          text=True, check=True).stdout.strip()
    old_tree = tempfile.mkdtemp(prefix="keras-deit-old-")
    subprocess.run(["git", "worktree", "add", "--detach", old_tree, args.against], cwd=root,
                   check=True, capture_output=True)
    try:
        trees = {"new": root, "old": old_tree}
        for backend in args.backends:
            best = {"new": {}, "old": {}}
            for _ in range(args.rounds):
                for label, tree in trees.items():
                    command = [sys.executable, os.path.abspath(__file__), "--child",
                               "--sizes", ",".join(args.sizes),
                               "--batches", ",".join(map(str, args.batches)),
                               "--seconds", str(args.seconds)] + (["--train"] * args.train)
                    env = dict(os.environ, KERAS_BACKEND=backend, PYTHONPATH=tree)
                    process = subprocess.run(command, env=env, capture_output=True, text=True,
                                             cwd=tree)
                    if process.returncode:
                        sys.exit(f"{label} child on {backend} failed: {process.stderr[-2000:]}")
                    out = process.stdout
                    report = json.loads(out.strip().splitlines()[-1])
                    assert report["file"].startswith(tree), report["file"]
                    for cell, rate in report["results"].items():
                        best[label][cell] = max(rate, best[label].get(cell, 0.0))
            for cell in best["new"]:
                new, old = best["new"][cell], best["old"][cell]
                print(f"{backend:10s} {cell:18s} new {new:8.2f} img/s  old {old:8.2f} img/s  "
                      f"new/old {new / old:5.3f}", flush=True)
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", old_tree], cwd=root,
                       capture_output=True)


if __name__ == "__main__":
    main()
