"""The accelerator suite that benchmarks/gpu.sh runs: inference and training, per backend, with
float32, mixed bfloat16 and each attention kernel, written to one results file.

For each backend a child process builds our DeiTForImageClassificationWithTeacher (random
weights) for every (policy, attention) cell and measures images/s of `predict_on_batch` and of
`train_on_batch` (AdamW, cross-entropy on the logits). "sdpa" is the fused kernel
(`keras_deit.kernels.attention`: PyTorch SDPA / flash attention, `keras.ops.dot_product_attention`
and its cuDNN / XLA fused paths elsewhere); "eager" is the batched-matmul reference. The cells
alternate round by round; the median of the rounds is kept.

    python benchmarks/gpu_suite.py --out gpu_results.md             # deit-tiny and deit-base
    python benchmarks/gpu_suite.py --dry-run --out /tmp/dry.md      # CPU, tests' tiny sizes
"""

import argparse
import json
import os
import statistics
import sys

from deploy_speed import SIZES
from harness import per_second, run_child

BACKENDS = ("tensorflow", "jax", "torch")
POLICIES = ("float32", "mixed_bfloat16")
ATTENTION = ("sdpa", "eager")


def devices():
    """The accelerators Keras sees on this backend (empty on CPU)."""
    import keras

    if keras.backend.backend() == "torch":  # keras.distribution is JAX-only there
        import torch

        count = torch.cuda.device_count()
        return [f"cuda:{i} {torch.cuda.get_device_name(i)}" for i in range(count)]
    return [d for d in keras.distribution.list_devices() if not d.lower().startswith("cpu")]


def child(sizes, batch, train_batch, rounds, seconds):
    """{"<size>/<policy>/<attention>/<infer|train>": img/s} on the current backend."""
    import keras
    import numpy as np

    import keras_deit as kd

    results = {"devices": devices()}
    for size in sizes:
        hidden, layers, heads, image, patch, classes = SIZES[size]
        config = kd.DeiTConfig(hidden_size=hidden, num_hidden_layers=layers,
                               num_attention_heads=heads, intermediate_size=4 * hidden,
                               image_size=image, patch_size=patch, num_labels=classes)
        x = np.random.default_rng(0).standard_normal((batch, image, image, 3)).astype("float32")
        x_train = np.random.default_rng(1).standard_normal(
            (train_batch, image, image, 3)).astype("float32")
        y_train = np.random.default_rng(2).integers(0, classes, (train_batch,))
        steps = {}  # cell -> (kind, batch, step)
        for policy in POLICIES:
            for attention in ATTENTION:
                model = kd.DeiTForImageClassification(config, dtype=policy,
                                                       attn_implementation=attention)
                model.compile(optimizer=keras.optimizers.AdamW(1e-4), loss={
                    "logits": keras.losses.SparseCategoricalCrossentropy(from_logits=True)})
                cell = f"{size}/{policy}/{attention}"
                steps[f"{cell}/infer"] = (batch, lambda m=model: m.predict_on_batch(x))
                steps[f"{cell}/train"] = (
                    train_batch, lambda m=model: m.train_on_batch(x_train, {"logits": y_train}))
        rates = {cell: [] for cell in steps}
        for _ in range(rounds):
            for cell, (images, step) in steps.items():
                rates[cell].append(images * per_second(step, 2, seconds, warmup=2))
        results.update({cell: statistics.median(r) for cell, r in rates.items()})
        keras.backend.clear_session()
    return results


def write_report(path, measured, args):
    """Writes the markdown results file: one row per backend and cell."""
    lines = [f"# gpu_suite results ({'dry run on CPU' if args.dry_run else 'accelerator'})", "",
             f"command: python benchmarks/gpu_suite.py {' '.join(args.argv)}", "",
             "| backend | devices | size | policy | attention | inference img/s | "
             "training img/s |", "|---|---|---|---|---|---|---|"]
    for backend, results in measured.items():
        found = ", ".join(results["devices"]) or "CPU only"
        for size in args.sizes:
            for policy in POLICIES:
                for attention in ATTENTION:
                    cell = f"{size}/{policy}/{attention}"
                    lines.append(f"| {backend} | {found} | {size} | {policy} | {attention} | "
                                 f"{results[cell + '/infer']:.1f} | "
                                 f"{results[cell + '/train']:.1f} |")
    with open(path, "w") as out:
        out.write("\n".join(lines) + "\n")


def main(argv=None):
    """Runs one child per backend and writes the results file; returns {backend: results}."""
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, help="the results file (markdown)")
    parser.add_argument("--sizes", default="tiny,base", type=lambda s: s.split(","))
    parser.add_argument("--batch", type=int, default=64, help="inference batch")
    parser.add_argument("--train-batch", type=int, default=64)
    parser.add_argument("--backends", default=",".join(BACKENDS), type=lambda s: s.split(","))
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=5.0, help="timing window per cell")
    parser.add_argument("--dry-run", action="store_true",
                        help="CPU, the tests' tiny architecture, batch 2, one short round")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.argv = argv
    if args.dry_run:
        args.sizes, args.batch, args.train_batch, args.rounds, args.seconds = ["test"], 2, 2, 1, 0.05
    common = ["--out", args.out, "--sizes", ",".join(args.sizes), "--batch", str(args.batch),
              "--train-batch", str(args.train_batch), "--rounds", str(args.rounds),
              "--seconds", str(args.seconds)]
    if args.child:
        print(json.dumps(child(args.sizes, args.batch, args.train_batch, args.rounds,
                               args.seconds)))
        return None
    if args.dry_run:
        os.environ["CUDA_VISIBLE_DEVICES"] = ""  # the children inherit it: CPU only
    measured = {}
    for backend in args.backends:
        print(f"gpu_suite on {backend}", file=sys.stderr)
        measured[backend] = run_child(__file__, backend, *common)
    write_report(args.out, measured, args)
    return measured


if __name__ == "__main__":
    main()
