"""`python -m keras_deit.conversion SOURCE OUTPUT`: convert a DeiT checkpoint into a Keras file, a
transformers folder or an original-layout `.pth` (`keras_deit.conversion.writers`).

`main(argv)` is the whole command, so another console script (`keras-deit convert`) can wrap
it. Exit codes: 0 written, 1 `--verify` found a difference above the tolerance (nothing
written), 2 any other error, reported on one line without a traceback.
"""

import argparse
import os
import sys
import warnings

from keras_deit import atomic
from keras_deit.backend_logs import import_backend
from keras_deit.conversion.readers import CheckpointError
from keras_deit.conversion.hf import ARCHITECTURES

# Our model classes, by name (`keras_deit.models.MODEL_CLASSES`), without importing Keras to
# list them in --help.
MODEL_CLASS_NAMES = tuple(dict.fromkeys(ARCHITECTURES.values()))
# What OUTPUT may end with, and how each is written.
OUTPUT_SUFFIXES = (".keras", ".weights.h5")
# The PyTorch layouts (`keras_deit.conversion.writers`): a folder for transformers, a file for timm.
TIMM_SUFFIXES = (".pth", ".pt")


class _UsageError(Exception):
    """Bad arguments, reported like any other error (exit code 2, one line)."""


class _ArgumentParser(argparse.ArgumentParser):
    def error(self, message):
        raise _UsageError(f"{message} (see --help)")


def build_parser(prog="python -m keras_deit.conversion"):
    """The command's argument parser."""
    parser = _ArgumentParser(
        prog=prog,
        description="Convert a DeiT checkpoint (preset name, original .pth file or URL, Hugging "
                    "Face Hub id or folder, .safetensors/.bin file) into a Keras model file, or "
                    "back into a transformers folder or an original-layout .pth.",
    )
    parser.add_argument("source", help="preset name, URL, hub id (owner/name), folder or file")
    parser.add_argument("output", help="OUTPUT.keras (whole model), OUTPUT.weights.h5 (weights), "
                                       "OUTPUT.pth (timm layout) or a folder (transformers)")
    parser.add_argument("--layout", default=None, choices=("transformers", "timm"),
                        help="write for PyTorch: a transformers folder or an original-layout "
                             ".pth (default: from OUTPUT's suffix)")
    parser.add_argument("--model-class", default="auto", choices=("auto", *MODEL_CLASS_NAMES),
                        help="model to build (default: the checkpoint's own)")
    parser.add_argument("--num-heads", type=int, default=None,
                        help="attention heads, for timm-layout weights matching no preset")
    parser.add_argument("--preset-source", default="original", choices=("original", "hub"),
                        help="for preset names: the original .pth release or the hub repository")
    parser.add_argument("--cache-dir", default=None,
                        help="download cache (default $KERAS_DEIT_CACHE or ~/.cache/keras_deit)")
    parser.add_argument("--verify", action="store_true",
                        help="compare with the reference implementation (needs torch, "
                             "transformers) on a random input before writing")
    parser.add_argument("--tolerance", type=float, default=1e-4,
                        help="largest max-abs difference --verify accepts (default 1e-4)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace OUTPUT if it exists (default: refuse)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars or summary")
    parser.add_argument("--verbose", action="store_true",
                        help="show TensorFlow's C++ logs (hidden by default)")
    return parser


def main(argv=None, prog="python -m keras_deit.conversion"):
    """Runs the command with `argv` (default `sys.argv[1:]`); returns the exit code."""
    try:
        args = build_parser(prog).parse_args(argv)
        _check_args(args)
        import_backend(args.verbose)
        return _convert(args)
    except _UsageError as e:
        return _fail(f"usage: {e}")
    except (CheckpointError, ValueError, OSError, ImportError) as e:
        return _fail(str(e))


def _fail(message):
    # One line: the multi-line check reports become "; "-separated.
    lines = [line.strip(" -") for line in str(message).splitlines() if line.strip(" -")]
    print("error: " + "; ".join(lines), file=sys.stderr)
    return 2


def output_layout(output, layout=None):
    """How OUTPUT is written: "keras", or the `--layout` (else inferred: a `.pth` / `.pt` file
    is "timm", a folder or a name without suffix "transformers")."""
    if output.endswith(OUTPUT_SUFFIXES):
        if layout is not None:
            raise _UsageError(f"--layout {layout} writes for PyTorch, but OUTPUT {output!r} "
                              "names a Keras file: name a folder or a .pth file")
        return "keras"
    if layout is not None:
        return layout
    if output.endswith(TIMM_SUFFIXES):
        return "timm"
    if os.path.isdir(output) or output.endswith(("/", os.sep)) or "." not in os.path.basename(output):
        return "transformers"
    raise _UsageError(
        "OUTPUT must end with .keras (whole model), .weights.h5 (weights only) or .pth (timm "
        f"layout), or name a folder (transformers layout; or pass --layout). Received: "
        f"{output!r}"
    )


