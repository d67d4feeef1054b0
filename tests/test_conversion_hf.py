"""Loading HF checkpoints: formats, heads across checkpoints, strictness, damaged files."""

import json
import os
import shutil

import numpy as np
import pytest

import keras_deit as kd
from helpers import HF, max_abs_diff, to_numpy
from keras_deit.conversion import CheckpointError, read_checkpoint
from keras_deit.conversion.readers import read_safetensors, read_tf_h5

WITH_TEACHER = os.path.join(HF, "with_teacher")
CLASSIFICATION = os.path.join(HF, "classification")


def _copy_folder(src, tmp_path, weights="model.safetensors"):
    dst = tmp_path / "ckpt"
    dst.mkdir()
    shutil.copy(os.path.join(src, "config.json"), dst)
    shutil.copy(os.path.join(src, weights), dst)
    return dst


def test_safetensors_and_h5_readers_agree():
    a = read_safetensors(os.path.join(WITH_TEACHER, "model.safetensors"))
    b = read_tf_h5(os.path.join(WITH_TEACHER, "tf_model.h5"))
    assert set(a) == set(b)
    assert max(max_abs_diff(a[k], b[k]) for k in a) == 0.0


def test_pytorch_bin_loads_like_safetensors(tmp_path):
    torch = pytest.importorskip("torch")
    folder = _copy_folder(WITH_TEACHER, tmp_path)
    tensors = read_safetensors(str(folder / "model.safetensors"))
    torch.save({k: torch.from_numpy(v) for k, v in tensors.items()}, folder / "pytorch_model.bin")
    os.remove(folder / "model.safetensors")
    model = kd.DeiTForImageClassificationWithTeacher.from_pretrained(str(folder))
    reference = kd.DeiTForImageClassificationWithTeacher.from_pretrained(WITH_TEACHER)
    x = np.random.rand(1, 32, 32, 3).astype("float32")
    assert max_abs_diff(model(x)["logits"], reference(x)["logits"]) == 0.0
    assert model.loading_info.source.endswith("pytorch_model.bin")


def test_base_model_from_a_classification_checkpoint_drops_the_head():
    model = kd.DeiTModel.from_pretrained(CLASSIFICATION, add_pooling_layer=False)
    assert model.loading_info.dropped == ["classifier.bias", "classifier.weight"]
    assert model.loading_info.fresh == []
    classifier = kd.DeiTForImageClassification.from_pretrained(CLASSIFICATION)
    x = np.random.rand(1, 32, 32, 3).astype("float32")
    assert max_abs_diff(model(x)["last_hidden_state"], classifier.deit(x)["last_hidden_state"]) == 0.0


def test_missing_or_resized_heads_are_fresh_and_reported():
    with pytest.warns(UserWarning, match="cls_classifier/kernel"):
        model = kd.DeiTForImageClassificationWithTeacher.from_pretrained(CLASSIFICATION)
    assert "distillation_classifier/kernel" in model.loading_info.fresh
    with pytest.warns(UserWarning, match="classifier/kernel"):
        model = kd.DeiTForImageClassification.from_pretrained(CLASSIFICATION, num_labels=10)
    assert model.config.num_labels == 10 and tuple(model.classifier.kernel.shape) == (48, 10)
    with pytest.warns(UserWarning, match="embeddings/mask_token"):
        kd.DeiTForMaskedImageModeling.from_pretrained(CLASSIFICATION)


def test_class_follows_the_checkpoint_when_not_given():
    model = kd.DeiTPreTrainedModel.from_pretrained(WITH_TEACHER)
    assert type(model) is kd.DeiTForImageClassificationWithTeacher
    vit = kd.DeiTPreTrainedModel.from_pretrained(os.path.join(HF, "vit_classification"))
    assert type(vit) is kd.DeiTForImageClassification and not vit.config.use_distillation_token


def test_vit_layout_cannot_build_a_two_head_model():
    with pytest.raises(ValueError, match="needs a distillation token"):
        kd.DeiTForImageClassificationWithTeacher.from_pretrained(os.path.join(HF, "vit_classification"))


def test_checkpoint_of_another_size_is_refused_with_names():
    config = kd.DeiTConfig.from_json(WITH_TEACHER).replace(hidden_size=96, intermediate_size=192)
    # Refused from the header's shapes, before the model is built.
    with pytest.raises(CheckpointError, match=r"hidden_size \(embeddings.cls_token\): config "
                                              r"\(1, 1, 96\), checkpoint \(1, 1, 48\)"):
        kd.DeiTForImageClassificationWithTeacher.from_pretrained(WITH_TEACHER, config=config)
    deeper = kd.DeiTConfig.from_json(WITH_TEACHER).replace(num_hidden_layers=3)
    with pytest.raises(CheckpointError, match="num_hidden_layers: config 3, checkpoint 2"):
        kd.DeiTForImageClassificationWithTeacher.from_pretrained(WITH_TEACHER, config=deeper)
    # The same checks after building, for tensors handed over directly.
    from keras_deit.conversion import assign_checkpoint

    with pytest.raises(CheckpointError, match="no tensor in the checkpoint: encoder/layer_2/"):
        assign_checkpoint(kd.DeiTForImageClassificationWithTeacher(deeper),
                          read_safetensors(os.path.join(WITH_TEACHER, "model.safetensors")))


