"""The official DeiT and DeiT III checkpoints, as one table of data.

Each entry of `PRESETS` describes one released checkpoint: its architecture, where its weights
live (the original `.pth` under dl.fbaipublicfiles.com, the transformers repository, the timm
hub repository), the accuracy its authors report, and the preprocessing it was evaluated with.
Nothing here downloads anything; `from_pretrained(name)` does (see `keras_deit.conversion.sources`).

Sources of the numbers:
- DeiT (v1): architectures, file names and top-1 from facebookresearch/deit `README_deit.md`
  and timm `deit.py`; parameter counts as reported for the transformers ports.
- DeiT III: architectures from facebookresearch/deit `models_v2.py` (`deit_*_patch*_LS`) and
  timm `deit.py` (`deit3_*`); file names, parameters and ImageNet-1k top-1 from
  facebookresearch/deit `README_revenge.md` (ImageNet-1k pre-training table).

Layer-norm epsilon depends on where the weights come from: the original `.pth` files (and timm)
were trained with 1e-6, while the `facebook/deit-*` transformers configs say 1e-12 (the
transformers default). `DeiTConfig.from_preset(name)` gives the original value; pass `source="hub"` for
the one the transformers repository's `config.json` carries.
"""

import difflib

from keras_deit.preprocessing_spec import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

ORIGINAL_BASE_URL = "https://dl.fbaipublicfiles.com/deit/"


# Original DeiT evaluation (facebookresearch/deit `datasets.py`, `--eval-crop-ratio` default):
# shorter side to int(224 / 0.875) = 256, center crop 224. The 384 models are evaluated uncropped.
_DEIT_224 = dict(image_size=224, resize=256, crop_pct=0.875, interpolation="bicubic",
                 mean=IMAGENET_DEFAULT_MEAN, std=IMAGENET_DEFAULT_STD,
                 source="facebookresearch/deit datasets.py (eval_crop_ratio 0.875); timm uses 0.9")
_DEIT_384 = dict(_DEIT_224, image_size=384, resize=384, crop_pct=1.0,
                 source="facebookresearch/deit README_deit.md and timm deit.py (crop_pct 1.0)")
# DeiT III was trained and evaluated with `--eval-crop-ratio 1.0` (README_revenge.md training
# command). timm's `deit3_*.fb_in1k` configs at 224 keep timm's default crop_pct of 0.9 instead.
_DEIT3_224 = dict(_DEIT_224, crop_pct=1.0, resize=224,
                  source="facebookresearch/deit README_revenge.md (--eval-crop-ratio 1.0); "
                         "timm deit3_*_224.fb_in1k uses 0.9")
_DEIT3_384 = dict(_DEIT3_224, image_size=384, resize=384)

# Sizes (width / depth / heads). Every DeiT uses an MLP ratio of 4.
_TINY = dict(hidden_size=192, num_hidden_layers=12, num_attention_heads=3)
_SMALL = dict(hidden_size=384, num_hidden_layers=12, num_attention_heads=6)
_MEDIUM = dict(hidden_size=512, num_hidden_layers=12, num_attention_heads=8)
_BASE = dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12)
_LARGE = dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16)
_HUGE = dict(hidden_size=1280, num_hidden_layers=32, num_attention_heads=16)  # head width 80

_DEIT = dict(family="deit", num_labels=1000, layer_scale=False, top1_source="README_deit.md")
_DEIT3 = dict(
    family="deit3", num_labels=1000, distilled=False, layer_scale=True, hf_repo=None,
    hf_layout=None, sha256_prefix=None, top1_source="README_revenge.md (ImageNet-1k pre-training)",
    hf_note="no transformers repository exists for DeiT III; the timm hub repository holds the "
            "same weights in timm's layout",
)

