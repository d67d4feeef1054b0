"""Training speed: steps per second of deit-tiny at batch 32, ours against its peers, one run.

For each backend a child process times one optimizer step (`train_on_batch`, AdamW, sparse
cross-entropy on the logits, 224x224, 1000 classes, random data) of our
`DeiTForImageClassification` and of keras-hub's `DeiTImageClassifier` (same size); another child
times a plain transformers PyTorch loop (`DeiTForImageClassification`, SDPA attention, AdamW).
Rounds are interleaved; the best round of each is kept.

    python benchmarks/training_speed.py [--batch 32] [--steps 4] [--rounds 2]

Needs keras-hub and transformers (benchmark-only dependencies).
"""

import argparse
import json
import os
import subprocess
import sys
import time

BACKENDS = ("tensorflow", "jax", "torch")
TINY = dict(hidden=192, heads=3, layers=12)


def _steps_per_second(step, steps, warmup=2):
    for _ in range(warmup):
        step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return steps / (time.perf_counter() - start)


def child_keras(batch, steps):
    import keras
    import keras_hub
    import numpy as np

    import keras_deit as kd

    x = np.random.rand(batch, 224, 224, 3).astype("float32")
    y = np.random.randint(0, 1000, (batch,))
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    config = kd.DeiTConfig(hidden_size=TINY["hidden"], num_attention_heads=TINY["heads"],
                           intermediate_size=4 * TINY["hidden"], num_labels=1000, layer_norm_eps=1e-6)
    ours = kd.DeiTForImageClassification(config)
    ours.compile(optimizer=keras.optimizers.AdamW(1e-4), loss={"logits": loss})
    results = {"ours": _steps_per_second(lambda: ours.train_on_batch(x, {"logits": y}), steps)}
    del ours
    keras.backend.clear_session()
    backbone = keras_hub.models.DeiTBackbone(
        image_shape=(224, 224, 3), patch_size=16, num_layers=TINY["layers"], num_heads=TINY["heads"],
        hidden_dim=TINY["hidden"], intermediate_dim=4 * TINY["hidden"])
    hub = keras_hub.models.DeiTImageClassifier(backbone=backbone, num_classes=1000)
    hub.compile(optimizer=keras.optimizers.AdamW(1e-4), loss=loss)
    results["keras-hub"] = _steps_per_second(lambda: hub.train_on_batch(x, y), steps)
    return results


def child_torch(batch, steps):
    import torch
    import transformers

    config = transformers.DeiTConfig(hidden_size=TINY["hidden"], num_attention_heads=TINY["heads"],
                                     intermediate_size=4 * TINY["hidden"], num_labels=1000)
    model = transformers.DeiTForImageClassification._from_config(config, attn_implementation="sdpa")
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = torch.rand(batch, 3, 224, 224)
    y = torch.randint(0, 1000, (batch,))

    def step():
        optimizer.zero_grad(set_to_none=True)
        loss = torch.nn.functional.cross_entropy(model(pixel_values=x).logits, y)
        loss.backward()
        optimizer.step()

    return {"transformers": _steps_per_second(step, steps)}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--child", choices=["keras", "torch"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        work = child_keras if args.child == "keras" else child_torch
        print(json.dumps(work(args.batch, args.steps)))
        return

    best = {}
    for round_index in range(args.rounds):
        for kind, backend in [("torch", "torch")] + [("keras", b) for b in BACKENDS]:
            print(f"round {round_index + 1}/{args.rounds}: {kind} on {backend}", file=sys.stderr)
            env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="3")
            command = [sys.executable, __file__, "--child", kind, "--batch", str(args.batch),
                       "--steps", str(args.steps)]
            result = subprocess.run(command, env=env, capture_output=True, text=True)
            if result.returncode:
                sys.exit(f"{kind} on {backend} failed:\n{result.stderr[-3000:]}")
            for impl, value in json.loads(result.stdout.strip().splitlines()[-1]).items():
                key = impl if impl == "transformers" else f"{impl}@{backend}"
                best[key] = max(best.get(key, 0.0), value)

    print(f"Training steps/s, deit-tiny, batch {args.batch}, 224x224, fp32, AdamW, best of "
          f"{args.rounds} interleaved rounds of {args.steps} steps.\n")
    print("| backend | ours | keras-hub | ours / keras-hub | ours / transformers PyTorch |")
    print("|---|---|---|---|---|")
    for backend in BACKENDS:
        ours, hub = best[f"ours@{backend}"], best[f"keras-hub@{backend}"]
        print(f"| {backend} | {ours:.3f} | {hub:.3f} | {ours / hub:.2f}x | "
              f"{ours / best['transformers']:.2f}x |")
    print(f"\ntransformers PyTorch loop (SDPA): {best['transformers']:.3f} steps/s")


if __name__ == "__main__":
    main()
