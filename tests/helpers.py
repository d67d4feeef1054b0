"""Helpers the test modules share (`from helpers import ...`): the checkpoint folders, the
tiny configs and array comparisons. Fixtures stay in conftest.py, which no test imports."""

import os
import signal
import socket
import struct
import zlib

import keras
import numpy as np

import keras_deit as kd

DATA = os.path.join(os.path.dirname(__file__), "data")
HF = os.path.join(DATA, "hf")
TIMM = os.path.join(DATA, "timm")


def free_port():
    """A TCP port of 127.0.0.1 that nothing listens on (for a coordinator)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def finish(processes, timeout=90):
    """(return code, output) of each process (started with `start_new_session=True`); all of
    them killed (with their groups) when the time is up or anything fails."""
    results = []
    try:
        for process in processes:
            output, _ = process.communicate(timeout=timeout)
            results.append((process.returncode, output))
    finally:
        for process in processes:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.communicate()
    return results


def to_numpy(x):
    return np.asarray(keras.ops.convert_to_numpy(x))


def max_abs_diff(a, b):
    return float(np.max(np.abs(to_numpy(a).astype("float64") - to_numpy(b).astype("float64"))))


def tiny_config(**changes):
    """The architecture of the shared/fixtures HF checkpoints (hidden 48, 2 layers, 32px)."""
    fields = dict(
        hidden_size=48, num_hidden_layers=2, num_attention_heads=3, intermediate_size=96,
        image_size=32, patch_size=8, encoder_stride=8, num_labels=5,
    )
    fields.update(changes)
    return kd.DeiTConfig(**fields)


def small_config(**changes):
    """An even smaller architecture for training tests (hidden 32, one layer, 2 heads)."""
    fields = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)
    fields.update(changes)
    return tiny_config(**fields)


def batch(n=8, size=32, seed=0):
    rng = np.random.RandomState(seed)
    return rng.rand(n, size, size, 3).astype("float32"), np.arange(n) % 5


def bomb_png(path, side=30000):
    """A valid PNG header declaring side x side RGB pixels, in a small file."""
    def chunk(kind, data):
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    rows = zlib.compress(b"\x00" * (side * 3 + 1) * 64)
    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 8, 2,
                                                                   0, 0, 0))
                + chunk(b"IDAT", rows) + chunk(b"IEND", b""))


# ---- numpy references of the losses ----------------------------------------------------------
def np_log_softmax(z):
    z = z.astype("float64")
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def np_cross_entropy(logits, labels):
    return float(-np.mean(np_log_softmax(logits)[np.arange(len(labels)), labels]))


def np_bce(logits, targets):
    x = logits.astype("float64")
    return float(np.mean(np.maximum(x, 0) - x * targets + np.log1p(np.exp(-np.abs(x)))))


def np_mse(logits, targets):
    return float(np.mean((logits.astype("float64").reshape(targets.shape) - targets) ** 2))


def head_outputs(model, images):
    out = model(images)
    names = ["cls_logits", "distillation_logits"] if "cls_logits" in out else ["logits"]
    return [to_numpy(out[name]) for name in names]
