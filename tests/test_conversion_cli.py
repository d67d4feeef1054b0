"""`python -m keras_deit.conversion`: output files, summary, errors, atomic writes and `--verify`."""

import io
import os
import subprocess
import sys

import keras
import numpy as np
import pytest

import keras_deit as kd
from helpers import HF, TIMM, max_abs_diff
from keras_deit.conversion.cli import main
from keras_deit.conversion.progress import Progress

TOLERANCE = 1e-5
DISTILLED = os.path.join(TIMM, "deit_micro_distilled_patch16_64.pth")
DEIT3 = os.path.join(TIMM, "deit3_micro_patch16_64.pth")
WITH_TEACHER = os.path.join(HF, "with_teacher")


def _reference(path):
    return np.load(path.replace(".pth", ".npz"))


def _nhwc(reference):
    return np.transpose(reference["pixel_values"], (0, 2, 3, 1))


def _one_error_line(err):
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    return lines[0]


def test_keras_file_from_timm_weights(tmp_path, capsys):
    pytest.importorskip("torch")
    output = tmp_path / "distilled.keras"
    assert main([DISTILLED, str(output), "--num-heads", "3"]) == 0
    out = capsys.readouterr().out
    for line in ("model class:        DeiTForImageClassificationWithTeacher",
                 "heads:              3 (head width 16)", "resolution:         64x64, patch 16x16",
                 "distillation token: yes", "layer-norm eps:     1e-06", "parameters:         ",
                 "timm layout", "custom (no preset matches) (DeiT (distilled))"):
        assert line in out, out
    assert os.listdir(tmp_path) == ["distilled.keras"]
    model = keras.saving.load_model(output)
    assert isinstance(model, kd.DeiTForImageClassificationWithTeacher)
    reference = _reference(DISTILLED)
    outputs = model(_nhwc(reference))
    for key in ("logits", "cls_logits", "distillation_logits"):
        assert max_abs_diff(outputs[key], reference[key]) <= TOLERANCE


def test_weights_file_and_model_class(tmp_path, capsys):
    pytest.importorskip("torch")
    output = tmp_path / "plain.weights.h5"
    assert main([DISTILLED, str(output), "--num-heads", "3", "--quiet",
                 "--model-class", "DeiTForImageClassification"]) == 0
    assert capsys.readouterr().out == ""
    from keras_deit.conversion.readers import read_torch
    from keras_deit.conversion.timm import config_from_timm_state

    config = config_from_timm_state(read_torch(DISTILLED), num_attention_heads=3)
    model = kd.DeiTForImageClassification(config)
    model.load_weights(output)
    reference = _reference(DISTILLED)
    assert max_abs_diff(model(_nhwc(reference))["logits"], reference["cls_logits"]) <= TOLERANCE


def test_summary_lists_dropped_heads(tmp_path, capsys):
    assert main([WITH_TEACHER, str(tmp_path / "m.weights.h5"), "--model-class", "DeiTModel"]) == 0
    out = capsys.readouterr().out
    assert "not used:           cls_classifier.bias" in out
    assert "freshly initialized: pooler/dense/kernel" in out
    assert "layer-norm eps:     1e-12" in out and "hf layout" in out


