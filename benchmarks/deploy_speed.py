"""What a CPU user would deploy, side by side in one run: latency, img/s, size, agreement.

Paths (random weights of the real architectures; no hub access needed):
- transformers' DeiT (PyTorch, with teacher) exported by `torch.onnx.export` and run by ONNX
  Runtime, in float32 and in ONNX Runtime's dynamic int8 (`quantize_dynamic`);
- ours exported by `keras_deit.export.export_model`: ONNX in ONNX Runtime, TFLite float32 and
  int8 (dynamic range) in the LiteRT interpreter (XNNPACK), the SavedModel's signature;
- ours in Keras after `model.quantize("int8")`, on the current Keras backend.

For each size and batch, the paths alternate round by round in this process (the machine may
be shared: read the ratios), and the median per-call latency over all rounds is kept.
Agreement: the top-1 class of each path against its own float32 model (transformers PyTorch
for the transformers rows, our Keras model for ours) on real photographs, the digit scans in
keras_deit/data/examples resized to the model's input. With random weights the classes mean
nothing, but agreement still measures how far the numerics of an export move the logits.

    python benchmarks/deploy_speed.py                       # tiny and base, batch 1 and 8
    python benchmarks/deploy_speed.py --quick               # tiny, batch 1, 2 rounds
    python benchmarks/deploy_speed.py --sizes base --batches 8 --rounds 5 --seconds 3

Needs transformers, torch, onnx, onnxruntime, tensorflow and ai-edge-litert.
"""

import argparse
import glob
import os
import statistics
import sys
import tempfile
import time

import numpy as np

SIZES = {  # name: (hidden, layers, heads, image size, patch size, classes)
    "tiny": (192, 12, 3, 224, 16, 1000),
    "base": (768, 12, 12, 224, 16, 1000),
    # The tests' architecture: seconds, not minutes (for the smoke test).
    "test": (48, 2, 3, 32, 8, 5),
}
PATHS = ("transformers-onnx", "transformers-onnx-int8", "ours-onnx", "ours-tflite",
         "ours-tflite-int8", "ours-saved-model", "keras-int8")
EXAMPLES = os.path.join(os.path.dirname(__file__), "..", "keras_deit", "data", "examples")
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def photographs(image_size):
    """The example photographs as (count, size, size, 3) float32 NHWC, normalized as DeiT's
    image processor does (bicubic resize, ImageNet mean and std)."""
    from PIL import Image

    images = []
    for path in sorted(glob.glob(os.path.join(EXAMPLES, "*.png"))):
        image = Image.open(path).convert("RGB").resize((image_size, image_size), Image.BICUBIC)
        images.append((np.asarray(image, "float32") / 255 - IMAGENET_MEAN) / IMAGENET_STD)
    return np.stack(images).astype("float32")


def file_size(path):
    """Bytes on disk of a file, or of every file under a folder."""
    if os.path.isfile(path):
        return os.path.getsize(path)
    return sum(os.path.getsize(os.path.join(root, name))
               for root, _, names in os.walk(path) for name in names)


def top1_agreement(logits, reference):
    """Fraction of rows whose argmax is the same: (n, classes) x (n, classes) -> float."""
    return float(np.mean(np.argmax(logits, -1) == np.argmax(reference, -1)))


def median_ms(step, seconds, warmup=1):
    """Per-call milliseconds of `step()` during about `seconds` (at least 2 calls)."""
    for _ in range(warmup):
        step()
    times, start = [], time.perf_counter()
    while len(times) < 2 or time.perf_counter() - start < seconds:
        begin = time.perf_counter()
        step()
        times.append(1000 * (time.perf_counter() - begin))
    return times


