"""Inference speed of keras-deit against its peers, measured in one run.

For each backend (TensorFlow, JAX, PyTorch) a child process times our
DeiTForImageClassificationWithTeacher and keras-hub's DeiT (same sizes, random weights, fp32,
224x224) with `predict_on_batch`. On the PyTorch backend the same process also times
transformers' PyTorch model (SDPA attention, under `torch.inference_mode`): the three
alternate window by window, so that the speed of a process (it varies by up to 20% from one
process to the next here, for the same model) and a noisy moment hit all of them alike.
Another child measures the fp32 matrix-product rate of the machine (2048x2048, NumPy /
PyTorch / JAX). Rounds are processes; the best round of each implementation is kept, and the
ours / transformers ratio of every round is printed too.

The Keras children also time the model's linear layers alone (deit-base shapes, the largest
batch): a bound on how close to the matrix-product rate the whole model can get on that
backend, since they are 95% of its arithmetic.

    python benchmarks/inference_speed.py                 # tiny and base, batch 1 and 8
    python benchmarks/inference_speed.py --sizes tiny --batches 1 --rounds 1

Needs keras-hub and transformers (benchmark-only dependencies, not the package's).
"""

import argparse
import json
import sys

from harness import per_second, run_child

SIZES = {  # name: (hidden, heads, GFLOP per image at 224px: 2 x multiply-accumulates)
    "tiny": (192, 3, 2.5),
    "small": (384, 6, 9.2),
    "base": (768, 12, 35.1),
}
BACKENDS = ("tensorflow", "jax", "torch")


def _images_per_second(step, batch, seconds):
    """Images/s of `step()` on a batch of `batch`: 3 warm-up calls, then `seconds` of calls."""
    return batch * per_second(step, 3, seconds, warmup=3)


def child_keras(sizes, batches, seconds):
    """Times ours and keras-hub's DeiT on the current Keras backend (and transformers on
    PyTorch), and the linear layers of deit-base alone."""
    import keras
    import keras_hub
    import numpy as np

    import keras_deit as kd

    on_torch = keras.backend.backend() == "torch"
    results = {}
    for size in sizes:
        hidden, heads, _ = SIZES[size]
        config = kd.DeiTConfig(hidden_size=hidden, num_attention_heads=heads,
                               intermediate_size=4 * hidden, num_labels=1000, layer_norm_eps=1e-6)
        # name -> a function of the NHWC batch that returns the timed call.
        ours = kd.DeiTForImageClassificationWithTeacher(config)
        calls = {"ours": lambda x: lambda: ours.predict_on_batch(x)}
        backbone = keras_hub.models.DeiTBackbone(
            image_shape=(224, 224, 3), patch_size=16, num_layers=12, num_heads=heads,
            hidden_dim=hidden, intermediate_dim=4 * hidden,
        )
        hub = keras_hub.models.DeiTImageClassifier(backbone=backbone, num_classes=1000)
        calls["keras-hub"] = lambda x: lambda: hub.predict_on_batch(x)
        if on_torch:
            calls["transformers-sdpa"] = _transformers_call(hidden, heads)
        for batch in batches:
            x = np.random.rand(batch, 224, 224, 3).astype("float32")
            for name, call in calls.items():
                results[f"{name}/{size}/{batch}"] = _images_per_second(call(x), batch, seconds)
        del ours, hub, calls
        keras.backend.clear_session()
    if "base" in sizes:
        results[f"linears/base/{max(batches)}"] = _linears_rate(max(batches), seconds)
    if keras.backend.backend() == "jax":
        results["matmul/jax"] = _matmul_rate_jax()
    return results


def _transformers_call(hidden, heads):
    """transformers' PyTorch DeiT (SDPA): a function of an NHWC batch that returns the call."""
    import torch
    import transformers

    config = transformers.DeiTConfig(hidden_size=hidden, num_attention_heads=heads,
                                     intermediate_size=4 * hidden, num_labels=1000)
    model = transformers.DeiTForImageClassificationWithTeacher._from_config(
        config, attn_implementation="sdpa"
    ).eval()

    def call(images):
        pixels = torch.from_numpy(images.transpose(0, 3, 1, 2).copy())  # NCHW, not timed

        def forward():
            with torch.inference_mode():
                return model(pixels)

        return forward

    return call


def _linears_rate(batch, seconds):
    """Images/s of deit-base's 48 linear layers (with biases) alone, on this backend.

    They are 33.5 of the model's 35.1 GFLOP per image, so `rate x 35.1 GFLOP` bounds what the
    whole model can reach. The three projections of q/k/v are summed into the next input,
    so every product feeds the next one and none can be skipped by a compiler.
    """
    import keras
    import numpy as np
    from keras import ops

    hidden, tokens = SIZES["base"][0], 197

    class Linears(keras.layers.Layer):
        def build(self, input_shape):
            # Flat lists of variables, so that Keras tracks them (JAX then passes them to the
            # compiled function instead of baking them in as constants).
            shapes = [(hidden, 3 * hidden), (hidden, hidden), (hidden, 4 * hidden),
                      (4 * hidden, hidden)] * 12
            self.kernels = [self.add_weight(shape=s, initializer="glorot_uniform") for s in shapes]
            self.biases = [self.add_weight(shape=s[1:], initializer="zeros") for s in shapes]

        def call(self, x):
            for i in range(0, len(self.kernels), 4):
                (wqkv, wo, w1, w2), (bqkv, bo, b1, b2) = self.kernels[i:i + 4], self.biases[i:i + 4]
                qkv = ops.matmul(x, wqkv) + bqkv
                x = ops.sum(ops.reshape(qkv, (-1, tokens, 3, hidden)), axis=2)
                x = ops.matmul(x, wo) + bo
                x = ops.matmul(ops.matmul(x, w1) + b1, w2) + b2
            return x

    inputs = keras.Input((tokens, hidden))
    model = keras.Model(inputs, Linears()(inputs))
    x = np.random.rand(batch, tokens, hidden).astype("float32")
    return _images_per_second(lambda: model.predict_on_batch(x), batch, seconds)