@pytest.mark.parametrize("argv, message", [
    (["missing.pth", "out.keras"], "no such file"),
    ([WITH_TEACHER, "out.onnx"], "must end with .keras"),
    ([WITH_TEACHER, "out.keras", "--model-class", "ResNet"], "invalid choice"),
    ([WITH_TEACHER, "out.keras", "--num-heads", "0"], "--num-heads"),
    ([WITH_TEACHER, "no/such/folder/out.keras"], "does not exist"),
])
def test_errors_are_one_line_with_exit_code_2(argv, message, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    assert message in _one_error_line(capsys.readouterr().err)
    assert os.listdir(tmp_path) == []


def test_checkpoint_mismatch_is_one_line(tmp_path, capsys):
    pytest.importorskip("torch")
    # The 64-wide fixture read as 64-wide heads would be 1 head; 3 does not divide 64.
    output = tmp_path / "m.keras"
    assert main([os.path.join(TIMM, "deit_micro_distilled_patch8_48.pth"), str(output),
                 "--num-heads", "3"]) == 2
    assert "does not divide" in _one_error_line(capsys.readouterr().err)
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("suffix, method", [(".keras", "save"), (".weights.h5", "save_weights")])
def test_failed_write_leaves_nothing(suffix, method, tmp_path, capsys, monkeypatch):
    written = []

    def broken(self, filepath, *args, **kwargs):
        with open(filepath, "wb") as f:  # a partial file, then the disk fills up
            f.write(b"partial")
        written.append(filepath)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(keras.Model, method, broken)
    output = tmp_path / ("model" + suffix)
    assert main([WITH_TEACHER, str(output), "--quiet"]) == 2
    assert "No space left on device" in _one_error_line(capsys.readouterr().err)
    assert written and os.path.dirname(written[0]) == str(tmp_path)
    assert os.listdir(tmp_path) == []


def test_existing_output_is_replaced_only_when_complete(tmp_path, monkeypatch):
    output = tmp_path / "model.weights.h5"
    output.write_bytes(b"old")
    monkeypatch.setattr(keras.Model, "save_weights",
                        lambda self, path, **kw: (_ for _ in ()).throw(OSError("boom")))
    assert main([WITH_TEACHER, str(output), "--quiet", "--overwrite"]) == 2
    assert output.read_bytes() == b"old"
    monkeypatch.undo()
    assert main([WITH_TEACHER, str(output), "--quiet", "--overwrite"]) == 0
    assert output.read_bytes() != b"old" and os.listdir(tmp_path) == ["model.weights.h5"]


def test_existing_output_needs_overwrite(tmp_path, capsys):
    output = tmp_path / "model.keras"
    output.write_bytes(b"keep me")
    assert main([WITH_TEACHER, str(output), "--quiet"]) == 2
    assert "exists: pass --overwrite" in _one_error_line(capsys.readouterr().err)
    assert output.read_bytes() == b"keep me"
    assert main([WITH_TEACHER, str(tmp_path), "--quiet"]) == 2  # a folder named like a file
    capsys.readouterr()


def test_sigterm_during_a_write_removes_the_temporary_file(tmp_path, monkeypatch):
    """The signal arrives while Keras writes: the command exits, no hidden file is left."""
    import signal

    def killed_midway(self, filepath, *args, **kwargs):
        with open(filepath, "wb") as f:
            f.write(b"partial")
        os.kill(os.getpid(), signal.SIGTERM)

    before = signal.getsignal(signal.SIGTERM)
    monkeypatch.setattr(keras.Model, "save_weights", killed_midway)
    with pytest.raises(SystemExit) as info:
        main([WITH_TEACHER, str(tmp_path / "m.weights.h5"), "--quiet"])
    assert info.value.code == 128 + signal.SIGTERM
    assert os.listdir(tmp_path) == []
    assert signal.getsignal(signal.SIGTERM) is before  # the handler is put back


def test_leftovers_of_a_killed_run_are_removed_by_the_next(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()
    stale = tmp_path / f".m.weights.h5.tmp-{dead}-1a2b.weights.h5"
    stale.write_bytes(b"40 MB of a killed save")
    assert main([WITH_TEACHER, str(tmp_path / "m.weights.h5"), "--quiet"]) == 0
    assert os.listdir(tmp_path) == ["m.weights.h5"]


@pytest.mark.parametrize("source, extra, reference", [
    (WITH_TEACHER, [], "transformers DeiTForImageClassificationWithTeacher loaded from"),
    (DISTILLED, ["--num-heads", "3"], "built from the renamed state dict"),
    (DEIT3, ["--num-heads", "3"], "torch functional ops (DeiT III)"),
])
def test_verify(source, extra, reference, tmp_path, capsys):
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    output = tmp_path / "model.keras"
    assert main([source, str(output), "--verify", *extra]) == 0
    out = capsys.readouterr().out
    assert "verify: logits: max-abs difference" in out
    assert "verify: ok against " in out and reference in out
    assert output.exists()


def test_verify_failure_exits_1_and_writes_nothing(tmp_path, capsys):
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    output = tmp_path / "model.keras"
    assert main([DISTILLED, str(output), "--num-heads", "3", "--model-class",
                 "DeiTForImageClassification", "--verify", "--tolerance", "1e-12"]) == 1
    captured = capsys.readouterr()
    assert "verify: FAILED" in captured.err and "> tolerance 1e-12" in captured.err
    assert "verify: logits: max-abs difference" in captured.out
    assert os.listdir(tmp_path) == []


def test_progress_bar():
    stream = io.StringIO()
    bar = Progress("Converting", total=4, unit="variables", stream=stream, min_interval=0)
    for done in range(1, 5):
        bar.update(done)
    bar.close()
    text = stream.getvalue()
    assert "\rConverting [" in text and "100% 4/4 variables" in text and text.endswith("\n")


def test_python_dash_m(tmp_path):
    """One real run of `python -m keras_deit.conversion`, in a fresh process."""
    output = tmp_path / "model.weights.h5"
    result = subprocess.run(
        [sys.executable, "-m", "keras_deit.conversion", WITH_TEACHER, str(output)],
        capture_output=True, text=True, timeout=300,
        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
    )
    assert result.returncode == 0, result.stderr
    assert "distillation token: yes" in result.stdout and output.exists()
    result = subprocess.run(
        [sys.executable, "-m", "keras_deit.conversion", "nowhere.pth", str(tmp_path / "other.weights.h5")],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "error: Unknown pretrained source 'nowhere.pth'" in result.stderr
