"""The preset table: every official checkpoint, consistent with itself and with the models."""

import re

import pytest

import keras_deit as kd
from keras_deit import presets

DEIT = [
    "deit_tiny_patch16_224", "deit_small_patch16_224", "deit_base_patch16_224",
    "deit_base_patch16_384", "deit_tiny_distilled_patch16_224",
    "deit_small_distilled_patch16_224", "deit_base_distilled_patch16_224",
    "deit_base_distilled_patch16_384",
]
DEIT3 = [
    "deit3_small_patch16_224", "deit3_small_patch16_384", "deit3_medium_patch16_224",
    "deit3_base_patch16_224", "deit3_base_patch16_384", "deit3_large_patch16_224",
    "deit3_large_patch16_384", "deit3_huge_patch14_224",
]


def _param_count(p):
    """Parameters of the classifier(s) of a preset, counted from its architecture."""
    d, layers, patch = p["hidden_size"], p["num_hidden_layers"], p["patch_size"]
    patches = (p["image_size"] // patch) ** 2
    prefix = 2 if p["distilled"] else 1
    positions = patches if p["layer_scale"] else patches + prefix
    block = 12 * d * d + 13 * d + (2 * d if p["layer_scale"] else 0)
    heads = prefix * (d * p["num_labels"] + p["num_labels"])
    return patch * patch * 3 * d + d + prefix * d + positions * d + layers * block + 2 * d + heads


def test_every_official_checkpoint_is_listed():
    assert presets.list_presets("deit") == DEIT
    assert presets.list_presets("deit3") == DEIT3
    assert presets.list_presets() == DEIT + DEIT3
    with pytest.raises(ValueError, match="family"):
        presets.list_presets("vit")


@pytest.mark.parametrize("name", DEIT + DEIT3)
def test_entry_is_consistent(name):
    p = presets.get_preset(name)
    size = re.match(r"deit3?_(\w+?)_(?:distilled_)?patch(\d+)_(\d+)$", name)
    assert p["patch_size"] == int(size[2]) and p["image_size"] == int(size[3])
    assert p["distilled"] == ("distilled" in name)
    assert p["url"].startswith("https://dl.fbaipublicfiles.com/deit/")
    assert p["timm_hub_id"].startswith(f"timm/{name}.fb_in1k")
    assert abs(_param_count(p) / 1e6 - p["params_millions"]) <= 0.1, _param_count(p)
    assert 70 < p["top1"] < 90 and p["top1_source"]
    pre = p["preprocessing"]
    assert pre["image_size"] == p["image_size"] and pre["interpolation"] == "bicubic"
    assert pre["resize"] == int(p["image_size"] / pre["crop_pct"])
    assert pre["mean"] == (0.485, 0.456, 0.406) and pre["std"] == (0.229, 0.224, 0.225)
    if p["family"] == "deit":
        # The 8-hex suffix of the original file name is the start of its sha256.
        assert p["url"].endswith(f"{name}-{p['sha256_prefix']}.pth")
        assert re.fullmatch(r"[0-9a-f]{8}", p["sha256_prefix"])
        assert p["hf_repo"] == "facebook/" + name.replace("_", "-")
        assert p["hf_layout"] == ("deit" if p["distilled"] else "vit")
        assert pre["crop_pct"] == (0.875 if p["image_size"] == 224 else 1.0)
        assert not p["layer_scale"]
    else:
        assert p["sha256_prefix"] is None and p["hf_repo"] is None and p["hf_layout"] is None
        assert "no transformers repository" in p["hf_note"]
        assert re.search(r"/deit_3_\w+_\d+_1k\.pth$", p["url"])
        assert pre["crop_pct"] == 1.0 and p["layer_scale"] and not p["distilled"]


def test_published_figures():
    top1 = {name: presets.get_preset(name)["top1"] for name in DEIT + DEIT3}
    assert top1["deit_tiny_patch16_224"] == 72.2
    assert top1["deit_base_distilled_patch16_384"] == 85.2
    assert top1["deit3_small_patch16_224"] == 81.4
    assert top1["deit3_huge_patch14_224"] == 85.2
    assert top1["deit3_large_patch16_384"] == 85.8


@pytest.mark.parametrize("name", DEIT + DEIT3)
def test_preset_config(name):
    p = presets.get_preset(name)
    config = kd.DeiTConfig.from_preset(name)
    assert config == kd.DeiTConfig(**presets.preset_arguments(name))
    assert (config.hidden_size, config.num_hidden_layers, config.num_attention_heads) == (
        p["hidden_size"], p["num_hidden_layers"], p["num_attention_heads"])
    assert config.intermediate_size == 4 * config.hidden_size
    assert config.image_hw == (p["image_size"],) * 2 and config.patch_hw == (p["patch_size"],) * 2
    assert config.num_labels == 1000 and config.hidden_act == "gelu"
    assert config.use_distillation_token == p["distilled"]
    assert config.class_token_position_embedding == (p["family"] == "deit")
    assert (config.layer_scale_init_value is not None) == (p["family"] == "deit3")
    assert config.layer_norm_eps == 1e-6
    hub = kd.DeiTConfig.from_preset(name, source="hub")
    assert hub.layer_norm_eps == (1e-12 if p["family"] == "deit" else 1e-6)
    assert presets.presets_matching(config) == [name]


def test_huge_has_80_wide_heads():
    config = kd.DeiTConfig.from_preset("deit3_huge_patch14_224")
    assert config.head_dim == 80
    assert presets.heads_for(1280, 32) == 16
    assert presets.heads_for(48, 2) is None


def test_model_has_the_published_parameter_count():
    name = "deit_tiny_distilled_patch16_224"
    model = kd.DeiTForImageClassificationWithTeacher(kd.DeiTConfig.from_preset(name))
    assert model.count_params() == _param_count(presets.get_preset(name))
    assert round(model.count_params() / 1e6, 1) == 5.9


def test_unknown_name_suggests_close_matches():
    with pytest.raises(ValueError, match="'deit_tiny_patch16_224'") as info:
        presets.get_preset("deit_tiny_patch16_244")
    assert "Did you mean" in str(info.value)
    with pytest.raises(ValueError, match="Unknown preset"):
        kd.DeiTConfig.from_preset("resnet50")
    with pytest.raises(ValueError, match="source"):
        kd.DeiTConfig.from_preset("deit_tiny_patch16_224", source="timm")


def test_get_preset_returns_a_copy():
    entry = presets.get_preset("deit_tiny_patch16_224")
    entry["top1"] = 0.0
    entry["preprocessing"]["crop_pct"] = 0.0
    assert presets.PRESETS["deit_tiny_patch16_224"]["top1"] == 72.2
    assert presets.PRESETS["deit_tiny_patch16_224"]["preprocessing"]["crop_pct"] == 0.875
