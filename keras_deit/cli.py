"""The `keras-deit` command: classify images, convert checkpoints.

    keras-deit predict INPUT... [--model SOURCE] [--top-k 5] [--batch-size 32]
        [--output FILE.csv|FILE.jsonl [--overwrite]] [--backend jax|tensorflow|torch]
    keras-deit convert SOURCE OUTPUT [...]       (same as `python -m keras_deit.conversion`)
    keras-deit train DATA_DIR [--model SOURCE] [--teacher SOURCE] [...] OUTPUT.keras
    keras-deit export SOURCE --format saved_model|tflite|onnx [--quantize float16|int8]
        [--with-preprocessing] [--input-size HxW] [--overwrite] OUTPUT

Errors are one line on stderr and exit code 2, never a traceback. The arguments are parsed and
checked before Keras is imported (this module and `keras_deit/__init__` import no backend), so
`--help` and a bad argument answer at once; TensorFlow's C++ start-up logs are hidden unless
`--verbose` (or the user's own `TF_CPP_MIN_LOG_LEVEL`) asks for them.
"""

import argparse
import os
import sys

from keras_deit.backend_logs import import_backend
from keras_deit.batch_prediction import check_output as check_predict_output  # no Keras
from keras_deit.builtin_models import BUILTIN_MODELS, DEFAULT_MODEL
from keras_deit.export.common import check_format, check_output, require  # no Keras
from keras_deit.training.recipe import DISTILLATION_CHOICES, RECIPES  # no Keras

BACKENDS = ("tensorflow", "jax", "torch")


class _Parser(argparse.ArgumentParser):
    """argparse with the CLI's one-line errors (argparse prints its whole usage first)."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _common_options():
    """--backend and --verbose, which every command but convert takes."""
    common = _Parser(add_help=False)
    common.add_argument("--backend", choices=BACKENDS,
                        help="Keras backend (default: $KERAS_BACKEND, else tensorflow)")
    common.add_argument("--verbose", action="store_true",
                        help="show TensorFlow's C++ logs (hidden by default)")
    return common


def _parser():
    """The argument parser of every command but convert (which parses its own)."""
    common = _common_options()
    parser = _Parser(
        prog="keras-deit",
        description="DeiT image classifiers for Keras 3 (TensorFlow, JAX, PyTorch).",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.required = True

    predict = commands.add_parser(
        "predict", parents=[common],
        help="print the top-k labels of images",
        description="Classify images and print the top-k labels with their probabilities. "
        "The images are preprocessed as the checkpoint expects (its "
        "preprocessor_config.json, its preset's recipe, or the original DeiT recipe).",
    )
    predict.add_argument("images", nargs="+", metavar="INPUT",
                         help="image files (JPEG, PNG, GIF, BMP), folders (searched "
                         "recursively) or .txt/.lst lists of image paths (one a line, relative "
                         "to the list's folder, # comments)")
    predict.add_argument(
        "--model", default=DEFAULT_MODEL, metavar="SOURCE",
        help="a built-in model (" + ", ".join(BUILTIN_MODELS) + "), a .keras file, an HF "
        "folder, a .pth/.safetensors file, a preset name, a hub id or a URL (see `keras-deit "
        f"convert --help`). Default: {DEFAULT_MODEL}, a small distilled DeiT bundled with the "
        "package that reads handwritten digits (white on black), e.g. "
        "keras_deit/data/examples/*.png",
    )
    predict.add_argument("--top-k", type=int, default=5, help="labels to print per image (default 5)")
    predict.add_argument("--batch-size", type=_at_least(1), default=32,
                         help="images per step (default 32; on JAX split over every device)")
    predict.add_argument("--output", type=_output_file, metavar="FILE.csv|FILE.jsonl",
                         help="write one row per image (path, top-k labels and probabilities, "
                         "or an error) here instead of stdout, flushed after every batch")
    predict.add_argument("--overwrite", action="store_true", help="replace an existing --output")

    export = commands.add_parser(
        "export", parents=[common],
        help="write a SavedModel, TFLite or ONNX file, verified against the Keras model",
        description="Export a classifier as a TensorFlow SavedModel (folder), a TFLite file "
        "(builtin ops only; float32, float16 or int8 dynamic-range) or an ONNX file, then load "
        "it with its own runtime and compare it with the Keras model. The output is written "
        "atomically. See keras_deit/export/__init__.py for the design.",
    )
    add_export_arguments(export)

    train = commands.add_parser(
        "train", parents=[common],
        help="fine-tune (or train from scratch) a classifier on a folder of class folders",
        description="Train a DeiT classifier on DATA_DIR/<class>/<images> with the DeiT recipe "
        "(or a light one), optionally distilling a teacher; a checkpoint every epoch, "
        "--resume, CSV logs. See keras_deit/training/command.py.",
    )
    add_train_arguments(train)

    commands.add_parser(
        "convert", add_help=False,
        help="convert a checkpoint into a .keras model, a transformers folder or a timm .pth "
        "(python -m keras_deit.conversion); "
        "`keras-deit convert --help` for its options",
    )
    return parser


def main(argv=None):
    """Entry point of the `keras-deit` console script; returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["convert"]:
        from keras_deit.conversion.cli import main as convert

        return convert(argv[1:], prog="keras-deit convert")
    args = _parser().parse_args(argv)
    try:
        _use_backend(args.backend, argv)
        if args.command == "export":
            return export_command(args)  # checks its arguments before importing Keras
        if args.command == "train":
            import_backend(args.verbose, with_tensorflow=True)
            from keras_deit.training.command import train_command

            return train_command(args)
        if args.top_k < 1:
            raise ValueError(f"--top-k must be at least 1. Received: {args.top_k}")
        if args.output:
            check_predict_output(args.output, args.overwrite)
        import_backend(args.verbose, with_tensorflow=True)  # the reader is tf.data
        return predict(args.images, args.model, args.top_k, batch_size=args.batch_size,
                       output=args.output, overwrite=args.overwrite)
    except (ValueError, OSError, ImportError) as e:
        print(f"keras-deit: error: {_one_line(e)}", file=sys.stderr)
        return 2