# One row per released checkpoint. `sha256_prefix` is the hex suffix of the original file name:
# facebookresearch publishes it as the start of the file's sha256 (what torch.hub checks).
PRESETS = {
    "deit_tiny_patch16_224": dict(
        _DEIT, **_TINY, patch_size=16, image_size=224, distilled=False,
        hf_repo="facebook/deit-tiny-patch16-224", hf_layout="vit",
        url=ORIGINAL_BASE_URL + "deit_tiny_patch16_224-a1311bcf.pth", sha256_prefix="a1311bcf",
        timm_hub_id="timm/deit_tiny_patch16_224.fb_in1k",
        params_millions=5.7, top1=72.2, preprocessing=_DEIT_224,
    ),
    "deit_small_patch16_224": dict(
        _DEIT, **_SMALL, patch_size=16, image_size=224, distilled=False,
        hf_repo="facebook/deit-small-patch16-224", hf_layout="vit",
        url=ORIGINAL_BASE_URL + "deit_small_patch16_224-cd65a155.pth", sha256_prefix="cd65a155",
        timm_hub_id="timm/deit_small_patch16_224.fb_in1k",
        params_millions=22.1, top1=79.9, preprocessing=_DEIT_224,
    ),
    "deit_base_patch16_224": dict(
        _DEIT, **_BASE, patch_size=16, image_size=224, distilled=False,
        hf_repo="facebook/deit-base-patch16-224", hf_layout="vit",
        url=ORIGINAL_BASE_URL + "deit_base_patch16_224-b5f2ef4d.pth", sha256_prefix="b5f2ef4d",
        timm_hub_id="timm/deit_base_patch16_224.fb_in1k",
        params_millions=86.6, top1=81.8, preprocessing=_DEIT_224,
    ),
    "deit_base_patch16_384": dict(
        _DEIT, **_BASE, patch_size=16, image_size=384, distilled=False,
        hf_repo="facebook/deit-base-patch16-384", hf_layout="vit",
        url=ORIGINAL_BASE_URL + "deit_base_patch16_384-8de9b5d1.pth", sha256_prefix="8de9b5d1",
        timm_hub_id="timm/deit_base_patch16_384.fb_in1k",
        params_millions=86.9, top1=82.9, preprocessing=_DEIT_384,
    ),
    "deit_tiny_distilled_patch16_224": dict(
        _DEIT, **_TINY, patch_size=16, image_size=224, distilled=True,
        hf_repo="facebook/deit-tiny-distilled-patch16-224", hf_layout="deit",
        url=ORIGINAL_BASE_URL + "deit_tiny_distilled_patch16_224-b40b3cf7.pth",
        sha256_prefix="b40b3cf7", timm_hub_id="timm/deit_tiny_distilled_patch16_224.fb_in1k",
        params_millions=5.9, top1=74.5, preprocessing=_DEIT_224,
    ),
    "deit_small_distilled_patch16_224": dict(
        _DEIT, **_SMALL, patch_size=16, image_size=224, distilled=True,
        hf_repo="facebook/deit-small-distilled-patch16-224", hf_layout="deit",
        url=ORIGINAL_BASE_URL + "deit_small_distilled_patch16_224-649709d9.pth",
        sha256_prefix="649709d9", timm_hub_id="timm/deit_small_distilled_patch16_224.fb_in1k",
        params_millions=22.4, top1=81.2, preprocessing=_DEIT_224,
    ),
    "deit_base_distilled_patch16_224": dict(
        _DEIT, **_BASE, patch_size=16, image_size=224, distilled=True,
        hf_repo="facebook/deit-base-distilled-patch16-224", hf_layout="deit",
        url=ORIGINAL_BASE_URL + "deit_base_distilled_patch16_224-df68dfff.pth",
        sha256_prefix="df68dfff", timm_hub_id="timm/deit_base_distilled_patch16_224.fb_in1k",
        params_millions=87.3, top1=83.4, preprocessing=_DEIT_224,
    ),
    "deit_base_distilled_patch16_384": dict(
        _DEIT, **_BASE, patch_size=16, image_size=384, distilled=True,
        hf_repo="facebook/deit-base-distilled-patch16-384", hf_layout="deit",
        url=ORIGINAL_BASE_URL + "deit_base_distilled_patch16_384-d0272ac0.pth",
        sha256_prefix="d0272ac0", timm_hub_id="timm/deit_base_distilled_patch16_384.fb_in1k",
        params_millions=87.6, top1=85.2, preprocessing=_DEIT_384,
    ),
    "deit3_small_patch16_224": dict(
        _DEIT3, **_SMALL, patch_size=16, image_size=224,
        url=ORIGINAL_BASE_URL + "deit_3_small_224_1k.pth",
        timm_hub_id="timm/deit3_small_patch16_224.fb_in1k",
        params_millions=22.0, top1=81.4, preprocessing=_DEIT3_224,
    ),
    "deit3_small_patch16_384": dict(
        _DEIT3, **_SMALL, patch_size=16, image_size=384,
        url=ORIGINAL_BASE_URL + "deit_3_small_384_1k.pth",
        timm_hub_id="timm/deit3_small_patch16_384.fb_in1k",
        # README_revenge.md repeats the 224 count (22.0); the 384 position table adds 0.15M.
        params_millions=22.2, top1=83.4, preprocessing=_DEIT3_384,
    ),
    "deit3_medium_patch16_224": dict(
        _DEIT3, **_MEDIUM, patch_size=16, image_size=224,
        url=ORIGINAL_BASE_URL + "deit_3_medium_224_1k.pth",
        timm_hub_id="timm/deit3_medium_patch16_224.fb_in1k",
        params_millions=38.8, top1=83.0, preprocessing=_DEIT3_224,
    ),
    "deit3_base_patch16_224": dict(
        _DEIT3, **_BASE, patch_size=16, image_size=224,
        url=ORIGINAL_BASE_URL + "deit_3_base_224_1k.pth",
        timm_hub_id="timm/deit3_base_patch16_224.fb_in1k",
        params_millions=86.6, top1=83.8, preprocessing=_DEIT3_224,
    ),
    "deit3_base_patch16_384": dict(
        _DEIT3, **_BASE, patch_size=16, image_size=384,
        url=ORIGINAL_BASE_URL + "deit_3_base_384_1k.pth",
        timm_hub_id="timm/deit3_base_patch16_384.fb_in1k",
        params_millions=86.9, top1=85.0, preprocessing=_DEIT3_384,
    ),
    "deit3_large_patch16_224": dict(
        _DEIT3, **_LARGE, patch_size=16, image_size=224,
        url=ORIGINAL_BASE_URL + "deit_3_large_224_1k.pth",
        timm_hub_id="timm/deit3_large_patch16_224.fb_in1k",
        params_millions=304.4, top1=84.9, preprocessing=_DEIT3_224,
    ),
    "deit3_large_patch16_384": dict(
        _DEIT3, **_LARGE, patch_size=16, image_size=384,
        url=ORIGINAL_BASE_URL + "deit_3_large_384_1k.pth",
        timm_hub_id="timm/deit3_large_patch16_384.fb_in1k",
        params_millions=304.8, top1=85.8, preprocessing=_DEIT3_384,
    ),
    "deit3_huge_patch14_224": dict(
        _DEIT3, **_HUGE, patch_size=14, image_size=224,
        url=ORIGINAL_BASE_URL + "deit_3_huge_224_1k.pth",
        timm_hub_id="timm/deit3_huge_patch14_224.fb_in1k",
        params_millions=632.1, top1=85.2, preprocessing=_DEIT3_224,
    ),
}

