"""Writing models back out (`save_pretrained`): transformers' folder layout and timm's `.pth`.

Each written file is checked three ways: against the fixture it was read from (same names,
shapes, dtypes and bytes), by the reference library reading it (transformers' own
`from_pretrained`, the `safetensors` reader), and by our loader reading it back exactly.
"""

import json
import os
import warnings

import keras
import numpy as np
import pytest

import keras_deit as kd
from keras_deit.conversion import timm, writers
from keras_deit.conversion.readers import CheckpointError

DATA = os.path.join(os.path.dirname(__file__), "data")
HF_FOLDERS = ("model", "classification", "with_teacher", "masked_image_modeling",
              "vit_classification")
TIMM_NAMES = ("deit_micro_patch16_64", "deit_micro_distilled_patch16_64",
              "deit3_micro_patch16_64")
# transformers runs in float32 with another summation order than each Keras backend.
TOLERANCE = 1e-5


def _numpy(outputs):
    return {k: np.asarray(keras.ops.convert_to_numpy(v)) for k, v in outputs.items()}


def _tiny(**changes):
    fields = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                  intermediate_size=64, image_size=32, patch_size=8, encoder_stride=8,
                  num_labels=3)
    fields.update(changes)
    return kd.DeiTConfig(**fields)


def _inputs(model, seed=0):
    rng = np.random.RandomState(seed)
    h, w = model.config.image_hw
    images = rng.standard_normal((2, h, w, 3)).astype("float32")
    if isinstance(model, kd.DeiTForMaskedImageModeling):
        mask = rng.rand(2, model.config.num_patches) < 0.5
        return {"pixel_values": images, "bool_masked_pos": mask}
    return images


def _transformers_outputs(folder, inputs):
    """transformers' class named in the folder's config.json, loaded by transformers."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    with open(os.path.join(folder, "config.json")) as f:
        architecture = json.load(f)["architectures"][0]
    transformers.utils.logging.set_verbosity_error()
    model = getattr(transformers, architecture).from_pretrained(folder).eval()
    images = inputs["pixel_values"] if isinstance(inputs, dict) else inputs
    kwargs = {}
    if isinstance(inputs, dict):
        kwargs["bool_masked_pos"] = torch.from_numpy(inputs["bool_masked_pos"])
    with torch.no_grad():
        out = model(torch.from_numpy(images.transpose(0, 3, 1, 2)), **kwargs)
    theirs = {k: getattr(out, k).numpy() for k in out.keys() if k != "loss"}
    if "reconstruction" in theirs:
        theirs["reconstruction"] = theirs["reconstruction"].transpose(0, 2, 3, 1)
    return theirs


def _check_round_trip(model, folder, reload_options=None, **save_options):
    """Saves `model` to `folder`; transformers' outputs match ours, ours read back exactly."""
    model.save_pretrained(folder, **save_options)
    inputs = _inputs(model)
    ours = _numpy(model(inputs))
    theirs = _transformers_outputs(folder, inputs)
    compared = [k for k in ours if k in theirs]
    assert compared == list(ours)
    for key in compared:
        np.testing.assert_allclose(ours[key], theirs[key], atol=TOLERANCE, rtol=0, err_msg=key)
    back = type(model).from_pretrained(folder, **(reload_options or {}))
    again = _numpy(back(inputs))
    assert {k: float(np.max(np.abs(again[k] - ours[k]))) for k in ours} == dict.fromkeys(ours, 0.0)
    return ours


@pytest.mark.parametrize("name", HF_FOLDERS)
def test_transformers_layout_inverts_loading(name, tmp_path):
    """Read a transformers fixture, write it: the same tensors byte for byte, the same
    architecture, and transformers gives our outputs."""
    safetensors_numpy = pytest.importorskip("safetensors.numpy")
    source = os.path.join(DATA, "hf", name)
    model = kd.DeiTPreTrainedModel.from_pretrained(source)
    folder = str(tmp_path / "out")
    _check_round_trip(model, folder)

    expected = safetensors_numpy.load_file(os.path.join(source, "model.safetensors"))
    written = safetensors_numpy.load_file(os.path.join(folder, "model.safetensors"))
    assert sorted(written) == sorted(expected)
    for key, value in expected.items():
        assert written[key].dtype == value.dtype and np.array_equal(written[key], value), key
    with open(os.path.join(source, "config.json")) as f:
        source_config = json.load(f)
    with open(os.path.join(folder, "config.json")) as f:
        config = json.load(f)
    assert config["architectures"] == source_config["architectures"]
    assert config["model_type"] == source_config["model_type"]
    assert os.path.isfile(os.path.join(folder, "preprocessor_config.json"))


