"""Checking a converted model against a reference implementation, on the same random input.

The reference depends on where the weights came from:

- transformers checkpoints: transformers' own DeiT / ViT class, loaded by transformers from
  the checkpoint folder (safetensors or .bin), so its key handling is independent of ours.
  A `tf_model.h5` (which transformers v5 no longer reads) goes through our reader first.
- timm / original DeiT weights: no timm here, so the state dict is renamed to transformers'
  names (`keras_deit.conversion.timm.to_transformers`, the fused qkv split in three) and loaded into
  transformers' DeiT (distilled) or ViT (non-distilled) class, built with timm's epsilon.
- DeiT III (LayerScale, position embeddings on the patches only) has no transformers class:
  `timm_reference` computes timm's forward pass with torch functional ops, straight from the
  state dict. The tests anchor it to outputs that timm itself produced.

All of it needs torch (and transformers, except for DeiT III); none of it is imported until
`verify` runs.
"""

import contextlib
import dataclasses
import json
import os
import tempfile

import numpy as np

from keras_deit.conversion import timm
from keras_deit.conversion.readers import CheckpointError
from keras_deit.conversion.writers import write_safetensors

# Outputs compared; `pooler_output` is left out: the pooler has no pretrained weights.
COMPARED = ("last_hidden_state", "logits", "cls_logits", "distillation_logits", "reconstruction")


@dataclasses.dataclass
class VerifyResult:
    """The outcome of `verify`.

    Attributes:
        differences: `{output name: max-abs difference}`.
        tolerance: the bound each difference was held to.
        reference: which reference implementation ran.
    """

    differences: dict
    tolerance: float
    reference: str

    @property
    def max_difference(self):
        """The largest of the differences."""
        return max(self.differences.values())

    @property
    def passed(self):
        """Whether every difference is within the tolerance."""
        return self.max_difference <= self.tolerance


def _require_torch(what):
    try:
        import torch
    except ImportError:
        raise CheckpointError(
            f"Verifying {what} needs PyTorch: `pip install torch` (CPU build), or leave out "
            "--verify."
        ) from None
    return torch


def _require_transformers():
    try:
        import transformers
    except ImportError:
        raise CheckpointError(
            "Verifying against the reference needs transformers: `pip install transformers`, "
            "or leave out --verify."
        ) from None
    return transformers


def random_inputs(model, seed=0, batch=1):
    """NCHW float32 pixel values (and a random patch mask for masked image modeling)."""
    config = model.config
    rng = np.random.RandomState(seed)
    h, w = config.image_hw
    pixel_values = rng.standard_normal((batch, config.num_channels, h, w)).astype("float32")
    mask = None
    if type(model).__name__ == "DeiTForMaskedImageModeling":
        mask = rng.rand(batch, config.num_patches) < 0.5
    return pixel_values, mask


def _ours(model, pixel_values, mask):
    """Our outputs as numpy, in NCHW for images whatever the model's data format."""
    import keras

    channels_last = model.data_format == "channels_last"
    images = np.transpose(pixel_values, (0, 2, 3, 1)) if channels_last else pixel_values
    inputs = images if mask is None else {"pixel_values": images, "bool_masked_pos": mask}
    outputs = {k: np.asarray(keras.ops.convert_to_numpy(v)) for k, v in model(inputs).items()
               if k in COMPARED}
    if "reconstruction" in outputs and channels_last:
        outputs["reconstruction"] = np.transpose(outputs["reconstruction"], (0, 3, 1, 2))
    return outputs


def verify(model, checkpoint, tolerance=1e-4, seed=0):
    """Runs `model` and the reference for `checkpoint` (a `keras_deit.conversion.loading.Checkpoint`) on
    the same random input and returns a `VerifyResult`."""
    pixel_values, mask = random_inputs(model, seed)
    ours = _ours(model, pixel_values, mask)
    if checkpoint.format == "timm" and checkpoint.config.layer_scale_init_value is not None:
        torch = _require_torch("a DeiT III checkpoint")
        with torch.no_grad():
            theirs = timm_reference(checkpoint.tensors, checkpoint.config, pixel_values)
        reference = "timm forward pass in torch functional ops (DeiT III)"
    else:
        theirs, reference = _transformers_outputs(model, checkpoint, pixel_values, mask)
    differences = {
        key: float(np.max(np.abs(ours[key].astype("float64") - theirs[key].astype("float64"))))
        for key in ours
        if key in theirs
    }
    if not differences:
        raise CheckpointError(f"The reference ({reference}) shares no output with the model.")
    return VerifyResult(differences=differences, tolerance=tolerance, reference=reference)


def _transformers_class(model):
    """The transformers class of the same name, ViT* for checkpoints without distillation token."""
    name = type(model).__name__
    if not model.config.use_distillation_token:
        name = name.replace("DeiT", "ViT", 1)
    return name


