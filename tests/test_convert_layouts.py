"""`keras-deit convert SOURCE OUTPUT` writing the PyTorch layouts: a transformers folder or an
original-layout `.pth`, with the usual summary, `--verify` and one-line refusals."""

import os

import keras
import numpy as np
import pytest

import keras_deit as kd
from keras_deit.conversion.cli import main
from keras_deit.cli import main as keras_deit_main

DATA = os.path.join(os.path.dirname(__file__), "data")
WITH_TEACHER = os.path.join(DATA, "hf", "with_teacher")
MASKED = os.path.join(DATA, "hf", "masked_image_modeling")
DISTILLED = os.path.join(DATA, "timm", "deit_micro_distilled_patch16_64.pth")
DEIT3 = os.path.join(DATA, "timm", "deit3_micro_patch16_64.pth")


def _outputs(model, images):
    return {k: np.asarray(keras.ops.convert_to_numpy(v)) for k, v in model(images).items()}


def _same_outputs(a, b, size):
    images = np.random.RandomState(0).standard_normal((2, size, size, 3)).astype("float32")
    ours, theirs = _outputs(a, images), _outputs(b, images)
    return {k: float(np.max(np.abs(ours[k] - theirs[k]))) for k in ours} == dict.fromkeys(ours, 0.0)


def _error_line(err):
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


def test_transformers_folder_with_verify(tmp_path, capsys):
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    output = tmp_path / "out"
    assert keras_deit_main(["convert", WITH_TEACHER, str(output), "--verify"]) == 0
    out = capsys.readouterr().out
    for line in ("model class:        DeiTForImageClassificationWithTeacher", "verify: ok against",
                 f"wrote {output} (transformers layout, "):
        assert line in out, out
    assert sorted(os.listdir(output)) == ["config.json", "model.safetensors",
                                          "preprocessor_config.json"]
    source = kd.DeiTForImageClassificationWithTeacher.from_pretrained(WITH_TEACHER)
    written = kd.DeiTForImageClassificationWithTeacher.from_pretrained(str(output))
    assert _same_outputs(source, written, 32)
    # An existing folder is replaced only with --overwrite; --layout names a dotted folder.
    assert main([WITH_TEACHER, str(output), "--quiet"]) == 2
    assert "exists: pass --overwrite" in _error_line(capsys.readouterr().err)
    assert main([WITH_TEACHER, str(tmp_path / "deit.v2"), "--layout", "transformers",
                 "--quiet"]) == 0
    assert os.path.isfile(tmp_path / "deit.v2" / "model.safetensors")


@pytest.mark.parametrize("source", [DISTILLED, DEIT3])
def test_timm_pth_from_the_suffix(source, tmp_path, capsys):
    torch = pytest.importorskip("torch")
    from keras_deit.conversion import timm

    output = tmp_path / "out.pth"
    assert main([source, str(output), "--num-heads", "3"]) == 0
    assert f"wrote {output} (timm layout, " in capsys.readouterr().out
    expected = torch.load(source, weights_only=True)["model"]
    written = timm.canonicalize(torch.load(output, weights_only=True)["model"])
    assert sorted(written) == sorted(expected)
    assert all(torch.equal(written[k], expected[k]) for k in expected)
    model = kd.DeiTPreTrainedModel.from_pretrained(source, num_attention_heads=3)
    back = kd.DeiTPreTrainedModel.from_pretrained(str(output), num_attention_heads=3)
    assert _same_outputs(model, back, 64)


@pytest.mark.parametrize("argv, message", [
    ([MASKED, "out.pth"], "no place for DeiTForMaskedImageModeling's embeddings/mask_token"),
    ([DEIT3, "out", "--num-heads", "3"], "no DeiT III class"),
    ([WITH_TEACHER, "out.keras", "--layout", "timm"], "names a Keras file"),
    ([WITH_TEACHER, "out.onnx"], "must end with .keras"),
])
def test_layouts_that_cannot_hold_the_model_are_one_line(argv, message, tmp_path, capsys,
                                                         monkeypatch):
    pytest.importorskip("torch")
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    assert message in _error_line(capsys.readouterr().err)
    assert os.listdir(tmp_path) == []
