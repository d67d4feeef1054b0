"""Where weights come from: URLs (downloaded with file:// URLs or a stand-in opener, never the
network), hub ids (snapshot_download patched to a local folder), presets, folders and files."""

import hashlib
import http.server
import io
import json
import os
import pathlib
import shutil
import socket
import struct
import subprocess
import sys
import threading
import urllib.error
import urllib.request
import warnings

import numpy as np
import pytest

import keras_deit as kd
from helpers import HF, TIMM, max_abs_diff
from keras_deit.conversion import sources
from keras_deit.conversion.readers import CheckpointError
from keras_deit import presets

TOLERANCE = 1e-5
DISTILLED = "deit_micro_distilled_patch16_64"  # hidden 48, 3 heads


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    """Every test gets its own download cache, through the environment variable."""
    folder = tmp_path / "cache"
    monkeypatch.setenv(sources.CACHE_ENV, str(folder))
    return folder


def _sha256(path):
    return hashlib.sha256(pathlib.Path(path).read_bytes()).hexdigest()


def _served(tmp_path, name, source):
    """A copy of `source` at tmp_path/served/name, and its file:// URL."""
    folder = tmp_path / "served"
    folder.mkdir(exist_ok=True)
    shutil.copy(source, folder / name)
    return folder / name, (folder / name).as_uri()


def _leftovers(folder):
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


# ---- downloads ----------------------------------------------------------------------------
def test_download_checks_the_hash_in_the_file_name_and_is_reused(tmp_path, cache):
    source = os.path.join(TIMM, DISTILLED + ".pth")
    name = f"micro-{_sha256(source)[:8]}.pth"
    served, url = _served(tmp_path, name, source)
    path = sources.download(url)
    assert path == sources.cache_path(url) and os.path.basename(path) == name
    assert _sha256(path) == _sha256(source)
    assert _leftovers(pathlib.Path(path).parent) == [name]  # no temporary file left behind
    served.unlink()  # the second call must not need the source
    assert sources.download(url) == path
    pathlib.Path(path).write_bytes(b"placed by hand, but wrong")
    with pytest.raises(CheckpointError, match="Delete it and try again"):
        sources.download(url)


def test_wrong_hash_leaves_nothing(tmp_path, cache):
    _, url = _served(tmp_path, "micro-0badc0de.pth", os.path.join(TIMM, DISTILLED + ".pth"))
    with pytest.raises(CheckpointError, match="does not start with the expected 0badc0de"):
        sources.download(url)
    assert _leftovers(cache) == []


def test_explicit_hash_prefix_is_checked(tmp_path, cache):
    _, url = _served(tmp_path, "plain.pth", os.path.join(TIMM, DISTILLED + ".pth"))
    with pytest.raises(CheckpointError, match="sha256"):
        sources.download(url, sha256_prefix="ffffffff")
    assert _leftovers(cache) == []