def _use_backend(backend, argv):
    """Selects `backend` before Keras is imported; Keras fixes its backend when first imported,
    so a process that imported it already (a caller of `main`) starts again with KERAS_BACKEND
    set."""
    if not backend:
        return
    if "keras" not in sys.modules:
        os.environ["KERAS_BACKEND"] = backend
        return
    import keras

    if keras.backend.backend() != backend:
        env = dict(os.environ, KERAS_BACKEND=backend)
        os.execve(sys.executable, [sys.executable, "-m", "keras_deit.cli", *argv], env)


def _one_line(error):
    text = str(error).strip() or type(error).__name__
    return " ".join(text.split())


def predict(images, source, top_k=5, out=None, batch_size=32, output=None, overwrite=False):
    """Classifies `images` (image files, folders, list files) with the model from `source`;
    prints the top-k labels, or writes them to `output` (see keras_deit/batch_prediction.py)."""
    from keras_deit.batch_prediction import predict_files

    if top_k < 1:
        raise ValueError(f"--top-k must be at least 1. Received: {top_k}")
    return predict_files(images, source, top_k, batch_size, output, overwrite, out=out)


def _output_file(text):
    """An argparse type: a .csv or .jsonl path (checked before a backend is imported)."""
    try:
        return check_predict_output(text, overwrite=True)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _parse_size(text):
    """"224x224" or "224" -> (224, 224); "any" -> None."""
    if text is None or text.lower() == "any":
        return None
    parts = text.lower().split("x")
    try:
        values = tuple(int(p) for p in parts)
    except ValueError:
        values = ()
    if len(values) not in (1, 2) or min(values) <= 0:
        raise ValueError(f"--input-size takes HEIGHTxWIDTH (e.g. 256x256), a side or 'any'. "
                         f"Received: {text!r}")
    return values * 2 if len(values) == 1 else values


