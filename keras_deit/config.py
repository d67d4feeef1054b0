"""`DeiTConfig`: the architecture of a DeiT model, read from and written to HF `config.json`."""

import copy
import json
import math
import os

from keras_deit import atomic, presets
from keras_deit.checks import is_int, pair

# Activations a config may name, with the Keras activation each one means. "gelu" is the exact
# (erf) form used by every DeiT release; "gelu_new" and friends are the tanh approximation.
ACTIVATIONS = {
    "gelu": "gelu_exact",
    "gelu_python": "gelu_exact",
    "gelu_new": "gelu_tanh",
    "gelu_pytorch_tanh": "gelu_tanh",
    "gelu_fast": "gelu_tanh",
    "relu": "relu",
    "silu": "silu",
    "swish": "silu",
    "tanh": "tanh",
    "sigmoid": "sigmoid",
    "linear": "linear",
}

PROBLEM_TYPES = ("regression", "single_label_classification", "multi_label_classification")


class ConfigError(ValueError):
    """A config field (or a `config.json`) with the wrong type or value; the message names the
    field, the file when there is one, and what the field must be."""


def _is_number(value):
    # bool is an int to Python; `layer_norm_eps: true` would silently be 1.0.
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def read_json_object(path, what="file"):
    """The JSON object in the file at `path`; a `ConfigError` naming the file when it is not
    UTF-8, not JSON, or JSON but not an object (`null`, a list, ...)."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError:
        raise FileNotFoundError(f"No {what} at {path!r}.") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path!r} is not UTF-8 text (byte {e.start}): it is corrupt or not a "
                          f"{what}; download it again.") from None
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path!r} is not valid JSON ({e}); the file may be truncated: "
                          "download it again.") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path!r} must hold a JSON object, got {type(data).__name__} "
                          f"({json.dumps(data)[:40]}): it is not a {what}.")
    return data


def _pair(value, name):
    """Returns `value` as an (height, width) tuple of positive ints."""
    return pair(value, name, ConfigError)


def num_prefix_tokens(use_distillation_token):
    """Tokens before the patches: 1 (class token) or 2 (class and distillation tokens)."""
    return 2 if use_distillation_token else 1


def num_position_prefix_tokens(use_distillation_token, class_token_position_embedding):
    """Position-embedding entries before the patches': the prefix tokens when the positions
    cover them (DeiT, ViT), else 0 (DeiT III)."""
    return num_prefix_tokens(use_distillation_token) if class_token_position_embedding else 0


class DeiTConfig:
    """The hyper-parameters of a DeiT (or plain ViT) model.

    Fields and defaults are those of transformers' `DeiTConfig` (deit-base at 224px), plus:

    - `num_labels` / `id2label` / `label2id` / `problem_type` for the classification heads;
    - `use_distillation_token`: True for DeiT (token layout `[CLS, DIST, patches]`); False for the
      non-distilled checkpoints, which the hub stores as ViT (`[CLS, patches]`);
    - `class_token_position_embedding`: True for DeiT v1/ViT (position embeddings cover the prefix
      tokens); False for DeiT III, which adds them to the patches only;
    - `layer_scale_init_value`: None, or the initial LayerScale value (DeiT III) that scales each
      residual branch by a learned per-channel vector;
    - `drop_path_rate`: stochastic depth, linearly increasing over the blocks (training only).

    Unknown keys read from a `config.json` are kept in `extra` and written back unchanged.
    """

    model_type = "deit"

    def __init__(
        self,
        hidden_size=768,
        num_hidden_layers=12,
        num_attention_heads=12,
        intermediate_size=3072,
        hidden_act="gelu",
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        initializer_range=0.02,
        layer_norm_eps=1e-12,
        image_size=224,
        patch_size=16,
        num_channels=3,
        qkv_bias=True,
        encoder_stride=16,
        pooler_output_size=None,
        pooler_act="tanh",
        num_labels=None,
        id2label=None,
        label2id=None,
        problem_type=None,
        use_distillation_token=True,
        class_token_position_embedding=True,
        layer_scale_init_value=None,
        drop_path_rate=0.0,
        extra=None,
    ):
        self.hidden_size = hidden_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.intermediate_size = intermediate_size
        self.hidden_act = hidden_act
        self.hidden_dropout_prob = hidden_dropout_prob
        self.attention_probs_dropout_prob = attention_probs_dropout_prob
        self.initializer_range = initializer_range
        self.layer_norm_eps = layer_norm_eps
        self.image_size = image_size
        self.patch_size = patch_size
        self.num_channels = num_channels
        self.qkv_bias = qkv_bias
        self.encoder_stride = encoder_stride
        # transformers resolves an unset pooler width to the hidden size.
        self.pooler_output_size = pooler_output_size or hidden_size
        self.pooler_act = pooler_act
        self.id2label, self.label2id = _labels(num_labels, id2label, label2id)
        self.problem_type = problem_type
        self.use_distillation_token = use_distillation_token
        self.class_token_position_embedding = class_token_position_embedding
        self.layer_scale_init_value = layer_scale_init_value
        self.drop_path_rate = drop_path_rate
        self.extra = dict(extra or {})
        self.validate()

    # ---- derived values -------------------------------------------------------------------
    @property
    def num_labels(self):
        """Number of classes of the classification heads."""
        return len(self.id2label)

    @num_labels.setter
    def num_labels(self, num_labels):
        # transformers' semantics: a new count replaces both label maps with LABEL_i names;
        # the same count keeps the maps (and their names) as they are.
        if not is_int(num_labels) or num_labels < 0:
            raise ConfigError(f"`num_labels` must be an int >= 0. Received: num_labels={num_labels!r}")
        if num_labels != self.num_labels:
            self.id2label, self.label2id = _labels(num_labels, None, None)

    @property
    def image_hw(self):
        """The configured input size as (height, width)."""
        return _pair(self.image_size, "image_size")

    @property
    def patch_hw(self):
        """The patch size as (height, width)."""
        return _pair(self.patch_size, "patch_size")

    @property
    def grid_size(self):
        """The patch grid (rows, columns) of an input of the configured size."""
        (h, w), (ph, pw) = self.image_hw, self.patch_hw
        return h // ph, w // pw

    @property
    def num_patches(self):
        """Number of patch tokens at the configured size."""
        rows, cols = self.grid_size
        return rows * cols

    @property
    def num_prefix_tokens(self):
        """1 (class token) or 2 (class and distillation tokens)."""
        return num_prefix_tokens(self.use_distillation_token)

    @property
    def num_position_prefix_tokens(self):
        """Position-embedding entries before the patches' (0 for DeiT III)."""
        return num_position_prefix_tokens(self.use_distillation_token,
                                          self.class_token_position_embedding)

    @property
    def head_dim(self):
        """Width of one attention head."""
        return self.hidden_size // self.num_attention_heads

    # ---- validation -----------------------------------------------------------------------
    def validate(self):
        """Raises `ConfigError` (a `ValueError`) naming the first wrong field and the fix."""
        for name in ("hidden_size", "num_hidden_layers", "num_attention_heads",
                     "intermediate_size", "num_channels", "encoder_stride"):
            value = getattr(self, name)
            if not is_int(value) or value <= 0:
                raise ConfigError(f"`{name}` must be a positive int. Received: {name}={value!r}")
        # Strings such as "false" are truthy: a flag that is not a bool is refused, not guessed.
        for name in ("qkv_bias", "use_distillation_token", "class_token_position_embedding"):
            value = getattr(self, name)
            if not isinstance(value, bool):
                raise ConfigError(f"`{name}` must be true or false. Received: {name}={value!r}")
        if self.hidden_size % self.num_attention_heads:
            raise ConfigError(
                "`hidden_size` must be divisible by `num_attention_heads` so that every head has "
                f"the same width. Received: hidden_size={self.hidden_size}, "
                f"num_attention_heads={self.num_attention_heads}"
            )
        (h, w), (ph, pw) = self.image_hw, self.patch_hw
        if h % ph or w % pw:
            raise ConfigError(
                "`image_size` must be divisible by `patch_size`: pick an image size that is a "
                f"multiple of the patch. Received: image_size={self.image_size}, "
                f"patch_size={self.patch_size}"
            )
        for name in ("hidden_act", "pooler_act"):
            value = getattr(self, name)
            if not isinstance(value, str) or value not in ACTIVATIONS:
                raise ConfigError(
                    f"Unknown activation `{name}`={value!r}. Use one of {sorted(ACTIVATIONS)}."
                )
        for name in ("hidden_dropout_prob", "attention_probs_dropout_prob", "drop_path_rate"):
            value = getattr(self, name)
            if not _is_number(value) or not 0.0 <= value < 1.0:
                raise ConfigError(f"`{name}` must be in [0, 1). Received: {name}={value!r}")
        for name in ("layer_norm_eps", "initializer_range"):
            value = getattr(self, name)
            if not (_is_number(value) and value > 0 and math.isfinite(value)):
                raise ConfigError(
                    f"`{name}` must be a positive number. Received: {name}={value!r}"
                )
        if self.pooler_output_size is not None and (
            not is_int(self.pooler_output_size) or self.pooler_output_size <= 0
        ):
            raise ConfigError(
                "`pooler_output_size` must be None or a positive int. "
                f"Received: pooler_output_size={self.pooler_output_size!r}"
            )
        if self.problem_type is not None and self.problem_type not in PROBLEM_TYPES:
            raise ConfigError(
                f"`problem_type` must be None or one of {PROBLEM_TYPES}. "
                f"Received: problem_type={self.problem_type!r}"
            )
        if self.layer_scale_init_value is not None and not _is_number(self.layer_scale_init_value):
            raise ConfigError(
                "`layer_scale_init_value` must be None or a number. "
                f"Received: layer_scale_init_value={self.layer_scale_init_value!r}"
            )

    # ---- (de)serialization ----------------------------------------------------------------
    def to_dict(self):
        """A JSON-ready dict in the HF `config.json` layout (label keys as strings)."""
        out = dict(self.extra)
        out.update(
            model_type=self.model_type if self.use_distillation_token else "vit",
            hidden_size=self.hidden_size,
            num_hidden_layers=self.num_hidden_layers,
            num_attention_heads=self.num_attention_heads,
            intermediate_size=self.intermediate_size,
            hidden_act=self.hidden_act,
            hidden_dropout_prob=self.hidden_dropout_prob,
            attention_probs_dropout_prob=self.attention_probs_dropout_prob,
            initializer_range=self.initializer_range,
            layer_norm_eps=self.layer_norm_eps,
            image_size=list(self.image_size) if isinstance(self.image_size, tuple) else self.image_size,
            patch_size=list(self.patch_size) if isinstance(self.patch_size, tuple) else self.patch_size,
            num_channels=self.num_channels,
            qkv_bias=self.qkv_bias,
            encoder_stride=self.encoder_stride,
            pooler_output_size=self.pooler_output_size,
            pooler_act=self.pooler_act,
            id2label={str(k): v for k, v in self.id2label.items()},
            label2id=dict(self.label2id),
            problem_type=self.problem_type,
            use_distillation_token=self.use_distillation_token,
            class_token_position_embedding=self.class_token_position_embedding,
            layer_scale_init_value=self.layer_scale_init_value,
            drop_path_rate=self.drop_path_rate,
        )
        return out

    @classmethod
    def from_dict(cls, data):
        """Builds a config from an HF `config.json` dict (DeiT or ViT `model_type`)."""
        if not isinstance(data, dict):
            raise ConfigError(f"A config must be a JSON object (dict). Received: "
                              f"{type(data).__name__}")
        data = dict(data)
        model_type = data.get("model_type", "deit")
        if model_type not in ("deit", "vit"):
            raise ConfigError(
                f"This is a config for model_type={model_type!r}, not DeiT: load it with the "
                "library that provides that architecture, or pass a DeiT/ViT checkpoint."
            )
        data.setdefault("use_distillation_token", model_type == "deit")
        known = set(_init_args())
        kwargs = {k: data.pop(k) for k in list(data) if k in known}
        if isinstance(kwargs.get("image_size"), list):
            kwargs["image_size"] = tuple(kwargs["image_size"])
        if isinstance(kwargs.get("patch_size"), list):
            kwargs["patch_size"] = tuple(kwargs["patch_size"])
        # `model_type` follows `use_distillation_token` when written back; `architectures`
        # and other bookkeeping stay in `extra`.
        data.pop("model_type", None)
        return cls(**kwargs, extra=data)

    @classmethod
    def from_json(cls, path):
        """Reads an HF `config.json` file (or a folder holding one); a wrong field is a
        `ConfigError` naming the file and the field."""
        if os.path.isdir(path):
            path = os.path.join(path, "config.json")
        data = read_json_object(path, "config file")
        try:
            return cls.from_dict(data)
        except ConfigError as e:
            raise ConfigError(f"{path!r}: {e}") from None

    def to_json(self, path):
        """Writes the config as an HF `config.json` (to `path`, or into the folder `path`)."""
        if os.path.isdir(path):
            path = os.path.join(path, "config.json")
        with atomic.replacing(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
            json.dump(self.to_dict(), f, indent=2, sort_keys=True)
            f.write("\n")
        return path

    @classmethod
    def from_preset(cls, name, source="original"):
        """The config of a named official checkpoint (`keras_deit.presets.list_presets()`).

        `source`: "original" (the `.pth` releases and timm: layer-norm epsilon 1e-6) or "hub"
        (the `facebook/deit-*` transformers configs: 1e-12); see `presets.preset_arguments`.
        """
        return cls(**presets.preset_arguments(name, source=source))

    def replace(self, **changes):
        """A copy with some fields changed (and validated)."""
        data = self.to_dict()
        if "num_labels" in changes or "id2label" in changes:
            data.pop("id2label"), data.pop("label2id")
        data.update(changes)
        return type(self).from_dict(data)

    def copy(self):
        """A deep copy."""
        return copy.deepcopy(self)

    def __eq__(self, other):
        return isinstance(other, DeiTConfig) and self.to_dict() == other.to_dict()

    def __repr__(self):
        fields = ", ".join(f"{k}={v!r}" for k, v in self.to_dict().items()
                           if k not in ("id2label", "label2id") and k not in self.extra)
        return f"DeiTConfig({fields}, num_labels={self.num_labels})"


def _init_args():
    import inspect

    return [p for p in inspect.signature(DeiTConfig.__init__).parameters if p not in ("self", "extra")]


def _labels(num_labels, id2label, label2id):
    """Resolves the label maps as transformers does: id2label wins, else num_labels (default 2)."""
    if id2label is not None:
        id2label = _int_keyed(id2label, "id2label")
        if num_labels is not None and num_labels != len(id2label):
            raise ConfigError(
                f"`num_labels`={num_labels!r} disagrees with the {len(id2label)} entries of "
                "`id2label`: pass one of them."
            )
    else:
        if num_labels is None:
            num_labels = 2
        if not is_int(num_labels) or num_labels < 0:
            raise ConfigError(f"`num_labels` must be an int >= 0. Received: num_labels={num_labels!r}")
        id2label = {i: f"LABEL_{i}" for i in range(num_labels)}
    if label2id is not None and not isinstance(label2id, dict):
        raise ConfigError("`label2id` must be an object mapping label names to class ids. "
                          f"Received: label2id of type {type(label2id).__name__}")
    if label2id is None or len(label2id) != len(id2label):
        label2id = {v: k for k, v in id2label.items()}
    return id2label, {str(k): v for k, v in _int_valued(label2id).items()}


def _int_keyed(mapping, name):
    """`{int: str}` from `{"0": "cat", ...}`; a `ConfigError` naming the first bad entry."""
    if not isinstance(mapping, dict):
        raise ConfigError(f"`{name}` must be an object mapping class ids to names, like "
                          f'{{"0": "cat"}}. Received: {name} of type {type(mapping).__name__}')
    out = {}
    for key, value in mapping.items():
        try:
            index = int(key) if not isinstance(key, bool) else None
        except (TypeError, ValueError):
            index = None
        if index is None or index < 0 or str(index) != str(key).strip() or not isinstance(
                value, (str, int)) or isinstance(value, bool):
            raise ConfigError(f"`{name}` entries must map class ids (ints >= 0) to names. "
                              f"Received: {key!r}: {value!r}")
        out[index] = str(value)
    if sorted(out) != list(range(len(out))):
        raise ConfigError(f"`{name}` must number its classes 0..{len(out) - 1} without gaps. "
                          f"Received ids: {sorted(out)[:10]}")
    return out


def _int_valued(mapping):
    for key, value in mapping.items():
        if not is_int(value) or value < 0:
            raise ConfigError("`label2id` must map label names to class ids (ints >= 0). "
                              f"Received: {key!r}: {value!r}")
    return mapping