def test_no_network_says_which_url_and_where_to_put_it(monkeypatch, cache):
    def offline(url, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    url = presets.get_preset("deit_tiny_patch16_224")["url"]
    with pytest.raises(CheckpointError) as info:
        kd.DeiTForImageClassification.from_pretrained("deit_tiny_patch16_224")
    message = str(info.value)
    assert url in message
    assert sources.cache_path(url) in message
    assert sources.cache_path(url).endswith("deit_tiny_patch16_224-a1311bcf.pth")
    assert sources.CACHE_ENV in message
    assert _leftovers(cache) == []


class _Response(io.BytesIO):
    """A urlopen response whose Content-Length promises more than it delivers."""

    def __init__(self, data, length):
        super().__init__(data)
        self.headers = {"Content-Length": str(length)}


def test_truncated_download_leaves_nothing(cache):
    opener = lambda url: _Response(b"x" * 100, 1000)  # noqa: E731
    with pytest.raises(CheckpointError, match="stopped after 100 of 1000 bytes"):
        sources.download("https://example.invalid/deit/file.pth", opener=opener)
    assert _leftovers(cache) == []


def test_progress_bar_for_large_downloads(cache, capsys, monkeypatch):
    monkeypatch.setattr(sources, "_PROGRESS_MIN_BYTES", 10)
    data = b"y" * (3 << 20)
    opener = lambda url: _Response(data, len(data))  # noqa: E731
    path = sources.download("https://example.invalid/deit/big.bin", opener=opener)
    assert os.path.getsize(path) == len(data)
    err = capsys.readouterr().err
    assert "Downloading big.bin [" in err and "100%" in err and "3.1/3.1 MB" in err


def test_cache_location(monkeypatch, tmp_path):
    assert sources.cache_dir(tmp_path) == str(tmp_path)
    monkeypatch.delenv(sources.CACHE_ENV)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert sources.cache_dir() == os.path.join(str(tmp_path), ".cache", "keras_deit")


# ---- from_pretrained with every kind of source --------------------------------------------
def _reference():
    return np.load(os.path.join(TIMM, DISTILLED + ".npz"))


def _check_distilled(model):
    reference = _reference()
    out = model(reference["pixel_values"])
    assert max_abs_diff(out["logits"], reference["logits"]) <= TOLERANCE


def test_from_url(tmp_path, cache):
    pytest.importorskip("torch")
    _, url = _served(tmp_path, "micro.pth", os.path.join(TIMM, DISTILLED + ".pth"))
    model = kd.DeiTPreTrainedModel.from_pretrained(url, num_attention_heads=3,
                                                   data_format="channels_first")
    assert isinstance(model, kd.DeiTForImageClassificationWithTeacher)
    assert model.loading_info.source == sources.cache_path(url)
    _check_distilled(model)


def test_from_preset_downloads_its_original_file(tmp_path, cache, monkeypatch):
    """A preset row for the micro fixture, served from a file:// URL with its true hash."""
    pytest.importorskip("torch")
    source = os.path.join(TIMM, DISTILLED + ".pth")
    prefix = _sha256(source)[:8]
    _, url = _served(tmp_path, f"{DISTILLED}-{prefix}.pth", source)
    row = dict(presets.PRESETS["deit_tiny_distilled_patch16_224"], hidden_size=48,
               num_hidden_layers=2, num_attention_heads=3, image_size=64, num_labels=10,
               url=url, sha256_prefix=prefix)
    monkeypatch.setitem(presets.PRESETS, DISTILLED, row)
    model = kd.DeiTForImageClassificationWithTeacher.from_pretrained(
        DISTILLED, data_format="channels_first")
    assert model.loading_info.preset == DISTILLED
    assert model.config.num_attention_heads == 3  # from the preset, not from the shapes
    assert model.config.layer_norm_eps == 1e-6
    _check_distilled(model)
    # A preset whose file does not match it: the differences are listed.
    monkeypatch.setitem(presets.PRESETS, DISTILLED, dict(row, hidden_size=96, image_size=32))
    with pytest.raises(CheckpointError, match="hidden_size: config 96, checkpoint 48"):
        kd.DeiTForImageClassificationWithTeacher.from_pretrained(DISTILLED)


def test_from_hub_id(monkeypatch):
    huggingface_hub = pytest.importorskip("huggingface_hub")
    calls = []

    def snapshot_download(repo_id, revision=None, allow_patterns=None):
        calls.append((repo_id, allow_patterns))
        return os.path.join(HF, "with_teacher")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    model = kd.DeiTPreTrainedModel.from_pretrained("someone/deit-fixture")
    assert isinstance(model, kd.DeiTForImageClassificationWithTeacher)
    assert calls == [("someone/deit-fixture", ["*.json", "*.safetensors"])]
    local = kd.DeiTForImageClassificationWithTeacher.from_pretrained(
        os.path.join(HF, "with_teacher"))
    images = np.random.RandomState(0).rand(1, 32, 32, 3).astype("float32")
    assert max_abs_diff(model(images)["logits"], local(images)["logits"]) == 0.0


def test_preset_from_hub_checks_the_architecture(monkeypatch):
    huggingface_hub = pytest.importorskip("huggingface_hub")
    monkeypatch.setattr(huggingface_hub, "snapshot_download",
                        lambda repo_id, **kw: os.path.join(HF, "with_teacher"))
    with pytest.raises(CheckpointError, match="preset 'deit_tiny_distilled_patch16_224'"):
        kd.DeiTPreTrainedModel.from_pretrained("deit_tiny_distilled_patch16_224",
                                               preset_source="hub")


def test_timm_hub_folder(tmp_path, monkeypatch):
    """A timm hub repository: timm's config.json and model.safetensors in timm's names."""
    pytest.importorskip("torch")
    huggingface_hub = pytest.importorskip("huggingface_hub")
    from safetensors.numpy import save_file

    from keras_deit.conversion.readers import read_torch

    name = "deit3_micro_patch16_64"
    folder = tmp_path / "timm_repo"
    folder.mkdir()
    save_file(read_torch(os.path.join(TIMM, name + ".pth")), str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps({"architecture": name, "num_classes": 10}))
    monkeypatch.setattr(huggingface_hub, "snapshot_download", lambda repo_id, **kw: str(folder))
    model = kd.DeiTPreTrainedModel.from_pretrained(f"timm/{name}.fb_in1k", num_attention_heads=3,
                                                   data_format="channels_first")
    assert isinstance(model, kd.DeiTForImageClassification)
    assert model.loading_info.format == "timm"
    reference = np.load(os.path.join(TIMM, name + ".npz"))
    logits = model(reference["pixel_values"])["logits"]
    assert max_abs_diff(logits, reference["logits"]) <= TOLERANCE
    # The same weights as a lone .safetensors file.
    lone = kd.DeiTForImageClassification.from_pretrained(
        str(folder / "model.safetensors"), num_attention_heads=3, data_format="channels_first")
    assert max_abs_diff(lone(reference["pixel_values"])["logits"], reference["logits"]) <= TOLERANCE


def test_hub_failure_and_missing_package(monkeypatch):
    huggingface_hub = pytest.importorskip("huggingface_hub")

    def offline(repo_id, **kwargs):
        raise OSError("we are offline")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", offline)
    with pytest.raises(CheckpointError, match="hf download someone/deit"):
        kd.DeiTModel.from_pretrained("someone/deit")
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)  # import fails
    with pytest.raises(CheckpointError, match="pip install huggingface_hub"):
        kd.DeiTModel.from_pretrained("someone/deit")


