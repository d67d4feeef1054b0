"""Parity with transformers on the same weights and inputs (reference outputs of v5)."""

import os

import numpy as np
import pytest

import keras_deit as kd
from helpers import HF, max_abs_diff, to_numpy

TOLERANCE = 1e-5

HEADS = {
    "model": kd.DeiTModel,
    "classification": kd.DeiTForImageClassification,
    "with_teacher": kd.DeiTForImageClassificationWithTeacher,
    "masked_image_modeling": kd.DeiTForMaskedImageModeling,
}


def _load(head, weights_file, **options):
    cls = HEADS.get(head, kd.DeiTForImageClassification)
    return cls.from_pretrained(os.path.join(HF, head), weights_file=weights_file,
                               data_format="channels_first", **options)


def _inputs(head):
    name = "reference_v5.npz" if head == "vit_classification" else "reference.npz"
    return np.load(os.path.join(HF, head, name))


def _reference(head):
    return np.load(os.path.join(HF, head, "reference_v5.npz"))


def _compare(outputs, reference, prefix):
    """Max-abs diff of every `prefix*` reference entry against our outputs."""
    diffs = {}
    for key in reference.files:
        if not key.startswith(prefix) or (prefix == "pt_" and key.startswith("pt_interp_")):
            continue
        name = key[len(prefix):]
        if name.rsplit("_", 1)[0] in ("hidden_states", "attentions"):
            base, index = name.rsplit("_", 1)
            if base not in outputs:
                continue  # not requested: the sdpa kernel runs only without attention maps
            ours = outputs[base][int(index)]
        elif name == "loss":
            continue  # compared in test_masked_image_modeling_loss
        else:
            ours = outputs[name]
        diffs[name] = max_abs_diff(ours, reference[key])
    assert diffs, f"no reference entries with prefix {prefix!r}"
    return diffs


# Every head from both formats; the ViT-layout fixture exists as safetensors only.
CASES = [(h, f) for h in HEADS for f in ("model.safetensors", "tf_model.h5")]
CASES.append(("vit_classification", "model.safetensors"))


@pytest.mark.parametrize("attn_implementation", ["sdpa", "eager"])
@pytest.mark.parametrize("head, weights_file", CASES)
def test_outputs_match_transformers(head, weights_file, attn_implementation):
    """Every output; with "eager" the attention maps too (asking for them runs that kernel,
    so "sdpa" is checked without them)."""
    inputs, reference = _inputs(head), _reference(head)
    model = _load(head, weights_file, output_hidden_states=True,
                  output_attentions=attn_implementation == "eager" and head != "vit_classification",
                  attn_implementation=attn_implementation)
    feed = inputs["pixel_values"]
    if head == "masked_image_modeling":
        feed = {"pixel_values": feed, "bool_masked_pos": inputs["bool_masked_pos"]}
    diffs = _compare(model(feed), reference, "pt_")
    assert max(diffs.values()) <= TOLERANCE, diffs
    expected_keys = {"logits", "cls_logits", "distillation_logits"} if head == "with_teacher" else set()
    assert expected_keys <= set(diffs)


@pytest.mark.parametrize("attn_implementation", ["sdpa", "eager"])
@pytest.mark.parametrize("head, weights_file", [c for c in CASES if c[0] != "masked_image_modeling"])
def test_interpolated_position_encoding_matches_transformers(head, weights_file,
                                                             attn_implementation):
    model = _load(head, weights_file, interpolate_pos_encoding=True,
                  attn_implementation=attn_implementation)
    pixel_values = _inputs(head)["pixel_values_384"]
    assert pixel_values.shape[2:] == (48, 40)
    diffs = _compare(model(pixel_values), _reference(head), "pt_interp_")
    assert max(diffs.values()) <= TOLERANCE, diffs


@pytest.mark.parametrize("weights_file", ["model.safetensors", "tf_model.h5"])
def test_masked_image_modeling_loss(weights_file):
    inputs, reference = _inputs("masked_image_modeling"), _reference("masked_image_modeling")
    model = _load("masked_image_modeling", weights_file)
    feed = {"pixel_values": inputs["pixel_values"], "bool_masked_pos": inputs["bool_masked_pos"]}
    reconstruction = model(feed)["reconstruction"]
    loss = kd.masked_image_modeling_loss(
        inputs["pixel_values"], reconstruction, inputs["bool_masked_pos"],
        patch_size=model.config.patch_size, data_format="channels_first",
    )
    assert abs(float(to_numpy(loss)) - float(reference["pt_loss"])) <= TOLERANCE


def test_channels_last_equals_channels_first():
    inputs = _inputs("with_teacher")["pixel_values"]
    first = _load("with_teacher", "model.safetensors")(inputs)
    last = kd.DeiTForImageClassificationWithTeacher.from_pretrained(os.path.join(HF, "with_teacher"))
    out = last(np.transpose(inputs, (0, 2, 3, 1)))
    assert max_abs_diff(out["logits"], first["logits"]) == 0.0


@pytest.mark.slow
def test_full_size_deit_base_matches_transformers(tmp_path):
    """A random-weight transformers model of deit-base size against ours, on the logits: once
    through `save_pretrained` + `from_pretrained`, once from the in-memory v5 state dict."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from keras_deit.conversion import assign_checkpoint

    torch.manual_seed(0)
    reference = transformers.DeiTForImageClassificationWithTeacher(
        transformers.DeiTConfig(num_labels=1000)
    ).eval()
    pixel_values = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        expected = reference(pixel_values)
    reference.save_pretrained(tmp_path)
    state = {k: v.numpy() for k, v in reference.state_dict().items()}
    del reference

    model = kd.DeiTForImageClassificationWithTeacher.from_pretrained(
        str(tmp_path), data_format="channels_first"
    )
    assert model.config.hidden_size == 768 and model.config.num_labels == 1000
    out = model(pixel_values.numpy())
    for key in ("logits", "cls_logits", "distillation_logits"):
        diff = max_abs_diff(out[key], getattr(expected, key).numpy())
        assert diff <= 1e-4, (key, diff)

    for variable in model.weights:  # Refill from the v5 in-memory names.
        variable.assign(np.zeros(variable.shape, variable.dtype))
    assign_checkpoint(model, state)
    assert max_abs_diff(model(pixel_values.numpy())["logits"], expected.logits.numpy()) <= 1e-4