def test_distilled_checkpoint_into_a_model_without_the_token_is_refused():
    config = kd.DeiTConfig.from_json(WITH_TEACHER).replace(use_distillation_token=False)
    with pytest.raises(CheckpointError, match="use_distillation_token: config False, checkpoint True"):
        kd.DeiTForImageClassification.from_pretrained(WITH_TEACHER, config=config)


def test_unused_tensors_are_an_error_unless_not_strict(tmp_path):
    folder = _copy_folder(WITH_TEACHER, tmp_path)
    tensors = read_safetensors(str(folder / "model.safetensors"))
    tensors["deit.encoder.layer.0.attention.attention.rotary.weight"] = np.zeros((2,), "float32")
    _write_safetensors(folder / "model.safetensors", tensors)
    with pytest.raises(CheckpointError, match="fit nowhere in the model: encoder.layer.0.attention.attention.rotary.weight"):
        kd.DeiTForImageClassificationWithTeacher.from_pretrained(str(folder))
    model = kd.DeiTForImageClassificationWithTeacher.from_pretrained(str(folder), strict=False)
    assert "encoder.layer.0.attention.attention.rotary.weight" in model.loading_info.dropped


def test_other_architecture_is_refused(tmp_path):
    folder = _copy_folder(WITH_TEACHER, tmp_path)
    config = json.loads((folder / "config.json").read_text())
    config["model_type"] = "swin"
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="model_type='swin', not DeiT"):
        kd.DeiTModel.from_pretrained(str(folder))


@pytest.mark.parametrize("weights", ["model.safetensors", "tf_model.h5"])
def test_truncated_files_are_named(weights, tmp_path):
    folder = _copy_folder(WITH_TEACHER, tmp_path, weights)
    path = folder / weights
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated"):
        kd.DeiTForImageClassificationWithTeacher.from_pretrained(str(folder))


def test_truncated_pytorch_file_is_named(tmp_path):
    torch = pytest.importorskip("torch")
    path = tmp_path / "pytorch_model.bin"
    torch.save({"a": torch.zeros(1000)}, path)
    path.write_bytes(path.read_bytes()[:300])
    with pytest.raises(CheckpointError, match="truncated"):
        read_checkpoint(str(path))


def test_corrupt_and_unknown_files(tmp_path):
    bad = tmp_path / "model.safetensors"
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all}")
    with pytest.raises(CheckpointError, match="corrupt safetensors header"):
        read_checkpoint(str(bad))
    other = tmp_path / "weights.onnx"
    other.write_bytes(b"x")
    with pytest.raises(CheckpointError, match="Unknown checkpoint format"):
        read_checkpoint(str(other))
    empty = tmp_path / "empty"
    empty.mkdir()
    shutil.copy(os.path.join(WITH_TEACHER, "config.json"), empty)
    with pytest.raises(FileNotFoundError, match="holds no weights file"):
        kd.DeiTModel.from_pretrained(str(empty))


def test_failed_load_leaves_nothing_half_written():
    """Checks run before any assignment: a failing load never touches a model's variables."""
    from keras_deit.conversion import assign_checkpoint

    model = kd.DeiTForImageClassificationWithTeacher(kd.DeiTConfig.from_json(WITH_TEACHER))
    before = [to_numpy(v).copy() for v in model.weights]
    tensors = read_safetensors(os.path.join(WITH_TEACHER, "model.safetensors"))
    tensors["deit.layernorm.weight"] = np.zeros((7,), "float32")  # the last row checked
    with pytest.raises(CheckpointError):
        assign_checkpoint(model, tensors)
    assert all(np.array_equal(b, to_numpy(v)) for b, v in zip(before, model.weights))


def _write_safetensors(path, tensors):
    import struct

    header, offset, blobs = {}, 0, []
    for name, value in tensors.items():
        value = np.ascontiguousarray(value, "float32")
        header[name] = {"dtype": "F32", "shape": list(value.shape),
                        "data_offsets": [offset, offset + value.nbytes]}
        offset += value.nbytes
        blobs.append(value.tobytes())
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + b"".join(blobs))
