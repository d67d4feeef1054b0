"""Checkpoints and configs from strangers: every lie is refused with its own one-line error.

Each case is made in the test from the small fixtures in tests/data (a truncation, a header
edit, a dtype or shape lie, a config lie) and asserts the error class and what the message
names. Nothing here needs the network.
"""

import json
import os
import random
import shutil
import struct

import numpy as np
import pytest

import keras_deit as kd
from helpers import HF, TIMM
from keras_deit.conversion.readers import (
    CheckpointError, CorruptCheckpointError, read_checkpoint, read_safetensors,
    read_safetensors_header,
)

WITH_TEACHER = os.path.join(HF, "with_teacher")
SAFETENSORS = os.path.join(WITH_TEACHER, "model.safetensors")


# ---- helpers ------------------------------------------------------------------------------
def _split(path=SAFETENSORS):
    """(header dict, data bytes) of a safetensors file."""
    raw = open(path, "rb").read()
    (length,) = struct.unpack("<Q", raw[:8])
    return json.loads(raw[8:8 + length]), raw[8 + length:]


def _join(header, data, header_bytes=None):
    """A safetensors file's bytes from a header (dict, or raw bytes) and its data."""
    if header_bytes is None:
        header_bytes = json.dumps(header).encode()
    return struct.pack("<Q", len(header_bytes)) + header_bytes + data


def _write(tmp_path, content, name="model.safetensors"):
    path = tmp_path / name
    path.write_bytes(content)
    return str(path)


def _first_two(header):
    """The names of the first two tensors in data order."""
    names = sorted((n for n in header if n != "__metadata__"),
                   key=lambda n: header[n]["data_offsets"][0])
    return names[0], names[1]


def _one_line(error):
    message = str(error)
    assert "\n" not in message, message
    return message


# ---- safetensors: header structure ----------------------------------------------------------
def _edited(edit):
    header, data = _split()
    result = edit(header, data)
    return result if isinstance(result, bytes) else _join(header, data)


def _set(name_index, field, value):
    def edit(header, data):
        name = _first_two(header)[name_index]
        header[name][field] = value
    return edit


def _drop(field):
    def edit(header, data):
        del header[_first_two(header)[0]][field]
    return edit


def _overlap(header, data):
    first, second = _first_two(header)
    header[second]["data_offsets"] = list(header[first]["data_offsets"])
    header[second]["shape"] = header[first]["shape"]
    header[second]["dtype"] = header[first]["dtype"]


def _swap_offsets(header, data):
    """Offsets out of order and overlapping by one element: each range shifted by 4 bytes."""
    first, _ = _first_two(header)
    begin, end = header[first]["data_offsets"]
    header[first]["data_offsets"] = [begin + 4, end + 4]


def _gap(header, data):
    for spec in header.values():
        if isinstance(spec, dict) and "data_offsets" in spec:
            spec["data_offsets"] = [o + 4 for o in spec["data_offsets"]]
    return _join(header, b"\0" * 4 + data)


def _duplicate_key(header, data):
    first, _ = _first_two(header)
    text = json.dumps(header)
    entry = json.dumps({first: header[first]})[1:-1]
    return _join(None, data, (text[:-1] + ", " + entry + "}").encode())


def _utf16(header, data):
    return _join(None, data, json.dumps(header).encode("utf-16"))


def _dtype_lie(dtype):
    def edit(header, data):
        header[_first_two(header)[0]]["dtype"] = dtype
    return edit


