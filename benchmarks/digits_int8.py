"""Accuracy of the built-in digits model after export: Keras vs TFLite float32 / float16 / int8.

Exports `keras_deit/data/deit_digits/model.keras` to TFLite (builtin ops only) and measures top-1
accuracy on the held-out digits test split (the split of `distillation_experiment.py`, through
the model's own preprocessing), and how often each file agrees with Keras' top-1.

    python benchmarks/digits_int8.py
"""

import os
import sys
import tempfile

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from distillation_experiment import load_split, preprocess  # noqa: E402


def main():
    import keras

    from keras_deit import export
    from keras_deit.inference import BUILTIN_MODELS

    _, test_idx, images8, labels = load_split()
    pixels, labels = preprocess(images8[test_idx]), labels[test_idx]
    model = keras.saving.load_model(BUILTIN_MODELS["deit-digits"])
    reference = np.asarray(model.predict(pixels, verbose=0)["logits"])
    rows = [("Keras", float(np.mean(reference.argmax(-1) == labels)), 1.0, 0.0, None)]
    with tempfile.TemporaryDirectory() as folder:
        requests = [(os.path.join(folder, f"digits_{q or 'float32'}.tflite"), "tflite", q)
                    for q in (None, "float16", "int8")]
        export.export_models(model, requests)
        for path, _, quantize in requests:
            logits = export.run_tflite(path, pixels)["logits"]
            rows.append((
                f"TFLite {quantize or 'float32'}",
                export.evaluate_accuracy(path, pixels, labels),
                float(np.mean(logits.argmax(-1) == reference.argmax(-1))),
                float(np.abs(logits - reference).max()),
                os.path.getsize(path),
            ))
    print(f"Built-in digits model on the {len(labels)}-image digits test split "
          f"(backend {keras.backend.backend()}).\n")
    print("| model | top-1 accuracy | change | top-1 agreement with Keras | max-abs logits | size |")
    print("|---|---|---|---|---|---|")
    base = rows[0][1]
    for name, acc, agree, diff, size in rows:
        size_text = "-" if size is None else f"{size / 1024:.0f} KB"
        print(f"| {name} | {acc:.2%} | {acc - base:+.2%} | {agree:.2%} | {diff:.1e} | {size_text} |")


if __name__ == "__main__":
    main()
