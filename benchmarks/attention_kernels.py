"""The two attention kernels of DeiTAttention ("sdpa" and "eager") timed against each other.

For each backend a child process builds deit-tiny twice, once per `attn_implementation`, with the
same weights, and times inference (`predict_on_batch`, WithTeacher, batch 1 and 8) and one
training step (`train_on_batch`, DeiTForImageClassification, batch 32, AdamW). The two kernels
alternate inside each round; the best round of each is kept. The ratio eager / sdpa (> 1: eager
is faster) is what `default_attn_implementation` is chosen by.

    python benchmarks/attention_kernels.py [--rounds 2] [--seconds 2] [--steps 3]
"""

import argparse
import json
import sys

from harness import per_second, run_child

BACKENDS = ("tensorflow", "jax", "torch")
KERNELS = ("sdpa", "eager")


def child(rounds, seconds, steps):
    import keras
    import numpy as np

    import keras_deit as kd

    config = kd.DeiTConfig(hidden_size=192, num_attention_heads=3, intermediate_size=768,
                           num_labels=1000, layer_norm_eps=1e-6)
    rng = np.random.default_rng(0)
    images = {b: rng.random((b, 224, 224, 3), dtype="float32") for b in (1, 8, 32)}
    labels = rng.integers(0, 1000, (32,))
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)

    inference, training = {}, {}
    for kernel in KERNELS:
        keras.utils.set_random_seed(0)  # the same weights for both kernels
        inference[kernel] = kd.DeiTForImageClassificationWithTeacher(
            config, attn_implementation=kernel)
        keras.utils.set_random_seed(0)
        model = kd.DeiTForImageClassification(config, attn_implementation=kernel)
        model.compile(optimizer=keras.optimizers.AdamW(1e-4), loss=loss)
        training[kernel] = model

    best = {}
    for _ in range(rounds):
        for kernel in KERNELS:
            for batch in (1, 8):
                rate = batch * per_second(
                    lambda: inference[kernel].predict_on_batch(images[batch]), 3, seconds)
                key = f"{kernel}/infer b{batch} (img/s)"
                best[key] = max(best.get(key, 0.0), rate)
            rate = per_second(
                lambda: training[kernel].train_on_batch(images[32], labels), steps, warmup=1)
            key = f"{kernel}/train b32 (steps/s)"
            best[key] = max(best.get(key, 0.0), rate)
    return {"default": kd.default_attn_implementation(), **best}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=2.0, help="inference window per cell")
    parser.add_argument("--steps", type=int, default=3, help="timed training steps per round")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.rounds, args.seconds, args.steps)))
        return

    print(f"deit-tiny, fp32, 224x224, random weights; best of {args.rounds} rounds, kernels "
          "alternating.\n")
    print("| backend | measure | sdpa | eager | eager / sdpa | default |")
    print("|---|---|---|---|---|---|")
    for backend in BACKENDS:
        print(f"timing {backend}", file=sys.stderr)
        figures = run_child(__file__, backend, "--rounds", str(args.rounds),
                            "--seconds", str(args.seconds), "--steps", str(args.steps))
        for measure in ("infer b1 (img/s)", "infer b8 (img/s)", "train b32 (steps/s)"):
            sdpa, eager = figures[f"sdpa/{measure}"], figures[f"eager/{measure}"]
            print(f"| {backend} | {measure} | {sdpa:.3g} | {eager:.3g} | {eager / sdpa:.2f}x | "
                  f"{figures['default']} |")


if __name__ == "__main__":
    main()