def child_matmul():
    """The NumPy and PyTorch fp32 matrix-product rates."""
    import numpy as np
    import torch

    return {
        "matmul/torch": _matmul_rate(lambda a, b: torch.matmul(a, b), torch.rand),
        "matmul/numpy": _matmul_rate(
            np.matmul, lambda *shape: np.random.rand(*shape).astype("float32")),
    }


def _matmul_rate(matmul, rand, n=2048, seconds=2.0):
    """GFLOP/s of an n x n fp32 matrix product."""
    a, b = rand(n, n), rand(n, n)
    return per_second(lambda: matmul(a, b), 3, seconds, warmup=3) * 2 * n**3 / 1e9


def _matmul_rate_jax(n=2048):
    import jax
    import jax.numpy as jnp

    a = jnp.ones((n, n), jnp.float32)
    product = jax.jit(jnp.matmul)
    return _matmul_rate(lambda x, y: product(x, y).block_until_ready(), lambda *s: a)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="tiny,base", type=lambda s: s.split(","))
    parser.add_argument("--batches", default="1,8", type=lambda s: [int(b) for b in s.split(",")])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=4.0, help="timing window per cell")
    parser.add_argument("--child", choices=["keras", "matmul"], help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child:
        results = (child_keras(args.sizes, args.batches, args.seconds) if args.child == "keras"
                   else child_matmul())
        print(json.dumps(results))
        return

    rounds = []  # per round: {"<implementation>@<backend>/<size>/<batch>" | "matmul/<lib>": value}
    for round_index in range(args.rounds):
        measured = {}
        for kind, backend in [("matmul", "torch")] + [("keras", b) for b in BACKENDS]:
            print(f"round {round_index + 1}/{args.rounds}: {kind} on {backend}", file=sys.stderr)
            figures = run_child(__file__, backend, kind, "--sizes", ",".join(args.sizes),
                                "--batches", ",".join(map(str, args.batches)),
                                "--seconds", str(args.seconds))
            for key, value in figures.items():
                if not key.startswith("matmul"):
                    implementation, cell = key.split("/", 1)
                    key = f"{implementation}@{backend}/{cell}"
                measured[key] = value
        rounds.append(measured)
    report(rounds, args)


def report(rounds, args):
    best = {k: max(r[k] for r in rounds) for k in rounds[0]}
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

    print("\nRatios of the best rounds (goal in brackets):")
    for backend in BACKENDS:
        ratios = [best[f"ours@{backend}/{s}/{b}"] / best[f"keras-hub@{backend}/{s}/{b}"] for s, b in cells]
        print(f"- ours / keras-hub on {backend} [>= 1.0]: " + ", ".join(
            f"{s} b{b} {r:.2f}x" for (s, b), r in zip(cells, ratios)))
    print("- ours on the torch backend / transformers PyTorch [>= 0.9]: " + ", ".join(
        f"{s} b{b} {best[f'ours@torch/{s}/{b}'] / best[f'transformers-sdpa@torch/{s}/{b}']:.2f}x"
        f" (rounds: " + ", ".join(
            f"{r[f'ours@torch/{s}/{b}'] / r[f'transformers-sdpa@torch/{s}/{b}']:.2f}" for r in rounds)
        + ")" for s, b in cells))
    for size in args.sizes:
        batch = max(args.batches)
        backend = max(BACKENDS, key=lambda be: best[f"ours@{be}/{size}/{batch}"])
        rate = best[f"ours@{backend}/{size}/{batch}"]
        gflops = rate * SIZES[size][2]
        print(f"- {size} b{batch} on the best backend ({backend}): {rate:.1f} img/s x "
              f"{SIZES[size][2]} GFLOP = {gflops:.0f} GFLOP/s = {gflops / roof:.0%} of the "
              f"matrix-product rate [>= 90% for base]")
    if "base" in args.sizes:
        batch = max(args.batches)
        print(f"\nBound: deit-base b{batch}, its linear layers alone (img/s; x 35.1 GFLOP as a "
              "share of the matrix-product rate):")
        for backend in BACKENDS:
            rate = best[f"linears@{backend}/base/{batch}"]
            model = best[f"ours@{backend}/base/{batch}"]
            print(f"- {backend}: {rate:.1f} img/s = {rate * SIZES['base'][2] / roof:.0%}; the whole "
                  f"model runs at {model / rate:.0%} of it")


if __name__ == "__main__":
    main()
