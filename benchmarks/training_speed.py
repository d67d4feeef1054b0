"""Training speed: steps per second of deit-tiny at batch 32, ours against its peers, one run.

For each backend a child process times one optimizer step (`train_on_batch`, AdamW, sparse
cross-entropy on the logits, 224x224, 1000 classes, random data) of our
`DeiTForImageClassification` and of keras-hub's `DeiTImageClassifier` (same size). On the
PyTorch backend the same process also times a plain transformers PyTorch loop
(`DeiTForImageClassification`, SDPA attention, AdamW), so that the speed of the process (it
varies from one process to the next) is shared by the two PyTorch implementations. Rounds are
processes; the best round of each is kept.

    python benchmarks/training_speed.py [--batch 32] [--steps 4] [--rounds 2]

Needs keras-hub and transformers (benchmark-only dependencies).
"""

import argparse
import json
import sys

from harness import per_second, run_child

BACKENDS = ("tensorflow", "jax", "torch")
TINY = dict(hidden=192, heads=3, layers=12)


def child_keras(batch, steps):
    """Steps/s of ours and keras-hub's DeiT (and of transformers on the PyTorch backend)."""
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
    results = {"ours": per_second(lambda: ours.train_on_batch(x, {"logits": y}), steps)}
    del ours
    keras.backend.clear_session()
    backbone = keras_hub.models.DeiTBackbone(
        image_shape=(224, 224, 3), patch_size=16, num_layers=TINY["layers"], num_heads=TINY["heads"],
        hidden_dim=TINY["hidden"], intermediate_dim=4 * TINY["hidden"])
    hub = keras_hub.models.DeiTImageClassifier(backbone=backbone, num_classes=1000)
    hub.compile(optimizer=keras.optimizers.AdamW(1e-4), loss=loss)
    results["keras-hub"] = per_second(lambda: hub.train_on_batch(x, y), steps)
    del hub, backbone
    if keras.backend.backend() == "torch":
        results["transformers"] = _transformers_steps_per_second(x, y, steps)
    return results


def _transformers_steps_per_second(images, labels, steps):
    """A plain transformers PyTorch training loop on the same (NHWC) batch."""
    import torch
    import transformers

    config = transformers.DeiTConfig(hidden_size=TINY["hidden"], num_attention_heads=TINY["heads"],
                                     intermediate_size=4 * TINY["hidden"], num_labels=1000)
    model = transformers.DeiTForImageClassification._from_config(config, attn_implementation="sdpa")
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = torch.from_numpy(images.transpose(0, 3, 1, 2).copy())
    y = torch.from_numpy(labels)

    def step():
        optimizer.zero_grad(set_to_none=True)
        loss = torch.nn.functional.cross_entropy(model(pixel_values=x).logits, y)
        loss.backward()
        optimizer.step()

    return per_second(step, steps)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child_keras(args.batch, args.steps)))
        return

    best, torch_ratios = {}, []  # torch_ratios: ours / transformers within each torch process
    for round_index in range(args.rounds):
        for backend in BACKENDS:
            print(f"round {round_index + 1}/{args.rounds}: {backend}", file=sys.stderr)
            measured = run_child(__file__, backend, "--batch", str(args.batch),
                                 "--steps", str(args.steps))
            if backend == "torch":
                torch_ratios.append(measured["ours"] / measured["transformers"])
            for impl, value in measured.items():
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
    print(f"\ntransformers PyTorch loop (SDPA): {best['transformers']:.3f} steps/s; ours / "
          "transformers on the torch backend, round by round (same process): "
          + ", ".join(f"{r:.2f}x" for r in torch_ratios))


if __name__ == "__main__":
    main()