def _transformers_paths(size, folder, wanted):
    """{path: (runner of an NHWC batch -> logits, file)} and the float32 PyTorch runner."""
    import torch
    import transformers

    hidden, layers, heads, image, patch, classes = SIZES[size]
    config = transformers.DeiTConfig(hidden_size=hidden, num_hidden_layers=layers,
                                     num_attention_heads=heads, intermediate_size=4 * hidden,
                                     image_size=image, patch_size=patch, num_labels=classes)
    torch.manual_seed(0)
    model = transformers.DeiTForImageClassificationWithTeacher._from_config(
        config, attn_implementation="sdpa").eval()

    def reference(x):
        with torch.inference_mode():
            return model(torch.from_numpy(x.transpose(0, 3, 1, 2).copy())).logits.numpy()

    paths = {}
    if not {"transformers-onnx", "transformers-onnx-int8"} & set(wanted):
        return paths, reference
    onnx_file = os.path.join(folder, f"transformers-{size}.onnx")

    class Logits(torch.nn.Module):  # the averaged logits alone, as one named output
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, pixel_values):
            return self.inner(pixel_values).logits

    torch.onnx.export(Logits(model), (torch.zeros(1, 3, image, image),), onnx_file,
                      input_names=["pixel_values"], output_names=["logits"],
                      dynamic_axes={"pixel_values": {0: "batch"}, "logits": {0: "batch"}},
                      opset_version=17, dynamo=False)
    if "transformers-onnx" in wanted:
        paths["transformers-onnx"] = (_onnx_runner(onnx_file, nchw=True), onnx_file)
    if "transformers-onnx-int8" in wanted:
        from onnxruntime.quantization import QuantType, quantize_dynamic

        int8_file = os.path.join(folder, f"transformers-{size}-int8.onnx")
        quantize_dynamic(onnx_file, int8_file, weight_type=QuantType.QInt8)
        paths["transformers-onnx-int8"] = (_onnx_runner(int8_file, nchw=True), int8_file)
    return paths, reference


def _onnx_runner(path, nchw):
    """An ONNX Runtime session as a function of an NHWC batch -> logits."""
    import onnxruntime

    session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    output = [o.name for o in session.get_outputs()].index("logits")

    def run(x):
        feed = np.ascontiguousarray(x.transpose(0, 3, 1, 2)) if nchw else x
        return session.run(None, {name: feed})[output]

    return run