# ---- the `keras-deit train` command -------------------------------------------------------------
def _at_least(minimum, kind=int):
    """An argparse type: a `kind` number >= `minimum`."""

    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, received {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, received {text}")
        return value

    return parse


def _share(text):
    """An argparse type: a float in (0, 1)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, received {text!r}") from None
    if not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(f"must be in (0, 1), received {text}")
    return value


def add_train_arguments(parser):
    """The arguments of `keras-deit train` (checked here, before a backend is imported)."""
    parser.add_argument("data_dir", metavar="DATA_DIR",
                        help="one sub-folder of images per class (or train/ and val/ holding them)")
    parser.add_argument("output", metavar="OUTPUT.keras", help="the trained model")
    parser.add_argument("--model", default="deit-digits", metavar="SOURCE",
                        help="what to start from: a built-in model, a .keras file, an HF folder, "
                        "a .pth file, a preset or a hub id (as for predict; default deit-digits)")
    parser.add_argument("--from-scratch", action="store_true",
                        help="use only the architecture of --model, freshly initialized")
    parser.add_argument("--teacher", metavar="SOURCE",
                        help="a classifier of the same classes to distil from")
    parser.add_argument("--distillation", choices=DISTILLATION_CHOICES, default="hard",
                        help="with --teacher: DeiT's hard (default) or soft distillation, or none")
    parser.add_argument("--epochs", type=_at_least(1),
                        help="default 10 for a fine-tune, 300 (the paper's) with --from-scratch")
    parser.add_argument("--batch-size", type=_at_least(1),
                        help="the global batch; default 8 for a fine-tune, 64 with "
                        "--from-scratch")
    parser.add_argument("--image-size", type=_at_least(1),
                        help="train at this size (default: the model's); position embeddings "
                        "are resampled")
    parser.add_argument("--lora", type=_at_least(1), metavar="RANK",
                        help="train LoRA adapters of this rank (and the heads), merged at the end")
    parser.add_argument("--recipe", choices=RECIPES,
                        help="deit: DeiT's augmentation, mixup/cutmix, smoothing, repeated "
                        "augmentation, drop path (the default with --from-scratch); light: the "
                        "checkpoint's preprocessing only (the default for a fine-tune)")
    rate = parser.add_mutually_exclusive_group()
    rate.add_argument("--lr", type=_at_least(1e-12, float),
                      help="peak learning rate, as it is (fine-tune default 1e-4)")
    rate.add_argument("--base-lr", type=_at_least(1e-12, float),
                      help="learning rate for a batch of 512, scaled by the batch (deit's rule; "
                      "5e-4 is the default with --from-scratch)")
    parser.add_argument("--warmup-epochs", type=_at_least(0),
                        help="linear warmup epochs before the cosine (fine-tune 1, deit 5; fewer "
                        "if --epochs is not larger)")
    parser.add_argument("--validation-split", type=_share, default=0.1,
                        help="share of each class held out when DATA_DIR has no val/ (0.1)")
    parser.add_argument("--ema-decay", type=_share,
                        help="keep an EMA of the weights (deit: 0.99996) and write it at the end")
    parser.add_argument("--resume", action="store_true",
                        help="continue the interrupted run that wrote OUTPUT's checkpoint")
    parser.add_argument("--seed", type=int, default=0, help="default 0")
    cluster = parser.add_argument_group(
        "cluster (JAX; default: every local device, or the KERAS_DISTRIBUTION_* variables)")
    cluster.add_argument("--coordinator", metavar="HOST:PORT",
                         help="process 0's address, the same on every process")
    cluster.add_argument("--num-processes", type=_at_least(1), metavar="N", help="processes in the job")
    cluster.add_argument("--process-id", type=_at_least(0), metavar="I",
                         help="this process's index in [0, N); 0 writes the files")
    cluster.add_argument("--join-timeout", type=_at_least(1), default=120, metavar="SECONDS",
                         help="how long to wait for every process to join (default 120)")


# ---- the `keras-deit export` command -----------------------------------------------------------
def add_export_arguments(parser):
    """The options of `keras-deit export` (SOURCE and OUTPUT positional)."""
    parser.add_argument("source", metavar="SOURCE",
                        help="a .keras file, an HF folder, a .pth/.safetensors file, a preset "
                        "name, a hub id or a URL (as `keras-deit predict --model`)")
    parser.add_argument("output", metavar="OUTPUT",
                        help="the artifact: a folder (saved_model) or a file (.tflite, .onnx)")
    parser.add_argument("--format", required=True, metavar="FORMAT",
                        help="saved_model, tflite or onnx")
    parser.add_argument("--quantize", metavar="TYPE",
                        help="tflite only: float16 (float16 weights) or int8 (dynamic range)")
    parser.add_argument("--with-preprocessing", action="store_true",
                        help="put the checkpoint's resize, crop and normalization inside: the "
                        "artifact takes uint8 (batch, H, W, 3) images")
    parser.add_argument("--input-size", metavar="HxW",
                        help="with --with-preprocessing: the image size the artifact takes, or "
                        "'any' (default: any; tflite: the resize size)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing OUTPUT")
    parser.add_argument("--verify-image", action="append", metavar="IMAGE",
                        help="an image to verify on; repeat for more (default: 8 crops of "
                        "scikit-learn's sample photos, else random inputs)")


def export_command(args, out=None):
    """Runs `keras-deit export` for parsed `args`; prints the summary and verification line.

    Bad input raises (the CLI prints one line, exit code 2); a failed build or verification
    prints one line and returns 1.
    """
    out = out or sys.stdout
    format, quantize = check_format(args.format, args.quantize)
    input_size = _parse_size(args.input_size)
    check_output(args.output, args.overwrite)
    require(format)
    import_backend(getattr(args, "verbose", False), with_tensorflow=True)
    from keras_deit.export import ExportError, export_model
    from keras_deit.export.core import input_spec, split_included_preprocessing
    from keras_deit.export.verification import verification_images
    from keras_deit.inference import load_classifier, read_images

    pictures = read_images(args.verify_image or [])
    model, processor = load_classifier(args.source)
    preprocessing = processor.to_keras_layer() if args.with_preprocessing else None
    # A model built with include_preprocessing exports as the pair --with-preprocessing builds,
    # so the input spec and the verification images below are those of raw images.
    model, preprocessing = split_included_preprocessing(model, preprocessing)
    if input_size is not None and preprocessing is None:
        raise ValueError(f"--input-size applies with --with-preprocessing only (or to a model "
                         f"built with include_preprocessing). Received: --input-size "
                         f"{args.input_size}")
    spec = input_spec(model, preprocessing, input_size, format)
    data = verification_images(spec, processor, pictures)
    try:
        result = export_model(model, args.output, format, quantize=quantize,
                              preprocessing=preprocessing, input_size=input_size,
                              overwrite=args.overwrite, verification_data=data)
    except ExportError as e:
        print(f"keras-deit: export failed: {' '.join(str(e).split())}", file=sys.stderr)
        return 1
    print(result.summary(), file=out)
    return 0


def run():
    """The `keras-deit` process: `main`, then exit with its code. An interrupted `train` (130)
    exits at once: its files are complete by then, and the interrupted data pipeline's threads
    must not hold the interpreter's shutdown (seen on a loaded machine: a run that had printed
    its interrupt message was still alive 300 s later)."""
    code = main()
    if code == 130:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


if __name__ == "__main__":
    run()
