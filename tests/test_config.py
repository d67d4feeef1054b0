"""DeiTConfig: transformers' fields and defaults, config.json I/O, validation."""

import json
import os

import pytest

import keras_deit as kd
from helpers import HF


def test_defaults_match_transformers():
    transformers = pytest.importorskip("transformers")
    ours, theirs = kd.DeiTConfig(), transformers.DeiTConfig()
    for field in ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
                  "hidden_act", "hidden_dropout_prob", "attention_probs_dropout_prob",
                  "initializer_range", "layer_norm_eps", "image_size", "patch_size",
                  "num_channels", "qkv_bias", "encoder_stride", "pooler_output_size",
                  "pooler_act", "num_labels", "problem_type"):
        assert getattr(ours, field) == getattr(theirs, field), field
    assert ours.id2label == theirs.id2label
    assert ours.use_distillation_token and ours.num_prefix_tokens == 2


def test_reads_hf_config_and_keeps_unknown_keys(tmp_path):
    config = kd.DeiTConfig.from_json(os.path.join(HF, "with_teacher"))
    assert (config.hidden_size, config.num_labels, config.layer_norm_eps) == (48, 5, 1e-12)
    assert config.extra["transformers_version"] == "4.57.6"
    data = config.to_dict()
    data["some_future_key"] = [1, 2]
    path = tmp_path / "config.json"
    path.write_text(json.dumps(data))
    again = kd.DeiTConfig.from_json(str(path))
    assert again.extra["some_future_key"] == [1, 2]
    again.to_json(str(tmp_path))
    assert json.loads(path.read_text())["some_future_key"] == [1, 2]
    assert kd.DeiTConfig.from_json(str(tmp_path)) == again


def test_transformers_reads_our_config(tmp_path):
    transformers = pytest.importorskip("transformers")
    ours = kd.DeiTConfig(hidden_size=96, num_attention_heads=4, num_labels=3, image_size=64)
    ours.to_json(str(tmp_path))
    theirs = transformers.DeiTConfig.from_pretrained(str(tmp_path))
    assert (theirs.hidden_size, theirs.num_attention_heads, theirs.num_labels) == (96, 4, 3)


def test_vit_layout_has_no_distillation_token():
    config = kd.DeiTConfig.from_json(os.path.join(HF, "vit_classification"))
    assert not config.use_distillation_token and config.num_prefix_tokens == 1
    assert config.to_dict()["model_type"] == "vit"


def test_labels_and_replace():
    config = kd.DeiTConfig(id2label={"0": "cat", "1": "dog"})
    assert config.num_labels == 2 and config.label2id == {"cat": 0, "dog": 1}
    bigger = config.replace(num_labels=4)
    assert bigger.num_labels == 4 and bigger.id2label[3] == "LABEL_3"
    assert config.num_labels == 2  # unchanged


def test_num_labels_setter_matches_transformers():
    transformers = pytest.importorskip("transformers")
    ours = kd.DeiTConfig(id2label={"0": "cat", "1": "dog"})
    theirs = transformers.DeiTConfig(
        id2label={0: "cat", 1: "dog"}, label2id={"cat": 0, "dog": 1}
    )
    for count in (2, 3, 0):  # the same count keeps the names; a new one renames to LABEL_i
        ours.num_labels = theirs.num_labels = count
        assert ours.num_labels == theirs.num_labels == count
        assert ours.id2label == theirs.id2label and ours.label2id == theirs.label2id
    assert kd.DeiTConfig.from_dict(ours.to_dict()) == ours
    with pytest.raises(ValueError, match="num_labels=-1"):
        ours.num_labels = -1


@pytest.mark.parametrize("changes, message", [
    (dict(hidden_size=100, num_attention_heads=12), "divisible by `num_attention_heads`"),
    (dict(image_size=230), "divisible by `patch_size`"),
    (dict(hidden_act="gelu_fancy"), "Unknown activation"),
    (dict(hidden_dropout_prob=1.5), "must be in [0, 1)"),
    (dict(problem_type="ranking"), "problem_type"),
    (dict(num_labels=3, id2label={0: "a"}), "disagrees"),
    (dict(patch_size=0), "positive int"),
])
def test_invalid_configs_are_named(changes, message):
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")):
        kd.DeiTConfig(**changes)


def test_other_architecture_config_is_refused():
    with pytest.raises(ValueError, match="model_type='bert'"):
        kd.DeiTConfig.from_dict({"model_type": "bert", "hidden_size": 768})


def test_truncated_config_file(tmp_path):
    path = tmp_path / "config.json"
    path.write_text('{"hidden_size": 48, "num_hid')
    with pytest.raises(ValueError, match="not valid JSON"):
        kd.DeiTConfig.from_json(str(path))
