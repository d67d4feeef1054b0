"""The `keras-deit` command: predict, convert, and one-line errors."""

import os
import subprocess
import sys

import keras
import numpy as np
import pytest
from PIL import Image

import keras_deit as kd
from keras_deit.cli import main
from keras_deit.inference import class_names
from helpers import HF

WITH_TEACHER = os.path.join(HF, "with_teacher")


@pytest.fixture(scope="module")
def photo(tmp_path_factory):
    path = tmp_path_factory.mktemp("images") / "photo.png"
    rng = np.random.RandomState(0)
    Image.fromarray(rng.randint(0, 255, (40, 50, 3), dtype=np.uint8)).save(path)
    return str(path)


def test_predict_prints_top_k_with_probabilities(photo, capsys):
    assert main(["predict", photo, photo, "--model", WITH_TEACHER, "--top-k", "3"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == photo and len(lines) == 8
    probabilities = [float(line.split()[-1]) for line in lines[1:4]]
    assert probabilities == sorted(probabilities, reverse=True)
    assert all(line.split()[1].startswith("LABEL_") for line in lines[1:4])


def test_predict_matches_the_model(photo, capsys):
    """The printed probabilities are the softmax of the averaged logits."""
    main(["predict", photo, "--model", WITH_TEACHER, "--top-k", "5"])
    printed = {line.split()[1]: float(line.split()[2]) for line in capsys.readouterr().out.splitlines()[1:]}
    model = kd.DeiTForImageClassificationWithTeacher.from_pretrained(WITH_TEACHER)
    processor = kd.DeiTImageProcessor.from_timm_recipe(image_size=32)
    logits = keras.ops.convert_to_numpy(model(processor(Image.open(photo))["pixel_values"])["logits"])[0]
    expected = np.exp(logits) / np.exp(logits).sum()
    for i, p in enumerate(expected):
        assert abs(printed[f"LABEL_{i}"] - p) < 1e-4


def test_keras_file_model(photo, tmp_path, capsys):
    model = kd.DeiTForImageClassification.from_pretrained(os.path.join(HF, "classification"))
    path = str(tmp_path / "clf.keras")
    model.save(path)
    assert main(["predict", photo, "--model", path, "--top-k", "1"]) == 0
    assert capsys.readouterr().out.count("LABEL_") == 1


@pytest.mark.parametrize("args, message", [
    (["predict", "/no/such.jpg", "--model", WITH_TEACHER], "no such image: /no/such.jpg"),
    (["predict", "{bad}", "--model", WITH_TEACHER], "cannot read"),
    (["predict", "{photo}", "--model", "no_such_model"], "Unknown pretrained source 'no_such_model'"),
    (["predict", "{photo}", "--model", os.path.join(HF, "model")], "has no classifier"),
    (["predict", "{photo}", "--model", WITH_TEACHER, "--top-k", "0"], "--top-k must be at least 1"),
    (["predict", "{empty}", "--model", WITH_TEACHER], "holds no images"),
    (["predict", "{photo}", "--model", "{corrupt}"], "is not a .keras archive (it is corrupt"),
    (["predict", "{photo}", "--model", "{plain}"], "holds a Sequential, not a keras_deit DeiT"),
    (["predict", "{photo}", "--model", "{evil_pth}"], "contains code"),
])
def test_errors_are_one_line(args, message, photo, tmp_path, capsys):
    bad = tmp_path / "bad.jpg"
    bad.write_text("not an image")
    corrupt = tmp_path / "corrupt.keras"
    corrupt.write_bytes(b"PK\x03\x04 but not a zip at all")
    plain = tmp_path / "plain.keras"
    if "{plain}" in args:
        keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)]).save(plain)
    evil = tmp_path / "evil.pth"
    if "{evil_pth}" in args:
        torch = pytest.importorskip("torch")

        class Payload:
            def __reduce__(self):
                return (exec, ("raise SystemExit('ran')",))

        torch.save({"model": {"cls_token": torch.zeros(1, 1, 4)}, "x": Payload()}, evil)
    empty = tmp_path / "empty"
    empty.mkdir()
    names = {"{bad}": bad, "{photo}": photo, "{empty}": empty, "{corrupt}": corrupt,
             "{plain}": plain, "{evil_pth}": evil}
    for key, value in names.items():
        args = [a.replace(key, str(value)) for a in args]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("keras-deit: error:") and message in err[0]


def test_imagenet_names_for_generic_labels():
    names = class_names(kd.DeiTConfig(num_labels=1000))
    assert len(names) == 1000 and names[0] == "tench" and names[281] == "tabby"
    assert class_names(kd.DeiTConfig(id2label={0: "cat", 1: "dog"})) == ["cat", "dog"]


def test_convert_subcommand_help(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["convert", "--help"])
    assert exit_info.value.code == 0
    assert "keras-deit convert" in capsys.readouterr().out