# Epsilon per weight source: see the module docstring.
LAYER_NORM_EPS = {"original": 1e-6, "hub": 1e-12}

# DeiT III's LayerScale vectors start at timm's `init_values`; its position embeddings cover
# the patches only (no class-token entry).
DEIT3_LAYER_SCALE_INIT = 1e-6

SOURCES = ("original", "hub")


def list_presets(family=None):
    """The preset names, in table order; `family` ("deit" or "deit3") keeps one family."""
    if family not in (None, "deit", "deit3"):
        raise ValueError(f"`family` must be None, 'deit' or 'deit3'. Received: family={family!r}")
    return [name for name, p in PRESETS.items() if family is None or p["family"] == family]


def get_preset(name):
    """A copy of the table entry of preset `name` (ValueError naming close matches if unknown)."""
    if name not in PRESETS:
        close = difflib.get_close_matches(str(name), PRESETS, n=3, cutoff=0.6)
        hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        raise ValueError(
            f"Unknown preset {name!r}.{hint} Known presets: {', '.join(PRESETS)} "
            "(see keras_deit.presets.list_presets())."
        )
    entry = dict(PRESETS[name])
    entry["preprocessing"] = dict(entry["preprocessing"])
    return entry


def is_preset(name):
    """Whether `name` is a preset name."""
    return isinstance(name, str) and name in PRESETS


def preset_arguments(name, source="original"):
    """The `DeiTConfig` arguments of preset `name` (a dict); `DeiTConfig.from_preset` builds
    the config from them (config.py imports this table, never the reverse).

    Args:
        name: a preset name (`list_presets()`).
        source: "original" (the `.pth` releases and timm: layer-norm epsilon 1e-6) or "hub"
            (the `facebook/deit-*` transformers configs: 1e-12). DeiT III has no transformers
            repository; its hub weights (timm) use 1e-6 either way.
    """
    if source not in SOURCES:
        raise ValueError(f"`source` must be one of {SOURCES}. Received: source={source!r}")
    p = get_preset(name)
    eps = LAYER_NORM_EPS["original"] if p["family"] == "deit3" else LAYER_NORM_EPS[source]
    return dict(
        hidden_size=p["hidden_size"],
        num_hidden_layers=p["num_hidden_layers"],
        num_attention_heads=p["num_attention_heads"],
        intermediate_size=4 * p["hidden_size"],
        hidden_act="gelu",  # exact (erf) GELU in every release
        layer_norm_eps=eps,
        image_size=p["image_size"],
        patch_size=p["patch_size"],
        encoder_stride=p["patch_size"],
        num_labels=p["num_labels"],
        use_distillation_token=p["distilled"],
        class_token_position_embedding=not p["layer_scale"],  # DeiT III: patches only
        layer_scale_init_value=DEIT3_LAYER_SCALE_INIT if p["layer_scale"] else None,
    )


def presets_matching(config):
    """Names of the presets whose architecture is exactly that of `config`."""
    found = []
    for name, p in PRESETS.items():
        if (
            config.hidden_size == p["hidden_size"]
            and config.num_hidden_layers == p["num_hidden_layers"]
            and config.num_attention_heads == p["num_attention_heads"]
            and config.patch_hw == (p["patch_size"],) * 2
            and config.image_hw == (p["image_size"],) * 2
            and config.use_distillation_token == p["distilled"]
            and (config.layer_scale_init_value is not None) == p["layer_scale"]
        ):
            found.append(name)
    return found


def heads_for(hidden_size, num_hidden_layers):
    """The head count of the presets of this width and depth, or None if there are none (or
    they disagree). A checkpoint's shapes cannot tell the head count; the presets can."""
    heads = {
        p["num_attention_heads"]
        for p in PRESETS.values()
        if p["hidden_size"] == hidden_size and p["num_hidden_layers"] == num_hidden_layers
    }
    return heads.pop() if len(heads) == 1 else None