def test_lone_transformers_file(tmp_path):
    # With its config.json beside it, a transformers weights file loads on its own.
    path = os.path.join(HF, "with_teacher", "model.safetensors")
    model = kd.DeiTPreTrainedModel.from_pretrained(path)
    assert isinstance(model, kd.DeiTForImageClassificationWithTeacher)
    # Without one, the error says what to do.
    shutil.copy(path, tmp_path / "model.safetensors")
    with pytest.raises(CheckpointError, match="config.json"):
        kd.DeiTModel.from_pretrained(str(tmp_path / "model.safetensors"))
    config = kd.DeiTConfig.from_json(os.path.join(HF, "with_teacher"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = kd.DeiTModel.from_pretrained(str(tmp_path / "model.safetensors"), config=config)
    assert sorted(model.loading_info.dropped)[0] == "cls_classifier.bias"


def test_unknown_source_suggests_presets():
    with pytest.raises(FileNotFoundError, match="deit_small_patch16_224"):
        kd.DeiTModel.from_pretrained("deit_smal_patch16_224")
    with pytest.raises(FileNotFoundError, match="no such file"):
        kd.DeiTModel.from_pretrained("missing/weights.pth")
    with pytest.raises(ValueError, match="preset_source"):
        kd.DeiTModel.from_pretrained("deit_tiny_patch16_224", preset_source="timm")


def test_source_kinds():
    assert sources.is_url("https://dl.fbaipublicfiles.com/deit/x.pth")
    assert sources.is_url("file:///tmp/x.pth") and not sources.is_url("/tmp/x.pth")
    assert sources.looks_like_repo_id("facebook/deit-tiny-patch16-224")
    assert sources.looks_like_repo_id("timm/deit3_small_patch16_224.fb_in1k")
    assert not sources.looks_like_repo_id("weights/model.pth")
    assert not sources.looks_like_repo_id("a/b/c")
    url = presets.get_preset("deit_base_patch16_384")["url"]
    assert sources.expected_sha256_prefix(url) == "8de9b5d1"
    assert sources.expected_sha256_prefix("https://x.invalid/deit_3_small_224_1k.pth") is None
    assert sources.expected_sha256_prefix("https://x.invalid/w-0123abcd.pth") == "0123abcd"


# ---- a local HTTP server (127.0.0.1 only) ----------------------------------------------------
class _Handler(http.server.BaseHTTPRequestHandler):
    """Serves `routes[path]` = (body, mode): "ok" (with Content-Length), "no-length" (the body,
    then close), "short" (a length it does not deliver), "chunked-cut" (a chunked body that
    stops mid-chunk) or "reset" (part of the body, then a TCP reset)."""

    routes = {}
    timeout = 5

    def do_GET(self):  # noqa: N802 (the http.server name)
        body, mode = self.routes[self.path]
        self.send_response(200)
        if mode == "ok":
            self.send_header("Content-Length", str(len(body)))
        elif mode == "short":
            self.send_header("Content-Length", str(len(body) * 2))
        elif mode == "chunked-cut":
            self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        if mode == "chunked-cut":
            self.wfile.write(b"%x\r\n" % (len(body) * 2) + body)
        elif mode == "reset":
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            # Linger 0 makes close() send RST; closed here, before http.server's own
            # shutdown() would send a clean FIN first.
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                       struct.pack("ii", 1, 0))
            self.connection.close()
        else:
            self.wfile.write(body)
        self.close_connection = True

    def log_message(self, *args):
        pass


@pytest.fixture
def server(monkeypatch):
    """(routes dict, base URL) of a server on 127.0.0.1 that lives for one test."""
    monkeypatch.setattr(sources, "_TIMEOUT_S", 5)
    routes = {}
    handler = type("Handler", (_Handler,), {"routes": routes})
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield routes, f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()
    thread.join(5)


def _all_files(folder):
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()) \
        if folder.exists() else []