@pytest.mark.slow
def test_backend_flag_switches_backend(photo):
    other = "jax" if keras.backend.backend() != "jax" else "torch"
    env = dict(os.environ)
    env.pop("KERAS_BACKEND", None)
    code = ("import keras, sys; from keras_deit.cli import main; "
            "sys.exit(main(sys.argv[1:]))")
    result = subprocess.run(
        [sys.executable, "-c", code, "predict", photo, "--model", WITH_TEACHER, "--top-k", "1",
         "--backend", other],
        env=env, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.splitlines()[0] == photo


def test_parsing_and_argument_errors_import_no_backend(tmp_path):
    """--help and bad arguments answer before Keras (or TensorFlow) is imported."""
    code = """
import sys
sys.argv[0] = "keras-deit"  # as the console script runs: the package imports names lazily
from keras_deit.cli import main
import keras_deit as kd
codes = []
for argv in (["--help"], ["predict", "--help"], ["export", "--help"], ["convert", "--help"],
             ["export", "m", "OUT/x.onnx", "--format", "bad"],
             ["export", "m", "OUT/x.tflite", "--format", "onnx", "--quantize", "int8"],
             ["predict", "x.png", "--top-k", "0"], ["predict", "x.png", "--output", "x.tsv"],
             ["convert", "x.pth"], ["nonsense"],
             ["train", "--help"], ["train", "d", "m.keras", "--epochs", "0"],
             ["train", "d", "m.keras", "--lr", "1e-4", "--base-lr", "5e-4"],
             ["train", "d", "m.keras", "--validation-split", "1.5"]):
    try:
        codes.append(main([a.replace("OUT", sys.argv[1]) for a in argv]))
    except SystemExit as e:
        codes.append(e.code)
print(codes, sorted(m for m in ("keras", "tensorflow", "jax", "torch") if m in sys.modules))
"""
    result = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True,
                            text=True, timeout=120)
    assert result.stdout.strip().splitlines()[-1] == \
        "[0, 0, 0, 0, 2, 2, 2, 2, 2, 2, 0, 2, 2, 2] []"
    errors = [line for line in result.stderr.splitlines() if line.startswith("keras-deit")]
    assert "unsupported export format 'bad'" in errors[0]
    assert "quantization applies to TFLite files only" in errors[1]
    assert "--top-k must be at least 1. Received: 0" in errors[2]
    assert "--output must end in .csv or .jsonl. Received: --output x.tsv" in errors[3]
    # argparse's own errors are one line too (no usage block before them).
    assert not any(line.startswith("usage:") for line in result.stderr.splitlines())
    assert errors[-3:] == [
        "keras-deit train: error: argument --epochs: must be at least 1, received 0 (see "
        "keras-deit train --help)",
        "keras-deit train: error: argument --base-lr: not allowed with argument --lr (see "
        "keras-deit train --help)",
        "keras-deit train: error: argument --validation-split: must be in (0, 1), received 1.5 "
        "(see keras-deit train --help)"]


def test_no_tensorflow_log_line_on_stderr(photo):
    """TensorFlow's C++ start-up logs (incl. `E0000 ... failed call to cuInit` on a CPU
    machine) are hidden; the command's own output is not."""
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    result = subprocess.run(
        [sys.executable, "-m", "keras_deit.cli", "predict", photo, "--top-k", "1",
         "--backend", keras.backend.backend()],
        env=env, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.splitlines()[0] == photo
    # Only the command's summary line.
    assert result.stderr.startswith("keras-deit predict: 1 image classified in ")
    assert len(result.stderr.splitlines()) == 1


def test_tensorflow_log_lines_are_recognized():
    from keras_deit.backend_logs import is_tf_log_line

    logs = [
        "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR",
        "I0000 00:00:1796530822.611742    9384 port.cc:153] oneDNN custom operations are on.",
        "E0000 00:00:1796530831.003586    9384 cuda_platform.cc:52] failed call to cuInit: x",
        "To enable the following instructions: AVX2 AVX512F FMA, in other operations, rebuild",
    ]
    assert all(is_tf_log_line(line) for line in logs)
    assert not any(is_tf_log_line(line) for line in (
        "keras-deit: error: no such image: x.png", "Traceback (most recent call last):",
        "warning: guessed 3 heads", "I0000 is not a log line without its time"))


def test_import_keras_deit_registers_the_models_for_keras_load_model(tmp_path):
    """Outside the command, `import keras_deit` registers every model and layer, so that Keras'
    own `load_model` reads our files (the console script alone imports names lazily)."""
    code = """
import sys
import keras_deit
print("keras_deit.models" in sys.modules)
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=300)
    assert result.stdout.strip().splitlines()[-1] == "True", result.stderr[-2000:]
