"""Reduced precision at inference: bfloat16 and float16 dtype policies against float32.

For each backend a child process builds our DeiTForImageClassificationWithTeacher (random
weights of the real architecture), copies its float32 weights into the same model under the
"bfloat16" and "float16" policies, and measures, alternating the three policies round by
round: images/s of `predict_on_batch` on a random batch, and on real photographs (the digit
scans in keras_deit/data/examples, resized and normalized as DeiT's processor does) the max-abs
difference of the logits and the top-1 agreement with float32. With random weights the classes
mean nothing; agreement measures how far the precision moves the logits. Reduced precision is
only fast where the CPU has the instructions (AVX-512 BF16 / AMX for bfloat16, AVX-512 FP16 or
AMX-FP16 for float16): the flags found are printed with the table.

    python benchmarks/precision.py                          # deit-tiny, batch 8, 3 backends
    python benchmarks/precision.py --sizes tiny,base --batch 8 --rounds 3 --seconds 3
    python benchmarks/precision.py --backends jax --sizes test --rounds 1 --seconds 0.2
    python benchmarks/precision.py --backends torch --sizes base --policies float32,bfloat16

(`--policies`: float32 is always measured, as the reference. On a CPU without float16
instructions, PyTorch's float16 deit-base takes minutes per batch: leave it out there.)
"""

import argparse
import json
import statistics
import sys

from deploy_speed import SIZES, photographs, top1_agreement
from harness import per_second, run_child

BACKENDS = ("tensorflow", "jax", "torch")
POLICIES = ("float32", "bfloat16", "float16")
FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "avx512_fp16", "amx_bf16", "amx_fp16")


def cpu_flags():
    """The instruction-set flags of FLAGS this CPU reports (Linux /proc/cpuinfo), or "unknown"."""
    try:
        with open("/proc/cpuinfo") as info:
            flags = next(line for line in info if line.startswith("flags")).split()
    except (OSError, StopIteration):
        return "unknown"
    return " ".join(f for f in FLAGS if f in flags) or "none of " + " ".join(FLAGS)


def child(sizes, batch, rounds, seconds, policies=POLICIES):
    """{"<policy>/<size>": {"img/s", "max_abs", "top1"}} on the current backend."""
    import keras
    import numpy as np

    import keras_deit as kd

    results = {}
    for size in sizes:
        hidden, layers, heads, image, patch, classes = SIZES[size]
        config = kd.DeiTConfig(hidden_size=hidden, num_hidden_layers=layers,
                               num_attention_heads=heads, intermediate_size=4 * hidden,
                               image_size=image, patch_size=patch, num_labels=classes,
                               layer_norm_eps=1e-12)
        keras.utils.set_random_seed(0)
        reference = kd.DeiTForImageClassificationWithTeacher(config)
        models = {"float32": reference}
        for policy in [p for p in policies if p != "float32"]:
            models[policy] = kd.DeiTForImageClassificationWithTeacher(config, dtype=policy)
            models[policy].set_weights(reference.get_weights())
        photos = photographs(image)

        def logits(model, x):
            out = model.predict_on_batch(x)["logits"]
            return np.asarray(keras.ops.convert_to_numpy(keras.ops.cast(out, "float32")))

        expected = logits(reference, photos)
        x = np.random.default_rng(0).standard_normal((batch, image, image, 3)).astype("float32")
        rates = {policy: [] for policy in models}
        for _ in range(rounds):
            for policy, model in models.items():
                rates[policy].append(batch * per_second(
                    lambda: model.predict_on_batch(x), 2, seconds, warmup=2))
        for policy, model in models.items():
            got = logits(model, photos)
            results[f"{policy}/{size}"] = {
                "img/s": statistics.median(rates[policy]),
                "max_abs": float(np.max(np.abs(got - expected))),
                "top1": top1_agreement(got, expected),
            }
        keras.backend.clear_session()
    return results


def _policies(text):
    """"bfloat16,float32" -> ("float32", "bfloat16"): float32 first (the reference), each once;
    an unknown name is refused."""
    names = [name for name in text.split(",") if name]
    unknown = sorted(set(names) - set(POLICIES))
    if unknown:
        raise argparse.ArgumentTypeError(
            f"unknown policies {unknown}: choose from {', '.join(POLICIES)}")
    return tuple(p for p in POLICIES if p == "float32" or p in names)


def main(argv=None):
    """Runs one child per backend and prints the table; returns {backend: results}."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="tiny", type=lambda s: s.split(","))
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--backends", default=",".join(BACKENDS), type=lambda s: s.split(","))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=2.0, help="timing window per policy")
    parser.add_argument("--policies", default=",".join(POLICIES), type=_policies,
                        help="comma-separated, of " + ",".join(POLICIES))
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    common = ["--sizes", ",".join(args.sizes), "--batch", str(args.batch),
              "--rounds", str(args.rounds), "--seconds", str(args.seconds),
              "--policies", ",".join(args.policies)]
    if args.child:
        print(json.dumps(child(args.sizes, args.batch, args.rounds, args.seconds,
                               args.policies)))
        return None
    measured = {}
    for backend in args.backends:
        print(f"precision on {backend}", file=sys.stderr)
        measured[backend] = run_child(__file__, backend, *common)
    print(f"\nCPU flags: {cpu_flags()}; batch {args.batch}; random weights; agreement on "
          f"{len(photographs(32))} photographs\n")
    print("| backend | size | policy | img/s | vs float32 | max-abs logits | top-1 |")
    print("|---|---|---|---|---|---|---|")
    for backend, results in measured.items():
        for size in args.sizes:
            base = results[f"float32/{size}"]["img/s"]
            for policy in args.policies:
                r = results[f"{policy}/{size}"]
                print(f"| {backend} | {size} | {policy} | {r['img/s']:.1f} | "
                      f"{r['img/s'] / base:.2f}x | {r['max_abs']:.3g} | {r['top1']:.2f} |")
    return measured


if __name__ == "__main__":
    main()
