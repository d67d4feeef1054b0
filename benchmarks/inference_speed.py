"""Inference speed of keras-deit against its peers, measured in one run.

For each backend (TensorFlow, JAX, PyTorch) a child process times our
DeiTForImageClassificationWithTeacher and keras-hub's DeiT (same sizes, random weights, fp32,
224x224) with `predict_on_batch`; another child times transformers' PyTorch model (SDPA
attention) under `torch.inference_mode`, and the fp32 matrix-product rate of the machine
(2048x2048, NumPy / PyTorch / JAX). Rounds are interleaved so that a noisy moment hits every
implementation; the best round of each is kept. Prints a markdown table and the ratios the
project's goals are stated in.

    python benchmarks/inference_speed.py                 # tiny and base, batch 1 and 8
    python benchmarks/inference_speed.py --sizes tiny --batches 1 --rounds 1

Needs keras-hub and transformers (benchmark-only dependencies, not the package's).
"""

import argparse
import json
import os
import subprocess
import sys
import time

SIZES = {  # name: (hidden, heads, GFLOP per image at 224px: 2 x multiply-accumulates)
    "tiny": (192, 3, 2.5),
    "small": (384, 6, 9.2),
    "base": (768, 12, 35.1),
}
BACKENDS = ("tensorflow", "jax", "torch")


def _rate(step, batch, seconds, warmup=3):
    """Images per second of `step()`, after `warmup` calls, over about `seconds`."""
    for _ in range(warmup):
        step()
    calls, start = 0, time.perf_counter()
    while True:
        step()
        calls += 1
        elapsed = time.perf_counter() - start
        if elapsed >= seconds and calls >= 3:
            return calls * batch / elapsed


def child_keras(sizes, batches, seconds):
    """Times ours and keras-hub's DeiT on the current Keras backend."""
    import keras
    import keras_hub
    import numpy as np

    import keras_deit as kd

    results = {}
    for size in sizes:
        hidden, heads, _ = SIZES[size]
        config = kd.DeiTConfig(hidden_size=hidden, num_attention_heads=heads,
                               intermediate_size=4 * hidden, num_labels=1000, layer_norm_eps=1e-6)
        ours = kd.DeiTForImageClassificationWithTeacher(config)
        backbone = keras_hub.models.DeiTBackbone(
            image_shape=(224, 224, 3), patch_size=16, num_layers=12, num_heads=heads,
            hidden_dim=hidden, intermediate_dim=4 * hidden,
        )
        hub = keras_hub.models.DeiTImageClassifier(backbone=backbone, num_classes=1000)
        for batch in batches:
            x = np.random.rand(batch, 224, 224, 3).astype("float32")
            results[f"ours/{size}/{batch}"] = _rate(lambda: ours.predict_on_batch(x), batch, seconds)
            results[f"keras-hub/{size}/{batch}"] = _rate(lambda: hub.predict_on_batch(x), batch, seconds)
        del ours, hub
        keras.backend.clear_session()
    if keras.backend.backend() == "jax":
        results["matmul/jax"] = _matmul_rate_jax()
    return results


def child_torch(sizes, batches, seconds):
    """Times transformers' PyTorch DeiT (SDPA) and the NumPy / PyTorch matrix-product rate."""
    import torch
    import transformers

    results = {}
    for size in sizes:
        hidden, heads, _ = SIZES[size]
        config = transformers.DeiTConfig(hidden_size=hidden, num_attention_heads=heads,
                                         intermediate_size=4 * hidden, num_labels=1000)
        model = transformers.DeiTForImageClassificationWithTeacher._from_config(
            config, attn_implementation="sdpa"
        ).eval()
        for batch in batches:
            x = torch.rand(batch, 3, 224, 224)
            with torch.inference_mode():
                results[f"transformers-sdpa/{size}/{batch}"] = _rate(lambda: model(x), batch, seconds)
    results["matmul/torch"] = _matmul_rate(lambda a, b: torch.matmul(a, b), torch.rand)
    import numpy as np

    results["matmul/numpy"] = _matmul_rate(
        np.matmul, lambda *shape: np.random.rand(*shape).astype("float32")
    )
    return results


