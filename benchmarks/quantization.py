"""Keras quantization of the whole model: size, agreement with float32, accuracy, latency.

For each mode of `model.quantize` ("int8", "int4", "float8"), on the current Keras backend:

- deit-tiny with teacher (random weights, 224x224): `.keras` file size, max-abs difference of
  the logits from float32 and top-1 agreement on scikit-learn's sample photographs (ImageNet
  normalization), and the median latency of `predict_on_batch` at batch 1 and 8 against float32;
- the built-in deit-digits model (trained): top-1 accuracy on the held-out digits test split;
- whether the quantized model exports through `keras_deit.export` (SavedModel, TFLite, ONNX).

    KERAS_BACKEND=jax python benchmarks/quantization.py
    python benchmarks/quantization.py --all-backends   # one child process per backend
"""

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

MODES = ("float32", "int8", "int4", "float8")
MEAN, STD = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])


def median_ms(step, repeats):
    for _ in range(3):
        step()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def measure(repeats, exports_too=True):
    import keras

    import keras_deit as kd
    from distillation_experiment import load_split, preprocess
    from keras_deit import export
    from keras_deit.inference import BUILTIN_MODELS

    backend = keras.backend.backend()
    photos = export.sample_photos(8).astype("float32") / 255.0
    photos = ((photos - MEAN) / STD).astype("float32")
    _, test_idx, images8, labels = load_split()
    digits, digit_labels = preprocess(images8[test_idx]), labels[test_idx]

    config = kd.DeiTConfig.from_preset("deit_tiny_distilled_patch16_224")
    keras.utils.set_random_seed(0)
    float_model = kd.DeiTForImageClassificationWithTeacher(config)
    folder = tempfile.mkdtemp()
    float_model.save_weights(os.path.join(folder, "float.weights.h5"))
    reference = keras.ops.convert_to_numpy(float_model.predict_on_batch(photos)["logits"])
    rows = []
    for mode in MODES:
        model = kd.DeiTForImageClassificationWithTeacher(config)
        model.load_weights(os.path.join(folder, "float.weights.h5"))
        digits_model = keras.saving.load_model(BUILTIN_MODELS["deit-digits"])
        if mode != "float32":
            model.quantize(mode)
            digits_model.quantize(mode)
        path = os.path.join(folder, f"{mode}.keras")
        model.save(path)
        logits = keras.ops.convert_to_numpy(model.predict_on_batch(photos)["logits"])
        predicted = keras.ops.convert_to_numpy(
            digits_model.predict(digits, batch_size=64, verbose=0)["logits"]).argmax(-1)
        one, eight = photos[:1], photos[:8]
        exports = {}
        for fmt in ("saved_model", "tflite", "onnx"):
            if mode == "float32" or not exports_too:
                continue
            out = os.path.join(folder, f"{mode}.{fmt}")
            try:
                export.export_model(model, out, fmt)
                exports[fmt] = "ok"
            except Exception as e:  # noqa: BLE001 - the report says what each format did
                exports[fmt] = f"{type(e).__name__}: {str(e).splitlines()[0][:120]}"
        rows.append(dict(
            mode=mode, size_mb=os.path.getsize(path) / 2**20,
            max_abs=float(np.abs(logits - reference).max()),
            top1_agreement=float(np.mean(logits.argmax(-1) == reference.argmax(-1))),
            digits_accuracy=float(np.mean(predicted == digit_labels)),
            b1_ms=median_ms(lambda: model.predict_on_batch(one), repeats),
            b8_ms=median_ms(lambda: model.predict_on_batch(eight), max(3, repeats // 4)),
            exports=exports,
        ))
    base = rows[0]
    print(f"backend {backend}: deit-tiny with teacher on 8 sample photos; deit-digits on "
          f"{len(digit_labels)} test digits")
    print("| mode | .keras MB | max-abs vs f32 | top-1 agreement | digits accuracy | "
          "b1 ms (x f32) | b8 ms (x f32) |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['mode']} | {r['size_mb']:.1f} | {r['max_abs']:.2e} | "
              f"{r['top1_agreement']:.3f} | {r['digits_accuracy']:.4f} | "
              f"{r['b1_ms']:.1f} ({r['b1_ms'] / base['b1_ms']:.2f}) | "
              f"{r['b8_ms']:.1f} ({r['b8_ms'] / base['b8_ms']:.2f}) |")
    for r in rows[1:] if exports_too else []:
        print(f"export {r['mode']}: " + "; ".join(f"{k} {v}" for k, v in r["exports"].items()))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--all-backends", action="store_true")
    parser.add_argument("--skip-export", action="store_true",
                        help="skip the export probes (they do not depend on the backend)")
    args = parser.parse_args()
    if not args.all_backends:
        return measure(args.repeats, not args.skip_export)
    for backend in ("tensorflow", "jax", "torch"):
        subprocess.run([sys.executable, os.path.abspath(__file__), "--repeats",
                        str(args.repeats)] + ["--skip-export"] * args.skip_export, env=dict(os.environ, KERAS_BACKEND=backend),
                       check=True)


if __name__ == "__main__":
    main()