def _check_args(args):
    args.layout = output_layout(args.output, args.layout)
    if args.num_heads is not None and args.num_heads <= 0:
        raise _UsageError(f"--num-heads must be a positive int. Received: {args.num_heads}")
    if not args.tolerance >= 0:
        raise _UsageError(f"--tolerance must be >= 0. Received: {args.tolerance}")
    folder = os.path.dirname(os.path.abspath(args.output))
    if not os.path.isdir(folder):
        raise _UsageError(f"the folder of OUTPUT does not exist: {folder}")
    # Checked before the checkpoint is read, so a refusal costs nothing.
    if os.path.isdir(args.output) and args.layout != "transformers":
        raise _UsageError(f"OUTPUT {args.output} is a folder: name a file")
    if os.path.isfile(args.output) and args.layout == "transformers":
        raise _UsageError(f"OUTPUT {args.output} is a file: the transformers layout is a folder")
    if os.path.lexists(args.output) and not args.overwrite:
        raise _UsageError(f"OUTPUT {args.output} exists: pass --overwrite to replace it, or "
                          "name another file")


def _convert(args):
    from keras_deit.conversion.loading import build_model, open_checkpoint
    from keras_deit.models import MODEL_CLASSES, DeiTModel

    show = not args.quiet
    with warnings.catch_warnings():
        # A guessed head count is printed below as one line, --quiet or not.
        warnings.simplefilter("ignore")
        checkpoint = open_checkpoint(
            args.source, num_attention_heads=args.num_heads, preset_source=args.preset_source,
            cache_dir=args.cache_dir, progress=show,
        )
    for note in checkpoint.notes:
        print(f"warning: {note}", file=sys.stderr)
    cls = MODEL_CLASSES[checkpoint.model_class if args.model_class == "auto" else args.model_class]
    options = {}
    if args.layout == "timm" and cls is DeiTModel:
        # timm has no pooler, and a bare model's pooler has no pretrained weights to keep.
        options["add_pooling_layer"] = False
    with warnings.catch_warnings():
        # Fresh variables are listed in the summary instead.
        warnings.simplefilter("ignore")
        model = build_model(checkpoint, cls, progress=show, **options)
    if show:
        print(summary(model, checkpoint))
    if args.layout != "keras":
        from keras_deit.conversion.writers import check_layout

        check_layout(model, args.layout)  # before --verify: refusing costs nothing then

    if args.verify:
        from keras_deit.conversion.verify import verify

        result = verify(model, checkpoint, tolerance=args.tolerance)
        for key, diff in result.differences.items():
            print(f"verify: {key}: max-abs difference {diff:.3g}")
        if not result.passed:
            print(
                f"verify: FAILED against {result.reference}: max-abs difference "
                f"{result.max_difference:.3g} > tolerance {result.tolerance:g}; nothing written.",
                file=sys.stderr,
            )
            return 1
        print(f"verify: ok against {result.reference} (max-abs difference "
              f"{result.max_difference:.3g} <= {result.tolerance:g})")

    if args.layout == "keras":
        write_atomically(model, args.output)
    else:
        from keras_deit.conversion.writers import save_pretrained

        with warnings.catch_warnings(record=True) as caught:  # one line each, as the notes
            warnings.simplefilter("always")
            save_pretrained(model, args.output, layout=args.layout, overwrite=args.overwrite)
        for warning in caught:
            print(f"warning: {warning.message}", file=sys.stderr)
    if show:
        print(f"wrote {args.output} ({args.layout} layout, {_size(args.output) / 1e6:.1f} MB)")
    return 0


def _size(path):
    """Bytes of a file, or of the files of a folder."""
    if not os.path.isdir(path):
        return os.path.getsize(path)
    return sum(os.path.getsize(os.path.join(path, name)) for name in os.listdir(path))


def write_atomically(model, output):
    """Saves `model` to `output` (`.keras`: whole model; `.weights.h5`: weights) via a hidden
    temporary file in the same folder and `os.replace`, so `output` is either complete or
    untouched; the temporary file is removed on failure and on SIGTERM, and leftovers of
    killed earlier runs on the next run (`keras_deit.atomic`)."""
    suffix = next(s for s in OUTPUT_SUFFIXES if output.endswith(s))
    # Keras picks the format from the suffix, so the temporary file keeps it.
    with atomic.temporary_path(output, suffix) as tmp:
        if suffix == ".keras":
            model.save(tmp)
        else:
            model.save_weights(tmp)
        os.replace(tmp, output)


def summary(model, checkpoint):
    """A few lines describing the converted model."""
    from keras_deit import presets

    config = model.config
    if config.layer_scale_init_value is not None:
        family = "DeiT III"
    elif config.use_distillation_token:
        family = "DeiT (distilled)"
    else:
        family = "DeiT"
    if checkpoint.preset:
        variant = checkpoint.preset
    else:
        matches = presets.presets_matching(config)
        variant = (f"{', '.join(matches)} (by architecture)" if matches
                   else "custom (no preset matches)")
    (h, w), (ph, pw) = config.image_hw, config.patch_hw
    info = model.loading_info
    lines = [
        f"variant:            {variant} ({family})",
        f"model class:        {type(model).__name__}",
        f"source:             {checkpoint.path} ({checkpoint.format} layout)",
        f"parameters:         {model.count_params():,}",
        f"hidden / layers:    {config.hidden_size} / {config.num_hidden_layers}",
        f"heads:              {config.num_attention_heads} (head width {config.head_dim})",
        f"resolution:         {h}x{w}, patch {ph}x{pw}",
        f"distillation token: {'yes' if config.use_distillation_token else 'no'}",
        f"layer-norm eps:     {config.layer_norm_eps:g}",
        f"labels:             {config.num_labels}",
    ]
    if info.dropped:
        lines.append(f"not used:           {', '.join(info.dropped)}")
    if info.fresh:
        lines.append(f"freshly initialized: {', '.join(info.fresh)}")
    lines.extend(f"note:               {note}" for note in info.notes)
    return "\n".join(lines)