HEADER_CASES = {
    # name: (edit, words the message must contain)
    "not an object (list)": (lambda h, d: _join(None, d, b"[]"), "a JSON list, not an object"),
    "not an object (string)": (lambda h, d: _join(None, d, b'"hello"'), "a JSON str"),
    "spec is a number": (lambda h, d: h.__setitem__(_first_two(h)[0], 7), "a JSON int"),
    "no data_offsets": (_drop("data_offsets"), "has no data_offsets"),
    "no dtype": (_drop("dtype"), "has no dtype"),
    "string offsets": (_set(0, "data_offsets", ["0", "4"]), "data_offsets ['0', '4']"),
    "one offset": (_set(0, "data_offsets", [0]), "are not two ints"),
    "reversed offsets": (_set(0, "data_offsets", [8, 0]), "are not two ints"),
    "float shape": (_set(0, "shape", [1.0, 48.0]), "shape [1.0, 48.0] is not a list"),
    "negative shape": (_set(0, "shape", [-1]), "shape [-1]"),
    "bool shape": (_set(0, "shape", [True]), "shape [True]"),
    "unknown dtype": (_dtype_lie("F8"), "unsupported dtype 'F8'"),
    "F16 on F32 bytes": (_dtype_lie("F16"), "F16 of shape"),
    "I64 on F32 bytes": (_dtype_lie("I64"), "I64 of shape"),
    "overlapping tensors": (_overlap, "overlaps the tensor before it"),
    "shifted offsets": (_swap_offsets, "tensor"),
    "gap between tensors": (_gap, "leaves a gap of 4 bytes"),
    "duplicate key": (_duplicate_key, "appears twice"),
    "UTF-16 header": (_utf16, "not UTF-8"),
    "not JSON": (lambda h, d: _join(None, d, b"{not json}"), "not JSON"),
    "trailing bytes": (lambda h, d: _join(h, d + b"\0" * 16), "16 trailing bytes"),
    "metadata not an object": (lambda h, d: h.__setitem__("__metadata__", [1]),
                               "`__metadata__` is not an object"),
}


@pytest.mark.parametrize("case", sorted(HEADER_CASES))
def test_safetensors_header_lies_are_refused(case, tmp_path):
    edit, words = HEADER_CASES[case]
    path = _write(tmp_path, _edited(edit))
    with pytest.raises(CorruptCheckpointError) as info:
        read_safetensors(path)
    message = _one_line(info.value)
    assert path in message and words in message and "download it again" in message
    # The header check alone refuses it: no tensor data is read for a lying header.
    with pytest.raises(CorruptCheckpointError):
        read_safetensors_header(path)


@pytest.mark.parametrize("case", sorted(HEADER_CASES))
def test_the_reference_library_refuses_the_same_headers(case, tmp_path):
    """The README's claim: our reader refuses what `safetensors` refuses, and duplicate keys,
    which it accepts (its JSON parser keeps the last entry)."""
    safetensors_numpy = pytest.importorskip("safetensors.numpy")
    path = _write(tmp_path, _edited(HEADER_CASES[case][0]))
    if case == "duplicate key":
        safetensors_numpy.load_file(path)
    else:
        with pytest.raises(Exception, match="deserializing header"):
            safetensors_numpy.load_file(path)


def test_safetensors_tensor_lies_name_the_tensor(tmp_path):
    header, data = _split()
    first, _ = _first_two(header)
    header[first]["dtype"] = "F16"
    with pytest.raises(CorruptCheckpointError, match=f"tensor '{first}'"):
        read_safetensors(_write(tmp_path, _join(header, data)))


@pytest.mark.parametrize("keep", [0, 5, 8, 9, 100, -1, -4])
def test_safetensors_truncations(keep, tmp_path):
    raw = open(SAFETENSORS, "rb").read()
    path = _write(tmp_path, raw[:keep] if keep >= 0 else raw[:keep])
    with pytest.raises(CorruptCheckpointError) as info:
        read_checkpoint(path)
    message = _one_line(info.value)
    assert "truncated" in message and path in message


def test_huge_header_length_is_refused_without_reading_it(tmp_path):
    path = _write(tmp_path, struct.pack("<Q", 1 << 62) + b"{}")
    with pytest.raises(CorruptCheckpointError, match="its header claims"):
        read_safetensors(path)