@pytest.mark.parametrize("case", ["deit_no_pooler", "vit_model", "vit_mim", "deit_mim"])
def test_transformers_layout_heads_without_fixture(case, tmp_path):
    """The heads no fixture holds: bare models without pooler, ViT masked image modeling."""
    distilled = case.startswith("deit")
    config = _tiny(use_distillation_token=distilled)
    if case.endswith("mim"):
        model, reload = kd.DeiTForMaskedImageModeling(config), {}
    else:
        pooler = case == "vit_model"
        model, reload = (kd.DeiTModel(config, add_pooling_layer=pooler),
                         {"add_pooling_layer": pooler})
    ours = _check_round_trip(model, str(tmp_path / "out"), reload_options=reload)
    assert set(ours) >= ({"reconstruction"} if case.endswith("mim") else {"last_hidden_state"})
    with open(tmp_path / "out" / "config.json") as f:
        config = json.load(f)
    assert config["model_type"] == ("deit" if distilled else "vit")
    assert config["architectures"][0].startswith("DeiT" if distilled else "ViT")


def test_preprocessor_config_is_the_checkpoints_or_the_deit_recipe(tmp_path):
    """A model loaded from a folder writes that folder's processor; a new one the DeiT
    evaluation recipe at its resolution, which transformers reads."""
    transformers = pytest.importorskip("transformers")
    source = tmp_path / "source"
    model = kd.DeiTForImageClassification(_tiny())
    processor = kd.DeiTImageProcessor(size={"height": 40, "width": 40},
                                      crop_size={"height": 32, "width": 32})
    model.save_pretrained(str(source), image_processor=processor)
    loaded = kd.DeiTForImageClassification.from_pretrained(str(source))
    loaded.save_pretrained(str(tmp_path / "again"))
    with open(tmp_path / "again" / "preprocessor_config.json") as f:
        assert json.load(f) == processor.to_dict()

    kd.DeiTForImageClassification(_tiny()).save_pretrained(str(tmp_path / "fresh"))
    theirs = transformers.DeiTImageProcessor.from_pretrained(str(tmp_path / "fresh"))
    assert theirs.size == {"shortest_edge": 36} and theirs.crop_size == {"height": 32, "width": 32}
    assert list(theirs.image_mean) == list(kd.image_processing.IMAGENET_DEFAULT_MEAN)


def test_transformers_layout_refuses_what_it_cannot_hold(tmp_path):
    folder = tmp_path / "out"
    model = kd.DeiTForImageClassification(_tiny())
    model.save_pretrained(str(folder))
    before = os.path.getmtime(folder / "model.safetensors")
    with pytest.raises(FileExistsError, match="overwrite=True"):
        model.save_pretrained(str(folder))
    assert os.path.getmtime(folder / "model.safetensors") == before
    (folder / "README.md").write_text("kept")
    model.save_pretrained(str(folder), overwrite=True)
    assert (folder / "README.md").read_text() == "kept"

    deit3 = kd.DeiTForImageClassification(_tiny(layer_scale_init_value=1e-6,
                                                class_token_position_embedding=False))
    with pytest.raises(CheckpointError, match="layout='timm'"):
        deit3.save_pretrained(str(tmp_path / "deit3"))
    lora = kd.DeiTForImageClassification(_tiny())
    lora.enable_lora(2)
    with pytest.raises(CheckpointError, match="merge_lora"):
        lora.save_pretrained(str(tmp_path / "lora"))
    # Nothing half-written is left behind, not even the staging folder.
    assert sorted(os.listdir(tmp_path)) == ["out"]


def test_safetensors_writer_matches_the_reference_reader(tmp_path):
    """Our writer, read by the `safetensors` library: every float dtype, bfloat16 included."""
    torch = pytest.importorskip("torch")
    safetensors_torch = pytest.importorskip("safetensors.torch")
    import ml_dtypes

    rng = np.random.RandomState(0)
    tensors = {
        "a": rng.standard_normal((3, 5)).astype("float32"),
        "b": rng.standard_normal((7,)).astype("float16"),
        "c": rng.standard_normal((2, 3)).astype(ml_dtypes.bfloat16),
        "scalar": np.asarray(1.5, "float64"),
        "empty": np.zeros((0, 4), "float32"),
    }
    path = str(tmp_path / "t.safetensors")
    writers.write_safetensors(path, tensors, metadata={"format": "pt"})
    read = safetensors_torch.load_file(path)
    assert sorted(read) == sorted(tensors)
    assert read["c"].dtype == torch.bfloat16
    for name, value in tensors.items():
        expected = torch.from_numpy(np.asarray(value, "float64"))
        assert tuple(read[name].shape) == value.shape
        assert torch.equal(read[name].double(), expected), name