def _transformers_outputs(model, checkpoint, pixel_values, mask):
    torch = _require_torch("against transformers")
    transformers = _require_transformers()
    name = _transformers_class(model)
    cls = getattr(transformers, name, None)
    if cls is None:
        raise CheckpointError(f"transformers has no class {name}: nothing to verify against.")
    with contextlib.ExitStack() as stack:
        folder = checkpoint.folder
        reads_itself = (
            checkpoint.format == "hf"
            and folder is not None
            and checkpoint.path.endswith((".safetensors", ".bin"))
        )
        if reads_itself:
            reference = f"transformers {name} loaded from {folder}"
        else:
            folder = stack.enter_context(tempfile.TemporaryDirectory())
            _write_transformers_folder(folder, model, checkpoint)
            reference = f"transformers {name} built from the renamed state dict"
        logging = transformers.utils.logging
        previous, bars = logging.get_verbosity(), logging.is_progress_bar_enabled()
        logging.set_verbosity_error()  # unused heads are expected, not news
        logging.disable_progress_bar()
        try:
            reference_model = cls.from_pretrained(folder).eval()
        finally:
            logging.set_verbosity(previous)
            if bars:
                logging.enable_progress_bar()
        kwargs = {}
        if mask is not None:
            kwargs["bool_masked_pos"] = torch.from_numpy(mask)
        with torch.no_grad():
            out = reference_model(torch.from_numpy(pixel_values), **kwargs)
    theirs = {k: getattr(out, k).numpy() for k in COMPARED if getattr(out, k, None) is not None}
    return theirs, reference


def _write_transformers_folder(folder, model, checkpoint):
    """config.json + model.safetensors in transformers' names, for `from_pretrained`."""
    if checkpoint.format == "timm":
        tensors = timm.to_transformers(checkpoint.tensors)
        if type(model).__name__ == "DeiTForImageClassification":
            # transformers' distilled classifier has one head on the class token: `classifier`.
            tensors = {k.replace("cls_classifier.", "classifier.", 1): v
                       for k, v in tensors.items()}
    else:
        tensors = checkpoint.tensors
    config = model.config.to_dict()
    config["architectures"] = [_transformers_class(model)]
    with open(os.path.join(folder, "config.json"), "w", encoding="utf-8") as f:
        json.dump(config, f)
    write_safetensors(os.path.join(folder, "model.safetensors"),
                      {k: np.asarray(v, dtype=np.float32) for k, v in tensors.items()})


def timm_reference(state, config, pixel_values):
    """timm's VisionTransformer(Distilled) forward pass, in torch functional ops.

    Covers DeiT, distilled DeiT and DeiT III (LayerScale; position embeddings added to the
    patches before the prefix tokens are prepended). Returns numpy `last_hidden_state` and,
    with a head, `logits` (the mean of both heads when distilled) and the two heads.
    """
    import torch
    import torch.nn.functional as F

    t = {k: torch.as_tensor(np.asarray(v, dtype=np.float32))
         for k, v in timm.canonicalize(state).items()}
    eps, d, heads = config.layer_norm_eps, config.hidden_size, config.num_attention_heads
    x = F.conv2d(torch.from_numpy(pixel_values), t["patch_embed.proj.weight"],
                 t["patch_embed.proj.bias"], stride=config.patch_hw)
    x = x.flatten(2).transpose(1, 2)  # (batch, patches, hidden), row-major grid
    batch = x.shape[0]
    prefix = [t["cls_token"].expand(batch, -1, -1)]
    if "dist_token" in t:
        prefix.append(t["dist_token"].expand(batch, -1, -1))
    if config.class_token_position_embedding:
        x = torch.cat(prefix + [x], dim=1) + t["pos_embed"]
    else:
        x = torch.cat(prefix + [x + t["pos_embed"]], dim=1)
    for i in range(config.num_hidden_layers):
        p = f"blocks.{i}."
        h = F.layer_norm(x, (d,), t[p + "norm1.weight"], t[p + "norm1.bias"], eps)
        qkv = F.linear(h, t[p + "attn.qkv.weight"], t.get(p + "attn.qkv.bias"))
        q, k, v = qkv.reshape(batch, -1, 3, heads, d // heads).permute(2, 0, 3, 1, 4)
        probs = torch.softmax(q @ k.transpose(-2, -1) * (d // heads) ** -0.5, dim=-1)
        h = (probs @ v).transpose(1, 2).reshape(batch, -1, d)
        h = F.linear(h, t[p + "attn.proj.weight"], t[p + "attn.proj.bias"])
        x = x + (h * t[p + "ls1.gamma"] if p + "ls1.gamma" in t else h)
        h = F.layer_norm(x, (d,), t[p + "norm2.weight"], t[p + "norm2.bias"], eps)
        h = F.gelu(F.linear(h, t[p + "mlp.fc1.weight"], t[p + "mlp.fc1.bias"]))  # exact (erf)
        h = F.linear(h, t[p + "mlp.fc2.weight"], t[p + "mlp.fc2.bias"])
        x = x + (h * t[p + "ls2.gamma"] if p + "ls2.gamma" in t else h)
    x = F.layer_norm(x, (d,), t["norm.weight"], t["norm.bias"], eps)
    out = {"last_hidden_state": x.numpy()}
    if "head.weight" in t:
        cls_logits = F.linear(x[:, 0], t["head.weight"], t["head.bias"])
        if "head_dist.weight" in t:
            dist_logits = F.linear(x[:, 1], t["head_dist.weight"], t["head_dist.bias"])
            out["cls_logits"] = cls_logits.numpy()
            out["distillation_logits"] = dist_logits.numpy()
            out["logits"] = ((cls_logits + dist_logits) / 2).numpy()
        else:
            out["logits"] = cls_logits.numpy()
    return out