def test_valid_files_still_read(tmp_path):
    # Metadata, zero-size tensors and header padding are part of the format.
    header, data = _split()
    header["__metadata__"] = {"format": "pt"}
    header["empty"] = {"dtype": "F32", "shape": [0, 3], "data_offsets": [len(data), len(data)]}
    raw = json.dumps(header).encode() + b"    "
    tensors = read_safetensors(_write(tmp_path, _join(None, data, raw)))
    assert tensors["empty"].shape == (0, 3)
    reference = read_safetensors(SAFETENSORS)
    assert all(np.array_equal(reference[n], tensors[n]) for n in reference)


def test_random_header_flips_only_give_the_documented_error(tmp_path):
    """Seeded random byte flips in the header: each file reads or gives CorruptCheckpointError,
    never another exception."""
    raw = bytearray(open(SAFETENSORS, "rb").read())
    (length,) = struct.unpack("<Q", raw[:8])
    rng = random.Random(13)
    outcomes = {"read": 0, "refused": 0}
    for trial in range(300):
        flipped = bytearray(raw)
        for _ in range(rng.randint(1, 3)):
            flipped[rng.randrange(0, 8 + length)] = rng.randrange(256)
        path = _write(tmp_path, bytes(flipped), f"flip{trial}.safetensors")
        try:
            read_safetensors(path)
            outcomes["read"] += 1
        except CorruptCheckpointError as e:
            _one_line(e)
            outcomes["refused"] += 1
        os.remove(path)
    assert outcomes["refused"] > 100  # most flips break something, and each is named


# ---- config.json lies ----------------------------------------------------------------------
def _folder_with_config(tmp_path, edit):
    """A copy of the distilled fixture folder whose config.json is `edit(config)` (or raw text
    when `edit` returns a string)."""
    folder = tmp_path / "checkpoint"
    folder.mkdir()
    shutil.copy(SAFETENSORS, folder)
    config = json.load(open(os.path.join(WITH_TEACHER, "config.json")))
    result = edit(config)
    text = result if isinstance(result, str) else json.dumps(config if result is None else result)
    (folder / "config.json").write_text(text)
    return str(folder)


def _field(name, value):
    return lambda c: c.__setitem__(name, value)


CONFIG_LIES = {
    # name: (edit, error class, words the message must contain)
    "null": (lambda c: "null", kd.ConfigError, "must hold a JSON object, got NoneType"),
    "a list": (lambda c: [c], kd.ConfigError, "must hold a JSON object, got list"),
    "truncated": (lambda c: json.dumps(c)[:40], kd.ConfigError, "not valid JSON"),
    "id2label list": (_field("id2label", ["a", "b"]), kd.ConfigError, "`id2label` must be an object"),
    "id2label bad key": (_field("id2label", {"x": "a"}), kd.ConfigError, "Received: 'x': 'a'"),
    "id2label gap": (_field("id2label", {"0": "a", "5": "b"}), kd.ConfigError, "without gaps"),
    "label2id bad value": (_field("label2id", {f"LABEL_{i}": i if i else "zero" for i in range(5)}),
                           kd.ConfigError, "`label2id` must map label names to class ids"),
    "layer_norm_eps true": (_field("layer_norm_eps", True), kd.ConfigError,
                            "`layer_norm_eps` must be a positive number"),
    "qkv_bias string": (_field("qkv_bias", "false"), kd.ConfigError,
                        "`qkv_bias` must be true or false. Received: qkv_bias='false'"),
    "distillation string": (_field("use_distillation_token", "no"), kd.ConfigError,
                            "`use_distillation_token` must be true or false"),
    "hidden_size float": (_field("hidden_size", 48.0), kd.ConfigError,
                          "`hidden_size` must be a positive int"),
    "hidden_size string": (_field("hidden_size", "48"), kd.ConfigError, "hidden_size='48'"),
    "intermediate_size 1e10": (_field("intermediate_size", 1e10), kd.ConfigError,
                               "`intermediate_size` must be a positive int"),
    "activation list": (_field("hidden_act", ["gelu"]), kd.ConfigError, "Unknown activation"),
    "patch float": (_field("patch_size", 8.0), kd.ConfigError, "`patch_size` must be a positive int"),
    # Well-typed lies: refused from the checkpoint's shapes before anything is built.
    "hidden_size 3000000": (_field("hidden_size", 3_000_000), CheckpointError,
                            "hidden_size (embeddings.cls_token): config (1, 1, 3000000)"),
    "intermediate_size huge": (_field("intermediate_size", 10 ** 10), CheckpointError,
                               "intermediate_size, hidden_size"),
    "400 layers": (_field("num_hidden_layers", 400), CheckpointError,
                   "num_hidden_layers: config 400, checkpoint 2"),
    "image_size": (_field("image_size", 320), CheckpointError, "position embeddings"),
    "patch_size": (_field("patch_size", 4), CheckpointError, "patch_size"),
    "num_labels": (lambda c: c.pop("label2id") and c.__setitem__(
        "id2label", {str(i): str(i) for i in range(10 ** 5)}), CheckpointError,
        "num_labels / id2label (cls_classifier.weight): config 100000, checkpoint 5"),
    "encoder_stride": (_field("encoder_stride", 10 ** 5), None, None),  # no decoder: unused
    "qkv_bias false": (_field("qkv_bias", False), CheckpointError,
                       "qkv_bias: config False, checkpoint True"),
    "vit layout": (_field("model_type", "vit"), CheckpointError, "use_distillation_token"),
}


