"""File size and CPU latency of each export format, from one model, in one run.

Builds DeiTForImageClassificationWithTeacher with random weights (deit-tiny distilled: 224px,
1000 classes), exports it with `keras_deit.export.export_models` (each file verified against
Keras on the way), then times batch-1 inference of each form: Keras `predict_on_batch` on the
current backend, the SavedModel's serving signature (`tf.saved_model.load`), and the TFLite
float32 / float16 / int8 files with the standalone LiteRT interpreter (optionally ONNX with
onnxruntime). Prints a markdown table: size on disk, median and best latency over N runs after a
warm-up, max-abs difference of the logits vs Keras.

    python benchmarks/export_size_latency.py                  # deit-tiny, 50 runs
    KERAS_BACKEND=jax python benchmarks/export_size_latency.py --runs 100 --onnx
    python benchmarks/export_size_latency.py --quick          # tiny config, a few runs (smoke)

The machine is shared: read ratios, not absolutes. Needs tensorflow and ai-edge-litert (plus
torch, onnx, onnxscript, onnxruntime for --onnx).
"""

import argparse
import os
import statistics
import sys
import tempfile
import time

import numpy as np


def _time(step, runs, warmup):
    """(median, best) milliseconds of `step()` over `runs` calls, after `warmup` calls."""
    for _ in range(warmup):
        step()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        step()
        times.append(1000 * (time.perf_counter() - start))
    return statistics.median(times), min(times)


def _build_model(quick):
    import keras_deit as kd

    if quick:  # The tests' tiny architecture: seconds, not minutes.
        config = kd.DeiTConfig(hidden_size=48, num_hidden_layers=2, num_attention_heads=3,
                               intermediate_size=96, image_size=32, patch_size=8, num_labels=5)
    else:
        config = kd.DeiTConfig.from_preset("deit_tiny_distilled_patch16_224")
    return kd.DeiTForImageClassificationWithTeacher(config)


def _size(path):
    if os.path.isfile(path):
        return os.path.getsize(path)
    return sum(os.path.getsize(os.path.join(root, name))
               for root, _, names in os.walk(path) for name in names)


def main(argv=None):
    """Runs the benchmark and prints the table; returns the exit code."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="tiny config (hidden 48, 2 layers, 32px) and 5 runs: a smoke test")
    parser.add_argument("--runs", type=int, help="timed runs per form (default 50; 5 quick)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed runs first (default 3)")
    parser.add_argument("--threads", type=int, default=os.cpu_count(),
                        help="LiteRT interpreter threads (default: all cores, as TF and Keras)")
    parser.add_argument("--onnx", action="store_true", help="add an ONNX (onnxruntime) row")
    args = parser.parse_args(argv)
    runs = args.runs or (5 if args.quick else 50)

    import keras

    from keras_deit import export as ex

    model = _build_model(args.quick)
    height, width = model.config.image_hw
    x = np.random.default_rng(0).standard_normal((1, height, width, 3)).astype("float32")
    rows = []  # (form, size in bytes, median ms, best ms, max-abs vs Keras)

    with tempfile.TemporaryDirectory() as folder:
        keras_file = os.path.join(folder, "model.keras")
        model.save(keras_file)
        reference = np.asarray(keras.ops.convert_to_numpy(model.predict_on_batch(x)["logits"]))
        median, best = _time(lambda: model.predict_on_batch(x), runs, args.warmup)
        rows.append((f"Keras ({keras.backend.backend()}, predict_on_batch)", _size(keras_file),
                     median, best, 0.0))

        requests = [
            ("SavedModel", os.path.join(folder, "saved_model"), "saved_model", None),
            ("TFLite float32", os.path.join(folder, "f32.tflite"), "tflite", None),
            ("TFLite float16", os.path.join(folder, "f16.tflite"), "tflite", "float16"),
            ("TFLite int8 (dynamic range)", os.path.join(folder, "int8.tflite"), "tflite", "int8"),
        ]
        if args.onnx:
            requests.append(("ONNX (onnxruntime)", os.path.join(folder, "model.onnx"), "onnx",
                             None))
        start = time.perf_counter()
        results = ex.export_models(model, [r[1:] for r in requests])
        print(f"exported {len(results)} files in {time.perf_counter() - start:.0f} s",
              file=sys.stderr)

        for (label, path, format, _), result in zip(requests, results):
            step = _runner(path, format, x, args.threads)
            logits = step()["logits"]
            median, best = _time(step, runs, args.warmup)
            rows.append((label, result.size_bytes, median, best,
                         float(np.max(np.abs(np.asarray(logits) - reference)))))

    name = "tiny config (hidden 48, 2 layers, 32px, 5 classes)" if args.quick else (
        "deit-tiny distilled (224px, 1000 classes)")
    print(f"\n{name}, random weights, batch 1, CPU, {runs} runs after {args.warmup} warm-up; "
          f"LiteRT threads: {args.threads}\n")
    print("| form | size (MB) | median (ms) | best (ms) | max-abs logits vs Keras |")
    print("|---|---|---|---|---|")
    for label, size, median, best, diff in rows:
        print(f"| {label} | {size / 1e6:.2f} | {median:.2f} | {best:.2f} | {diff:.2g} |")
    return 0


def _runner(path, format, x, threads):
    """A no-argument callable running one batch through the exported file."""
    if format == "saved_model":
        import tensorflow as tf

        serve = tf.saved_model.load(path).signatures["serving_default"]
        tensor = tf.constant(x)
        return lambda: serve(pixel_values=tensor)
    if format == "tflite":
        from ai_edge_litert.interpreter import Interpreter

        interpreter = Interpreter(model_path=path, num_threads=threads)
        runner = interpreter.get_signature_runner("serving_default")
        return lambda: runner(pixel_values=x)
    import onnxruntime

    session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return lambda: dict(zip(names, session.run(names, {"pixel_values": x})))


if __name__ == "__main__":
    sys.exit(main())
