"""The PyTorch fast paths of keras_deit/kernels.py against their keras.ops references and
against transformers, in one process, call by call.

On the PyTorch backend, times `predict_on_batch` of our DeiTForImageClassificationWithTeacher
twice (the same model: once with the kernels' PyTorch paths, once with every kernel switched to
its `keras.ops` reference) and transformers' PyTorch DeiT (SDPA, `torch.inference_mode`); with
`--train`, also one `train_on_batch` step of ours (both ways) against a plain transformers
AdamW step. The three alternate call by call, so that a loaded machine hits them alike; the
median per-call time of each is kept. Prints transformers / ours: at or above 0.9 meets the
goal, and the minor page faults per call of each (fresh heap pages: a model that holds more
memory alive per call pays them on every call). (The dense fast path is on in both forms of
ours: it is measured against the previous revision in RESULTS.md.)

    python benchmarks/kernels_speed.py                         # tiny and base, batch 1 and 8
    python benchmarks/kernels_speed.py --sizes tiny --batches 1 --calls 60 --threads 1 --train

Runs under KERAS_BACKEND=torch (set here). Needs transformers.
"""

import argparse
import os
import resource
import statistics
import sys
import time

os.environ["KERAS_BACKEND"] = "torch"

SIZES = {"tiny": (192, 3), "base": (768, 12)}
KERNELS = {"_ATTENTION": "attention_reference", "_LAYER_NORM": "layer_norm_reference",
           "_GELU": "gelu_reference", "_PATCH_EMBEDDING": "patch_embedding_reference",
           "_READ": "read_reference"}


def _use(kernels, fast):
    """Switches every kernel of `KERNELS` to its fast path (`fast` True) or its reference."""
    for name, reference in KERNELS.items():
        setattr(kernels, name, _FAST[name] if fast else getattr(kernels, reference))


_FAST = {}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="tiny,base", type=lambda s: s.split(","))
    parser.add_argument("--batches", default="1,8", type=lambda s: [int(b) for b in s.split(",")])
    parser.add_argument("--calls", type=int, default=30, help="timed calls of each, alternating")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: its default)")
    parser.add_argument("--train", action="store_true", help="also a training step (batch 8)")
    args = parser.parse_args(argv)

    import keras
    import numpy as np
    import torch
    import transformers

    import keras_deit as kd
    from keras_deit import kernels

    _FAST.update({name: getattr(kernels, name) for name in KERNELS})
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch threads: {torch.get_num_threads()}; median of {args.calls} alternating calls",
          file=sys.stderr)
    print("| size | batch | step | transformers ms | ours ms | ours, references ms | "
          "ratio | ratio, references | page faults / call: transformers, ours |\n"
          "|---|---|---|---|---|---|---|---|---|")
    for size in args.sizes:
        hidden, heads = SIZES[size]
        ours = kd.DeiTForImageClassificationWithTeacher(kd.DeiTConfig(
            hidden_size=hidden, num_attention_heads=heads, intermediate_size=4 * hidden,
            num_labels=1000, layer_norm_eps=1e-6))
        hf_config = transformers.DeiTConfig(hidden_size=hidden, num_attention_heads=heads,
                                            intermediate_size=4 * hidden, num_labels=1000)
        theirs = transformers.DeiTForImageClassificationWithTeacher._from_config(
            hf_config, attn_implementation="sdpa").eval()
        cells = []
        for batch in args.batches:
            x = np.random.rand(batch, 224, 224, 3).astype("float32")
            pixels = torch.from_numpy(x.transpose(0, 3, 1, 2).copy())

            def forward(pixels=pixels):
                with torch.inference_mode():
                    return theirs(pixels)

            cells.append((batch, "inference", forward, lambda x=x: ours.predict_on_batch(x)))
        if args.train:
            cells.append(_training_cell(size, hidden, heads, kd, keras, np, torch, transformers))
        for batch, step, theirs_call, ours_call in cells:
            times = {"theirs": [], "fast": [], "reference": []}
            faults = {name: 0 for name in times}
            calls = {"theirs": theirs_call,
                     "fast": lambda: (_use(kernels, True), ours_call()),
                     "reference": lambda: (_use(kernels, False), ours_call())}
            for call in calls.values():
                call(), call()
            for _ in range(args.calls):
                for name, call in calls.items():
                    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
                    start = time.perf_counter()
                    call()
                    times[name].append(1000 * (time.perf_counter() - start))
                    faults[name] += resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
            ms = {name: statistics.median(t) for name, t in times.items()}
            print(f"| {size} | {batch} | {step} | {ms['theirs']:.1f} | {ms['fast']:.1f} | "
                  f"{ms['reference']:.1f} | {ms['theirs'] / ms['fast']:.2f}x | "
                  f"{ms['theirs'] / ms['reference']:.2f}x | {faults['theirs'] // args.calls}, "
                  f"{faults['fast'] // args.calls} |", flush=True)
        _use(kernels, True)
        keras.backend.clear_session()


def _training_cell(size, hidden, heads, kd, keras, np, torch, transformers, batch=8):
    """(batch, "training", transformers step, ours step) of DeiTForImageClassification."""
    x = np.random.rand(batch, 224, 224, 3).astype("float32")
    y = np.random.randint(0, 1000, (batch,))
    ours = kd.DeiTForImageClassification(kd.DeiTConfig(
        hidden_size=hidden, num_attention_heads=heads, intermediate_size=4 * hidden,
        num_labels=1000, layer_norm_eps=1e-6))
    ours.compile(optimizer=keras.optimizers.AdamW(1e-4), loss={
        "logits": keras.losses.SparseCategoricalCrossentropy(from_logits=True)})
    model = transformers.DeiTForImageClassification._from_config(
        transformers.DeiTConfig(hidden_size=hidden, num_attention_heads=heads,
                                intermediate_size=4 * hidden, num_labels=1000),
        attn_implementation="sdpa").train()
    optimizer = torch.optim.AdamW(model.parameters(), 1e-4)
    pixels, labels = torch.from_numpy(x.transpose(0, 3, 1, 2).copy()), torch.from_numpy(y)

    def theirs():
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(pixels).logits, labels).backward()
        optimizer.step()

    return batch, "training", theirs, lambda: ours.train_on_batch(x, {"logits": y})


if __name__ == "__main__":
    main()