def _tflite_runner(path, threads):
    """A LiteRT interpreter (its default XNNPACK delegate) as a function of an NHWC batch."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=path, num_threads=threads)
    runner = interpreter.get_signature_runner("serving_default")
    return lambda x: runner(pixel_values=x)["logits"]


def _saved_model_runner(path):
    import tensorflow as tf

    serve = tf.saved_model.load(path).signatures["serving_default"]
    return lambda x: serve(pixel_values=tf.constant(x))["logits"].numpy()


def _our_paths(size, folder, wanted, threads):
    """{path: (runner, file)} for our exports and Keras int8, and our float32 Keras runner."""
    import keras

    import keras_deit as kd
    from keras_deit import export as ex

    hidden, layers, heads, image, patch, classes = SIZES[size]
    config = kd.DeiTConfig(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                           intermediate_size=4 * hidden, image_size=image, patch_size=patch,
                           num_labels=classes, layer_norm_eps=1e-12)
    keras.utils.set_random_seed(0)
    model = kd.DeiTForImageClassificationWithTeacher(config)

    def logits_of(keras_model):
        return lambda x: np.asarray(
            keras.ops.convert_to_numpy(keras_model.predict_on_batch(x)["logits"]))

    exports = {  # path: (file name, format, quantize, runner of the file)
        "ours-onnx": ("ours.onnx", "onnx", None, lambda p: _onnx_runner(p, nchw=False)),
        "ours-tflite": ("ours.tflite", "tflite", None, lambda p: _tflite_runner(p, threads)),
        "ours-tflite-int8": ("ours-int8.tflite", "tflite", "int8",
                             lambda p: _tflite_runner(p, threads)),
        "ours-saved-model": ("ours-saved-model", "saved_model", None, _saved_model_runner),
    }
    chosen = [p for p in exports if p in wanted]
    requests = [(os.path.join(folder, f"{size}-{exports[p][0]}"), *exports[p][1:3])
                for p in chosen]
    paths = {}
    if requests:
        start = time.perf_counter()
        results = ex.export_models(model, requests)
        print(f"{size}: exported {len(results)} files in {time.perf_counter() - start:.0f} s",
              file=sys.stderr)
        for path, result in zip(chosen, results):
            paths[path] = (exports[path][3](result.path), result.path)
    reference = logits_of(model)
    if "keras-int8" in wanted:
        quantized = kd.DeiTForImageClassificationWithTeacher(config)
        quantized.set_weights(model.get_weights())
        quantized.quantize("int8")
        keras_file = os.path.join(folder, f"{size}-int8.keras")
        quantized.save(keras_file)
        paths["keras-int8"] = (logits_of(quantized), keras_file)
    return paths, reference


def measure(sizes, batches, wanted, rounds, seconds, threads):
    """Rows of {"path", "size", "batch", "ms", "img/s", "MB", "top-1"} for every path, size and
    batch; the paths alternate within each round."""
    import keras

    rows = []
    for size in sizes:
        image = SIZES[size][3]
        photos = photographs(image)
        with tempfile.TemporaryDirectory() as folder:
            theirs, their_reference = _transformers_paths(size, folder, wanted)
            ours, our_reference = _our_paths(size, folder, wanted, threads)
            paths = {**theirs, **ours}
            agreement = {}
            for name, (run, _) in paths.items():
                reference = their_reference if name.startswith("transformers") else our_reference
                one_by_one = [(run(photos[i:i + 1]), reference(photos[i:i + 1]))
                              for i in range(len(photos))]
                agreement[name] = top1_agreement(np.concatenate([a for a, _ in one_by_one]),
                                                 np.concatenate([b for _, b in one_by_one]))
            for batch in batches:
                x = np.random.default_rng(batch).standard_normal(
                    (batch, image, image, 3)).astype("float32")
                times = {name: [] for name in paths}
                for _ in range(rounds):
                    for name, (run, _) in paths.items():
                        times[name] += median_ms(lambda: run(x), seconds)
                for name, (_, file) in paths.items():
                    ms = statistics.median(times[name])
                    label = f"{name} ({keras.backend.backend()})" if name == "keras-int8" else name
                    rows.append({"path": label, "size": size, "batch": batch, "ms": ms,
                                 "img/s": 1000 * batch / ms, "MB": file_size(file) / 1e6,
                                 "top-1": agreement[name]})
    return rows


def table(rows):
    """The rows as a markdown table (one line per path, size and batch)."""
    lines = ["| path | size | batch | median ms | img/s | file MB | top-1 vs float32 |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['path']} | {r['size']} | {r['batch']} | {r['ms']:.1f} | "
                     f"{r['img/s']:.1f} | {r['MB']:.1f} | {r['top-1']:.2f} |")
    return "\n".join(lines)


def main(argv=None):
    """Runs the benchmark and prints the table; returns the rows."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="tiny,base", type=lambda s: s.split(","),
                        help=f"of {sorted(SIZES)}")
    parser.add_argument("--batches", default="1,8", type=lambda s: [int(b) for b in s.split(",")])
    parser.add_argument("--paths", default=",".join(PATHS), type=lambda s: s.split(","),
                        help=f"of {PATHS}")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=2.0, help="timing window per path")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="LiteRT threads")
    parser.add_argument("--quick", action="store_true",
                        help="deit-tiny, batch 1, 2 rounds of 0.5 s (overrides those flags)")
    args = parser.parse_args(argv)
    if args.quick:
        args.sizes = [s for s in args.sizes if s == "test"] or ["tiny"]
        args.batches, args.rounds, args.seconds = [1], 2, 0.5
    unknown = set(args.paths) - set(PATHS) or set(args.sizes) - set(SIZES)
    if unknown:
        parser.error(f"unknown: {sorted(unknown)}")
    rows = measure(args.sizes, args.batches, args.paths, args.rounds, args.seconds, args.threads)
    print(f"\nrandom weights; {args.rounds} rounds of {args.seconds} s per path, alternating; "
          f"{os.cpu_count()} CPU threads\n")
    print(table(rows))
    return rows


if __name__ == "__main__":
    main()