@pytest.mark.parametrize("name", TIMM_NAMES)
def test_timm_layout_inverts_loading(name, tmp_path):
    """Read an original-layout fixture, write it: the release's names (DeiT III LayerScale as
    `gamma_1`), shapes, dtypes and bytes, and our loader reads it back exactly."""
    torch = pytest.importorskip("torch")
    source = os.path.join(DATA, "timm", name + ".pth")
    expected = torch.load(source, weights_only=True)["model"]
    # A state dict does not give the head count; the fixtures' is 3 (manifest.json).
    model = kd.DeiTPreTrainedModel.from_pretrained(source, num_attention_heads=3)
    path = str(tmp_path / "out.pth")
    model.save_pretrained(path, layout="timm")

    saved = torch.load(path, weights_only=True)
    assert list(saved) == ["model"]
    written = saved["model"]
    if name.startswith("deit3"):
        assert "blocks.0.gamma_1" in written and "blocks.1.gamma_2" in written
    assert sorted(timm.canonicalize(written)) == sorted(expected)
    for key, value in timm.canonicalize(written).items():
        assert value.dtype == expected[key].dtype and torch.equal(value, expected[key]), key

    back = type(model).from_pretrained(path, num_attention_heads=3)
    inputs = _inputs(model)
    ours, again = _numpy(model(inputs)), _numpy(back(inputs))
    assert {k: float(np.max(np.abs(again[k] - ours[k]))) for k in ours} == dict.fromkeys(ours, 0.0)


def test_timm_layout_refuses_what_it_cannot_hold(tmp_path):
    pytest.importorskip("torch")
    path = tmp_path / "out.pth"
    for model, fix in [
        (kd.DeiTForMaskedImageModeling(_tiny()), "SimMIM decoder"),
        (kd.DeiTModel(_tiny()), "add_pooling_layer=False"),
    ]:
        with pytest.raises(CheckpointError, match=fix):
            model.save_pretrained(str(path), layout="timm")
    bare = kd.DeiTModel(_tiny(num_labels=0), add_pooling_layer=False)
    bare.save_pretrained(str(path), layout="timm")
    with pytest.raises(FileExistsError, match="overwrite=True"):
        bare.save_pretrained(str(path), layout="timm")
    with pytest.raises(ValueError, match="layout"):
        bare.save_pretrained(str(path), layout="onnx")
    quantized = kd.DeiTForImageClassification(_tiny())
    quantized.quantize("int8")
    with pytest.raises(CheckpointError, match="quantize"):
        quantized.save_pretrained(str(tmp_path / "q.pth"), layout="timm")
    assert sorted(os.listdir(tmp_path)) == ["out.pth"]


def test_bfloat16_model_round_trip(tmp_path):
    """A bfloat16 model is written as BF16 (half the bytes) and read back exactly."""
    from keras_deit.conversion.readers import read_safetensors_header

    model = kd.DeiTForImageClassification(_tiny(), dtype="bfloat16")
    folder = str(tmp_path / "out")
    model.save_pretrained(folder)
    header, _ = read_safetensors_header(os.path.join(folder, "model.safetensors"))
    assert {spec.dtype for spec in header.values()} == {"BF16"}
    back = kd.DeiTForImageClassification.from_pretrained(folder, dtype="bfloat16")
    for ours, theirs in zip(model.weights, back.weights):
        assert ours.path == theirs.path
        np.testing.assert_array_equal(
            np.asarray(keras.ops.convert_to_numpy(ours.value), "float32"),
            np.asarray(keras.ops.convert_to_numpy(theirs.value), "float32"), err_msg=ours.path)


def test_timm_layout_warns_about_another_layer_norm_epsilon(tmp_path):
    """A .pth holds no config and timm builds LayerNorm(eps=1e-6): a model normalized with
    another epsilon (every transformers DeiT config: 1e-12) is written with one clear line."""
    pytest.importorskip("torch")
    hub = kd.DeiTModel(_tiny(num_labels=0, layer_norm_eps=1e-12), add_pooling_layer=False)
    with pytest.warns(UserWarning, match=r"layer_norm_eps is 1e-12.*LayerNorm\(eps=1e-06\)") as info:
        hub.save_pretrained(str(tmp_path / "hub.pth"), layout="timm")
    (ours,) = [w for w in info if "layer_norm_eps" in str(w.message)]  # torch adds its own
    assert "\n" not in str(ours.message)
    timm_eps = kd.DeiTModel(_tiny(num_labels=0, layer_norm_eps=1e-6), add_pooling_layer=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        timm_eps.save_pretrained(str(tmp_path / "timm.pth"), layout="timm")
    assert [w for w in caught if "layer_norm_eps" in str(w.message)] == []
    assert sorted(os.listdir(tmp_path)) == ["hub.pth", "timm.pth"]