@pytest.mark.parametrize("case", sorted(CONFIG_LIES))
def test_config_lies_are_refused_naming_file_and_field(case, tmp_path):
    edit, error, words = CONFIG_LIES[case]
    folder = _folder_with_config(tmp_path, edit)
    if error is None:  # a field the checkpoint does not constrain loads as it says
        kd.DeiTPreTrainedModel.from_pretrained(folder)
        return
    with pytest.raises(error) as info:
        kd.DeiTPreTrainedModel.from_pretrained(folder)
    message = _one_line(info.value)
    assert words in message and os.path.join(folder, "") in message


def test_a_config_asking_for_a_huge_model_is_refused_before_any_variable(tmp_path, monkeypatch):
    """No Keras variable may be created: the refusal comes from the safetensors header."""
    import keras
    from keras.src.backend.common import variables

    created = []
    original = variables.Variable.__init__

    def counting(self, *args, **kwargs):
        created.append(kwargs.get("name"))
        original(self, *args, **kwargs)

    monkeypatch.setattr(variables.Variable, "__init__", counting)
    folder = _folder_with_config(tmp_path, _field("hidden_size", 3_000_000 * 3))
    with pytest.raises(CheckpointError, match="refused before building the model"):
        kd.DeiTPreTrainedModel.from_pretrained(folder)
    assert created == []
    keras.Variable(np.zeros(2))  # the counter does see variables
    assert len(created) == 1


# ---- .pth head count ----------------------------------------------------------------------
def test_a_guessed_head_count_is_warned_and_kept_in_loading_info():
    """Hidden 64 over 3 blocks matches no preset: 1 head (64 wide) is a guess (the fixture has
    4), and `--verify` cannot catch it, so it must be said."""
    pytest.importorskip("torch")
    path = os.path.join(TIMM, "deit_micro_distilled_patch8_48.pth")
    with pytest.warns(UserWarning, match="head count is a guess"):
        model = kd.DeiTPreTrainedModel.from_pretrained(path)
    assert model.config.num_attention_heads == 1
    assert any("num_attention_heads=N" in note for note in model.loading_info.notes)
    model = kd.DeiTPreTrainedModel.from_pretrained(path, num_attention_heads=4)
    assert model.loading_info.notes == []


