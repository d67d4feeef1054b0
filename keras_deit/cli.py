"""The `keras-deit` command: classify images, convert checkpoints.

    keras-deit predict IMAGE... [--model SOURCE] [--top-k 5] [--backend jax|tensorflow|torch]
    keras-deit convert SOURCE OUTPUT [...]       (same as `python -m conversion`)
    keras-deit export SOURCE --format saved_model|tflite|onnx [--quantize float16|int8]
        [--with-preprocessing] [--input-size HxW] [--overwrite] OUTPUT

Errors are one line on stderr and exit code 2, never a traceback.
"""

import argparse
import os
import sys

BACKENDS = ("tensorflow", "jax", "torch")
# Models shipped inside the package (name -> .keras file, beside its preprocessor_config.json),
# so that `keras-deit predict` works offline. deit-digits: a distilled DeiT trained on
# scikit-learn's 8x8 digits (benchmarks/distillation_experiment.py).
BUILTIN_MODELS = {
    "deit-digits": os.path.join(os.path.dirname(__file__), "data", "deit_digits", "model.keras"),
}
DEFAULT_MODEL = "deit-digits"


def _parser():
    parser = argparse.ArgumentParser(
        prog="keras-deit",
        description="DeiT image classifiers for Keras 3 (TensorFlow, JAX, PyTorch).",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.required = True

    predict = commands.add_parser(
        "predict",
        help="print the top-k labels of images",
        description="Classify images and print the top-k labels with their probabilities. "
        "The images are preprocessed as the checkpoint expects (its "
        "preprocessor_config.json, its preset's recipe, or the original DeiT recipe).",
    )
    predict.add_argument("images", nargs="+", metavar="IMAGE", help="image files (JPEG, PNG, ...)")
    predict.add_argument(
        "--model", default=DEFAULT_MODEL, metavar="SOURCE",
        help="a built-in model (" + ", ".join(BUILTIN_MODELS) + "), a .keras file, an HF "
        "folder, a .pth/.safetensors file, a preset name, a hub id or a URL (see `keras-deit "
        f"convert --help`). Default: {DEFAULT_MODEL}, a small distilled DeiT bundled with the "
        "package that reads handwritten digits (white on black), e.g. "
        "keras_deit/data/examples/*.png",
    )
    predict.add_argument("--top-k", type=int, default=5, help="labels to print per image (default 5)")
    predict.add_argument("--backend", choices=BACKENDS,
                         help="Keras backend (default: $KERAS_BACKEND, else tensorflow)")

    export = commands.add_parser(
        "export",
        help="write a SavedModel, TFLite or ONNX file, verified against the Keras model",
        description="Export a classifier as a TensorFlow SavedModel (folder), a TFLite file "
        "(builtin ops only; float32, float16 or int8 dynamic-range) or an ONNX file, then load "
        "it with its own runtime and compare it with the Keras model. The output is written "
        "atomically. See keras_deit/export.py for the design.",
    )
    from keras_deit.export import add_export_arguments

    add_export_arguments(export)
    export.add_argument("--backend", choices=BACKENDS,
                        help="Keras backend to load the model on (default: $KERAS_BACKEND, else "
                        "tensorflow); any works")

    commands.add_parser(
        "convert", add_help=False,
        help="convert a checkpoint into a .keras model (python -m conversion); "
        "`keras-deit convert --help` for its options",
    )
    return parser


def main(argv=None):
    """Entry point of the `keras-deit` console script; returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["convert"]:
        from conversion.cli import main as convert

        return convert(argv[1:], prog="keras-deit convert")
    args = _parser().parse_args(argv)
    if args.backend and os.environ.get("KERAS_BACKEND") != args.backend:
        _reexec_with_backend(args.backend, argv)
    try:
        if args.command == "export":
            from keras_deit.export import export_command

            return export_command(args)
        return predict(args.images, args.model, args.top_k)
    except (ValueError, OSError, ImportError) as e:
        print(f"keras-deit: error: {_one_line(e)}", file=sys.stderr)
        return 2


def _reexec_with_backend(backend, argv):
    """Keras fixes its backend when first imported, which `keras_deit` already did: start
    again with KERAS_BACKEND set."""
    env = dict(os.environ, KERAS_BACKEND=backend)
    os.execve(sys.executable, [sys.executable, "-m", "keras_deit.cli", *argv], env)


def _one_line(error):
    text = str(error).strip() or type(error).__name__
    return " ".join(text.split())


def predict(images, source, top_k=5, out=None):
    """Classifies `images` (paths) with the model from `source`; prints the top-k labels."""
    import numpy as np

    out = out or sys.stdout
    if top_k < 1:
        raise ValueError(f"--top-k must be at least 1. Received: {top_k}")
    from keras_deit.image_processing import load_image

    pictures = [load_image(path) for path in images]  # fail on a bad image before loading
    model, processor = load_classifier(source)
    labels = class_names(model.config)
    if getattr(model, "include_preprocessing", None):
        # The model preprocesses raw images itself, one size at a time; called eagerly, as a
        # TensorFlow graph would need every size known in advance.
        logits = np.concatenate([_eager_logits(model, np.asarray(p)[None]) for p in pictures])
    else:
        pixel_values = processor(pictures)["pixel_values"]
        logits = np.asarray(model.predict(pixel_values, verbose=0)["logits"], "float64")
    probabilities = np.exp(logits - logits.max(-1, keepdims=True))
    probabilities /= probabilities.sum(-1, keepdims=True)
    for path, row in zip(images, probabilities):
        print(path, file=out)
        for rank, index in enumerate(np.argsort(-row)[: min(top_k, len(row))], start=1):
            print(f"  {rank}. {labels[index]}  {row[index]:.4f}", file=out)
    return 0


def _eager_logits(model, images):
    """float64 `logits` of `model` on `images`, called eagerly."""
    import keras
    import numpy as np

    return np.asarray(keras.ops.convert_to_numpy(model(images)["logits"]), "float64")


def load_classifier(source):
    """The model for `source` and the image processor its checkpoint expects."""
    from keras_deit.model_preprocessing import processor_for
    from keras_deit.models import DeiTPreTrainedModel
    from keras_deit.saving import load_model

    source = BUILTIN_MODELS.get(source, source)
    if str(source).endswith(".keras"):
        model = load_model(source)
        folder = os.path.dirname(os.path.abspath(source))
    else:
        model = DeiTPreTrainedModel.from_pretrained(source)
        folder = source if os.path.isdir(str(source)) else None
    if not isinstance(model, DeiTPreTrainedModel):
        raise ValueError(
            f"{source} holds a {type(model).__name__}, not a keras_deit DeiT model: convert a "
            "DeiT checkpoint with `keras-deit convert`, or pass one of its sources."
        )
    if "logits" not in model.output:
        raise ValueError(
            f"{source} holds a {type(model).__name__}, which has no classifier: use a "
            "classification checkpoint."
        )
    processor = processor_for(folder, str(source), model.config)
    if getattr(model, "data_format", "channels_last") == "channels_first":
        processor.data_format = "channels_first"
    return model, processor


def class_names(config):
    """Readable class names: the config's labels, or ImageNet's for 1000 generic labels."""
    labels = [config.id2label[i] for i in range(config.num_labels)]
    generic = all(label == f"LABEL_{i}" for i, label in enumerate(labels))
    if generic and config.num_labels == 1000:
        path = os.path.join(os.path.dirname(__file__), "data", "imagenet_classes.txt")
        with open(path, encoding="utf-8") as f:
            return [line.strip() for line in f if line.strip()]
    return labels


if __name__ == "__main__":
    sys.exit(main())