def test_the_cache_is_keyed_by_url_not_by_file_name(server, cache):
    routes, base = server
    routes["/a/model.pth"] = (b"first", "ok")
    routes["/b/model.pth"] = (b"second", "ok")
    first = sources.download(base + "/a/model.pth")
    second = sources.download(base + "/b/model.pth")
    assert first != second and os.path.basename(first) == os.path.basename(second)
    assert open(first, "rb").read() == b"first" and open(second, "rb").read() == b"second"
    del routes["/a/model.pth"]  # reused from the cache, not fetched again
    assert sources.download(base + "/a/model.pth") == first


def test_a_download_without_length_is_kept_after_a_clean_end(server, cache):
    routes, base = server
    routes["/plain/model.pth"] = (b"z" * 5000, "no-length")
    path = sources.download(base + "/plain/model.pth")
    assert open(path, "rb").read() == b"z" * 5000
    assert _all_files(cache) == [os.path.relpath(path, cache)]


@pytest.mark.parametrize("mode, words", [
    ("short", "stopped after 200000 of 400000 bytes"),
    ("chunked-cut", "IncompleteRead"),
    ("reset", "Connection reset by peer"),
])
def test_broken_downloads_are_one_line_errors_naming_the_url(server, cache, mode, words):
    routes, base = server
    routes["/broken/model.pth"] = (b"q" * 200_000, mode)
    url = base + "/broken/model.pth"
    with pytest.raises(CheckpointError) as info:
        sources.download(url)
    message = str(info.value)
    assert "\n" not in message and url in message and words in message
    assert _all_files(cache) == []  # no partial file, no temporary file


def test_a_truncated_download_that_looked_complete_is_removed_when_read(server, cache):
    """No length and no hash: the cut cannot be seen while downloading, so the reader's
    refusal removes the cached file and the next run downloads it again."""
    pytest.importorskip("torch")
    routes, base = server
    data = open(os.path.join(TIMM, DISTILLED + ".pth"), "rb").read()
    routes["/cut/micro.pth"] = (data[: len(data) // 2], "no-length")
    url = base + "/cut/micro.pth"
    with pytest.raises(CheckpointError, match="now removed: run again to download it afresh"):
        kd.DeiTPreTrainedModel.from_pretrained(url, num_attention_heads=3)
    assert _all_files(cache) == []
    routes["/cut/micro.pth"] = (data, "no-length")
    model = kd.DeiTPreTrainedModel.from_pretrained(url, num_attention_heads=3)
    assert model.loading_info.source == sources.cache_path(url)


def test_a_cache_that_is_a_file_is_named(tmp_path, monkeypatch):
    blocker = tmp_path / "cache-file"
    blocker.write_text("not a folder")
    monkeypatch.setenv(sources.CACHE_ENV, str(blocker))
    with pytest.raises(CheckpointError) as info:
        sources.download("https://example.invalid/deit/model.pth",
                         opener=lambda url: pytest.fail("must not download"))
    assert f"{blocker} is a file, not a folder" in str(info.value)
    assert sources.CACHE_ENV in str(info.value)


def test_stale_temporary_files_of_killed_downloads_are_removed(tmp_path):
    from keras_deit import atomic

    dest = tmp_path / "model.pth"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()
    stale = tmp_path / f".model.pth.tmp-{dead}-00ff.part"
    live = tmp_path / f".model.pth.tmp-{os.getppid()}-00ff.part"  # a running process's
    stale.write_bytes(b"partial")
    live.write_bytes(b"being written")
    assert atomic.remove_stale(str(dest), ".part") == [stale.name]
    assert live.exists() and not stale.exists()
