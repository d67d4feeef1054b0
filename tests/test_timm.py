"""timm / original DeiT weights: key map, config from shapes, and parity with timm's outputs.

The fixtures in tests/data/timm were written by timm itself (see manifest.json): a state dict
in timm's names, and the outputs timm computed for it. Reading `.pth` files needs torch.
"""

import json
import os
import warnings

import numpy as np
import pytest

import keras_deit as kd
from helpers import TIMM, max_abs_diff
from keras_deit.conversion import timm
from keras_deit.conversion.loading import assign_checkpoint
from keras_deit.conversion.readers import CheckpointError

TOLERANCE = 1e-5

with open(os.path.join(TIMM, "manifest.json")) as f:
    MANIFEST = json.load(f)
NAMES = sorted(MANIFEST)


def _path(name):
    return os.path.join(TIMM, name + ".pth")


def _reference(name):
    return np.load(os.path.join(TIMM, name + ".npz"))


@pytest.fixture(scope="module")
def states():
    """The fixture state dicts, read once (needs torch)."""
    pytest.importorskip("torch")
    from keras_deit.conversion.readers import read_torch

    return {name: read_torch(_path(name)) for name in NAMES}


def _load(cls, name, **options):
    heads = MANIFEST[name]["num_heads"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # DeiTModel's pooler is fresh: expected here
        return cls.from_pretrained(_path(name), num_attention_heads=heads,
                                   data_format="channels_first", **options)


@pytest.mark.parametrize("name", NAMES)
def test_outputs_match_timm(name, states):
    reference = _reference(name)
    pixel_values = reference["pixel_values"]
    diffs = {}
    backbone = _load(kd.DeiTModel, name, add_pooling_layer=False)
    diffs["features"] = max_abs_diff(backbone(pixel_values)["last_hidden_state"],
                                     reference["features"])
    model = _load(kd.DeiTPreTrainedModel, name)  # the checkpoint's own class
    outputs = model(pixel_values)
    for key in ("logits", "cls_logits", "distillation_logits"):
        if key in reference.files:
            diffs[key] = max_abs_diff(outputs[key], reference[key])
    assert max(diffs.values()) <= TOLERANCE, diffs
    distilled = "distilled" in name
    assert set(diffs) == ({"features", "logits", "cls_logits", "distillation_logits"}
                          if distilled else {"features", "logits"})
    assert type(model) is (kd.DeiTForImageClassificationWithTeacher if distilled
                           else kd.DeiTForImageClassification)
    assert model.loading_info.format == "timm"
    assert model.loading_info.fresh == [] and model.loading_info.dropped == []
    assert sorted(backbone.loading_info.dropped) == sorted(
        n for n in states[name] if n.startswith("head"))


@pytest.mark.parametrize("name", NAMES)
def test_config_from_shapes(name, states):
    m = MANIFEST[name]
    config = timm.config_from_timm_state(states[name], num_attention_heads=m["num_heads"])
    assert (config.hidden_size, config.num_hidden_layers, config.num_attention_heads) == (
        m["embed_dim"], m["depth"], m["num_heads"])
    assert config.image_hw == (m["img_size"],) * 2 and config.patch_hw == (m["patch_size"],) * 2
    assert config.num_labels == m["num_classes"]
    assert config.intermediate_size == 4 * m["embed_dim"]
    assert config.layer_norm_eps == m["layer_norm_eps"] == 1e-6
    assert config.hidden_act == "gelu"
    assert config.use_distillation_token == (m["timm_class"] == "VisionTransformerDistilled")
    assert config.class_token_position_embedding == (not m.get("no_embed_class", False))
    assert (config.layer_scale_init_value is not None) == ("init_values" in m)


def test_head_count_needs_help_when_shapes_cannot_tell(states):
    # Hidden 48 is no multiple of timm's 64-wide heads, and no preset is 48 wide.
    with pytest.raises(CheckpointError, match="num_attention_heads"):
        timm.config_from_timm_state(states["deit_micro_patch16_64"])
    # Hidden 64 (4 heads of 16 in the fixture) reads as one 64-wide head by default, said.
    notes = []
    with pytest.warns(UserWarning, match="the head count is a guess: 1 heads"):
        config = timm.config_from_timm_state(states["deit_micro_distilled_patch8_48"],
                                             notes=notes)
    assert config.num_attention_heads == 1 and "--num-heads N" in notes[0]
    with pytest.raises(CheckpointError, match="does not divide"):
        timm.config_from_timm_state(states["deit_micro_patch16_64"], num_attention_heads=5)


def test_head_count_of_an_official_size_comes_from_the_presets():
    rng = np.random.RandomState(0)
    d = 1280  # DeiT III huge: 16 heads of 80, not 20 of 64
    state = {
        "cls_token": rng.rand(1, 1, d), "pos_embed": rng.rand(1, 256, d),
        "patch_embed.proj.weight": rng.rand(d, 3, 14, 14),
        "blocks.0.mlp.fc1.weight": np.zeros((4 * d, 1)), "blocks.0.ls1.gamma": np.zeros(d),
    }
    state.update({f"blocks.{i}.norm1.weight": np.zeros(d) for i in range(32)})
    config = timm.config_from_timm_state(state)
    assert config.num_attention_heads == 16
    assert config.image_hw == (224, 224) and not config.class_token_position_embedding
    assert config.num_labels == 0 and timm.model_class_name(config) == "DeiTModel"


def test_config_or_preset_mismatch_lists_the_differences(states):
    preset = kd.DeiTConfig.from_preset("deit_tiny_patch16_224")
    with pytest.raises(CheckpointError) as info:
        timm.config_from_timm_state(states["deit_micro_patch16_64"], config=preset)
    message = str(info.value)
    for field in ("hidden_size", "num_hidden_layers", "intermediate_size", "position embeddings"):
        assert field in message
    with pytest.raises(CheckpointError, match="layer scale"):
        kd.DeiTForImageClassification.from_pretrained(
            _path("deit3_micro_patch16_64"),
            config=timm.config_from_timm_state(states["deit_micro_patch16_64"],
                                               num_attention_heads=3),
        )
    # A matching config is used as given (its labels and epsilon included).
    good = timm.config_from_timm_state(states["deit_micro_patch16_64"], num_attention_heads=3)
    assert timm.config_from_timm_state(states["deit_micro_patch16_64"], config=good) is good


def test_distilled_checkpoint_as_plain_classifier_drops_head_dist(states):
    name = "deit_micro_distilled_patch16_64"
    model = _load(kd.DeiTForImageClassification, name)
    assert model.config.use_distillation_token
    assert model.loading_info.dropped == ["head_dist.bias", "head_dist.weight"]
    reference = _reference(name)
    assert max_abs_diff(model(reference["pixel_values"])["logits"],
                        reference["cls_logits"]) <= TOLERANCE


def test_new_label_count_leaves_the_heads_fresh(states):
    name = "deit_micro_distilled_patch16_64"
    with pytest.warns(UserWarning, match="cls_classifier/kernel"):
        model = kd.DeiTForImageClassificationWithTeacher.from_pretrained(
            _path(name), num_attention_heads=3, num_labels=4)
    assert model.config.num_labels == 4
    assert "distillation_classifier/kernel" in model.loading_info.fresh


def test_facebookresearch_names_load_the_same(states):
    """DeiT III files from facebookresearch name LayerScale `gamma_1`/`gamma_2`; DDP checkpoints
    prefix every name with `module.`."""
    name = "deit3_micro_patch16_64"
    state = {
        "module." + k.replace("ls1.gamma", "gamma_1").replace("ls2.gamma", "gamma_2"): v
        for k, v in states[name].items()
    }
    assert "module.blocks.0.gamma_1" in state and timm.is_timm_state(state)
    config = timm.config_from_timm_state(state, num_attention_heads=3)
    model = kd.DeiTForImageClassification(config, data_format="channels_first")
    info = assign_checkpoint(model, state, source="renamed")
    assert info.format == "timm" and info.dropped == []
    reference = _reference(name)
    logits = model(reference["pixel_values"])["logits"]
    assert max_abs_diff(logits, reference["logits"]) <= TOLERANCE


def test_layer_scale_into_a_model_without_is_refused(states):
    state = states["deit3_micro_patch16_64"]
    config = timm.config_from_timm_state(state, num_attention_heads=3).replace(
        layer_scale_init_value=None)
    model = kd.DeiTForImageClassification(config)
    with pytest.raises(CheckpointError, match="LayerScale"):
        assign_checkpoint(model, state, strict=False)


def test_missing_block_tensor_is_reported(states):
    state = dict(states["deit_micro_patch16_64"])
    del state["blocks.1.mlp.fc2.bias"]
    config = timm.config_from_timm_state(state, num_attention_heads=3)
    with pytest.raises(CheckpointError, match="encoder/layer_1/mlp/fc2/bias"):
        assign_checkpoint(kd.DeiTForImageClassification(config), state)


def test_to_transformers_splits_qkv(states):
    state = states["deit_micro_distilled_patch16_64"]
    renamed = timm.to_transformers(state)
    qkv = state["blocks.0.attn.qkv.weight"]
    prefix = "deit.encoder.layer.0.attention.attention."
    np.testing.assert_array_equal(renamed[prefix + "key.weight"], qkv[48:96])
    assert "cls_classifier.weight" in renamed and "distillation_classifier.bias" in renamed
    assert "deit.embeddings.distillation_token" in renamed
    with pytest.raises(CheckpointError, match="DeiT III"):
        timm.to_transformers(states["deit3_micro_patch16_64"])


@pytest.mark.parametrize("name", NAMES)
def test_torch_reference_reproduces_timm(name, states):
    """The torch functional reference of `--verify` (for DeiT III) against timm's outputs."""
    from keras_deit.conversion.verify import timm_reference

    import torch

    reference = _reference(name)
    config = timm.config_from_timm_state(states[name], MANIFEST[name]["num_heads"])
    with torch.no_grad():
        out = timm_reference(states[name], config, reference["pixel_values"])
    assert np.max(np.abs(out["last_hidden_state"] - reference["features"])) <= TOLERANCE
    for key in ("logits", "cls_logits", "distillation_logits"):
        if key in reference.files:
            assert np.max(np.abs(out[key] - reference[key])) <= TOLERANCE, key