def test_convert_prints_the_guess(tmp_path, capsys):
    pytest.importorskip("torch")
    from keras_deit.conversion.cli import main

    path = os.path.join(TIMM, "deit_micro_distilled_patch8_48.pth")
    assert main([path, str(tmp_path / "m.weights.h5"), "--quiet"]) == 0
    err = capsys.readouterr().err
    assert "warning: the head count is a guess: 1 heads" in err and err.count("\n") == 1


# ---- .bin / .pth ---------------------------------------------------------------------------
PTH = os.path.join(TIMM, "deit_micro_distilled_patch16_64.pth")


@pytest.mark.parametrize("fraction", [0.0, 0.1, 0.5, 0.9, 0.999])
def test_truncated_pth_files(fraction, tmp_path):
    pytest.importorskip("torch")
    raw = open(PTH, "rb").read()
    path = _write(tmp_path, raw[: int(len(raw) * fraction)], "model.pth")
    with pytest.raises(CorruptCheckpointError) as info:
        read_checkpoint(path)
    message = _one_line(info.value)
    assert path in message and "truncated" in message


def test_a_pickle_with_code_is_refused_as_code(tmp_path):
    torch = pytest.importorskip("torch")

    class Payload:
        def __reduce__(self):
            return (exec, ("raise SystemExit('the payload ran')",))

    for name, legacy in (("new.pth", False), ("legacy.bin", True)):
        path = str(tmp_path / name)
        torch.save({"model": {"cls_token": torch.zeros(1, 1, 4)}, "x": Payload()}, path,
                   _use_new_zipfile_serialization=not legacy)
        with pytest.raises(CheckpointError) as info:
            read_checkpoint(path)
        message = _one_line(info.value)
        assert not isinstance(info.value, CorruptCheckpointError)
        assert "contains code (its pickle calls `exec`) and was refused" in message
        assert "weights_only" not in message and "add_safe_globals" not in message


def test_pth_structure_lies(tmp_path):
    torch = pytest.importorskip("torch")
    state = torch.load(PTH, weights_only=True)
    state = state.get("model", state)
    cases = {
        # name: (content, error words)
        "a list": ([torch.zeros(2)], "holds a list, not a state dict"),
        "non-square grid": (dict(state, pos_embed=torch.zeros(1, 19, 48)), "no square patch grid"),
        "missing tensor": ({k: v for k, v in state.items() if k != "blocks.1.attn.qkv.weight"},
                           "model variables with no tensor in the checkpoint"),
        "block gap": ({k.replace("blocks.1.", "blocks.2."): v for k, v in state.items()},
                      "not numbered 0..2"),
    }
    for name, (content, words) in cases.items():
        path = str(tmp_path / f"{name.replace(' ', '_')}.pth")
        torch.save(content, path)
        with pytest.raises(CheckpointError) as info:
            kd.DeiTPreTrainedModel.from_pretrained(path, num_attention_heads=3)
        assert words in str(info.value), (name, str(info.value))


def test_random_pth_flips_only_give_checkpoint_errors(tmp_path):
    """Seeded flips anywhere in a .pth: it reads, or a CheckpointError says why; nothing else."""
    pytest.importorskip("torch")
    raw = open(PTH, "rb").read()
    rng = random.Random(7)
    refused = 0
    for trial in range(40):
        flipped = bytearray(raw)
        for _ in range(4):
            flipped[rng.randrange(len(raw))] = rng.randrange(256)
        path = _write(tmp_path, bytes(flipped), f"flip{trial}.pth")
        try:
            read_checkpoint(path)
        except CheckpointError as e:
            _one_line(e)
            refused += 1
        os.remove(path)
    assert refused > 0


# ---- tf_model.h5 -----------------------------------------------------------------------------
H5 = os.path.join(WITH_TEACHER, "tf_model.h5")