def _matmul_rate(matmul, rand, n=2048, seconds=2.0):
    """GFLOP/s of an n x n fp32 matrix product."""
    a, b = rand(n, n), rand(n, n)
    return _rate(lambda: matmul(a, b), 1, seconds) * 2 * n**3 / 1e9


def _matmul_rate_jax(n=2048):
    import jax
    import jax.numpy as jnp

    a = jnp.ones((n, n), jnp.float32)
    product = jax.jit(jnp.matmul)
    return _matmul_rate(lambda x, y: product(x, y).block_until_ready(), lambda *s: a)


def run_child(kind, backend, args):
    env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="3")
    command = [sys.executable, __file__, "--child", kind, "--sizes", ",".join(args.sizes),
               "--batches", ",".join(map(str, args.batches)), "--seconds", str(args.seconds)]
    result = subprocess.run(command, env=env, capture_output=True, text=True)
    if result.returncode:
        sys.exit(f"{kind} child on {backend} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="tiny,base", type=lambda s: s.split(","))
    parser.add_argument("--batches", default="1,8", type=lambda s: [int(b) for b in s.split(",")])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=4.0, help="timing window per cell")
    parser.add_argument("--child", choices=["keras", "torch"], help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child:
        work = child_keras if args.child == "keras" else child_torch
        print(json.dumps(work(args.sizes, args.batches, args.seconds)))
        return

    best = {}  # (implementation, backend, size, batch) -> best images/s over the rounds
    for round_index in range(args.rounds):
        runs = [("torch", "torch")] + [("keras", b) for b in BACKENDS]
        for kind, backend in runs:
            print(f"round {round_index + 1}/{args.rounds}: {kind} on {backend}", file=sys.stderr)
            for key, value in run_child(kind, backend, args).items():
                name = key if key.startswith("matmul") else f"{key.split('/')[0]}@{backend}/" + "/".join(key.split("/")[1:])
                best[name] = max(best.get(name, 0.0), value)
    report(best, args)


def report(best, args):
    cells = [(s, b) for s in args.sizes for b in args.batches]
    roof = max(v for k, v in best.items() if k.startswith("matmul/"))
    print(f"Images/s, fp32, 224x224, random weights, best of {args.rounds} interleaved rounds.\n")
    print("| implementation | " + " | ".join(f"{s} b{b}" for s, b in cells) + " |")
    print("|---" * (len(cells) + 1) + "|")
    rows = ["transformers-sdpa@torch"] + [f"{impl}@{be}" for be in BACKENDS for impl in ("ours", "keras-hub")]
    for row in rows:
        values = [best.get(f"{row}/{s}/{b}") for s, b in cells]
        print(f"| {row} | " + " | ".join("-" if v is None else f"{v:.1f}" for v in values) + " |")
    print("\nMatrix-product rate (2048x2048 fp32): " + ", ".join(
        f"{k.split('/')[1]} {v:.0f} GFLOP/s" for k, v in sorted(best.items()) if k.startswith("matmul/")))

    print("\nRatios (goal in brackets):")
    for backend in BACKENDS:
        ratios = [best[f"ours@{backend}/{s}/{b}"] / best[f"keras-hub@{backend}/{s}/{b}"] for s, b in cells]
        print(f"- ours / keras-hub on {backend} [>= 1.0]: " + ", ".join(
            f"{s} b{b} {r:.2f}x" for (s, b), r in zip(cells, ratios)))
    ratios = [best[f"ours@torch/{s}/{b}"] / best[f"transformers-sdpa@torch/{s}/{b}"] for s, b in cells]
    print("- ours on the torch backend / transformers PyTorch [>= 0.9]: " + ", ".join(
        f"{s} b{b} {r:.2f}x" for (s, b), r in zip(cells, ratios)))
    for size in args.sizes:
        batch = max(args.batches)
        backend = max(BACKENDS, key=lambda be: best[f"ours@{be}/{size}/{batch}"])
        rate = best[f"ours@{backend}/{size}/{batch}"]
        gflops = rate * SIZES[size][2]
        print(f"- {size} b{batch} on the best backend ({backend}): {rate:.1f} img/s x "
              f"{SIZES[size][2]} GFLOP = {gflops:.0f} GFLOP/s = {gflops / roof:.0%} of the "
              f"matrix-product rate [>= 90% for base]")


if __name__ == "__main__":
    main()