def _h5_copy(tmp_path, edit):
    import h5py

    path = tmp_path / "tf_model.h5"
    shutil.copy(H5, path)
    with h5py.File(path, "r+") as f:
        edit(f)
    return str(path)


def test_h5_lies(tmp_path):
    import h5py

    def phantom_layer(f):
        f.attrs["layer_names"] = np.array(
            [n if isinstance(n, bytes) else n.encode() for n in f.attrs["layer_names"]]
            + [b"no_such_group"])

    def not_a_checkpoint(f):
        del f.attrs["layer_names"]

    def missing_weight(f):
        group = f[f.attrs["layer_names"][0]]
        group.attrs["weight_names"] = np.array(
            [n if isinstance(n, bytes) else n.encode() for n in group.attrs["weight_names"]]
            + [b"ghost/kernel:0"])

    cases = [
        (phantom_layer, CorruptCheckpointError, "`layer_names` lists 'no_such_group'"),
        (not_a_checkpoint, CheckpointError, "no `layer_names`"),
        (missing_weight, CorruptCheckpointError, "weight 'ghost/kernel:0' is unreadable"),
    ]
    for edit, error, words in cases:
        (tmp_path / "tf_model.h5").unlink(missing_ok=True)
        path = _h5_copy(tmp_path, edit)
        with pytest.raises(error) as info:
            read_checkpoint(path)
        message = _one_line(info.value)
        assert words in message and path in message
    assert h5py  # the edits above went through h5py, so the file stayed valid HDF5


@pytest.mark.parametrize("fraction", [0.0, 0.3, 0.9])
def test_truncated_h5_files(fraction, tmp_path):
    raw = open(H5, "rb").read()
    path = _write(tmp_path, raw[: int(len(raw) * fraction)], "tf_model.h5")
    with pytest.raises(CorruptCheckpointError, match="truncated"):
        read_checkpoint(path)


@pytest.mark.parametrize("weights", ["tf_model.h5", "model.safetensors"])
def test_config_lies_are_refused_for_every_hf_format(weights, tmp_path):
    folder = tmp_path / "checkpoint"
    folder.mkdir()
    shutil.copy(os.path.join(WITH_TEACHER, weights), folder)
    config = json.load(open(os.path.join(WITH_TEACHER, "config.json")))
    config["hidden_size"] = 3_000_000
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="refused before building the model"):
        kd.DeiTPreTrainedModel.from_pretrained(str(folder))


# ---- .keras --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def keras_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("keras") / "model.keras"
    kd.DeiTPreTrainedModel.from_pretrained(WITH_TEACHER).save(path)
    return str(path)


def _rezipped(keras_file, tmp_path, edit_config):
    import zipfile

    out = tmp_path / "edited.keras"
    with zipfile.ZipFile(keras_file) as src, zipfile.ZipFile(out, "w") as dst:
        for item in src.infolist():
            data = src.read(item.filename)
            if item.filename == "config.json":
                saved = json.loads(data)
                edit_config(saved["config"]["config"])
                data = json.dumps(saved).encode()
            dst.writestr(item, data)
    return str(out)


def test_keras_file_lies(keras_file, tmp_path):
    from keras_deit.saving import load_model

    raw = open(keras_file, "rb").read()
    for keep in (0, 100, len(raw) // 2, len(raw) - 10):
        path = _write(tmp_path, raw[:keep], "cut.keras")
        with pytest.raises(ValueError, match="is not a .keras archive"):
            load_model(path)
    huge = _rezipped(keras_file, tmp_path, lambda c: c.update(hidden_size=3_000_000))
    with pytest.raises(ValueError, match="refused before building"):
        load_model(huge)
    typed = _rezipped(keras_file, tmp_path, lambda c: c.update(qkv_bias="false"))
    with pytest.raises(kd.ConfigError, match="`qkv_bias` must be true or false"):
        load_model(typed)
    assert isinstance(load_model(keras_file), kd.DeiTForImageClassificationWithTeacher)
