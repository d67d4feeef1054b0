"""keras_deit.atomic, and the writers that use it: model saving and export staging."""

import errno
import os
import select
import shutil
import signal
import subprocess
import sys
import time

import keras
import numpy as np
import pytest

import keras_deit as kd
from helpers import max_abs_diff, small_config
from keras_deit import atomic
from keras_deit import export as ex
from keras_deit.export import core as export_core


@pytest.fixture
def model():
    return kd.DeiTForImageClassification(small_config())


def test_save_and_save_weights_refuse_a_full_disk_before_writing(model, tmp_path, monkeypatch):
    model.save(tmp_path / "kept.keras")
    before = (tmp_path / "kept.keras").read_bytes()
    real = shutil.disk_usage
    monkeypatch.setattr(shutil, "disk_usage", lambda path: real(path)._replace(free=4096))
    for name in ("kept.keras", "new.weights.h5"):
        save = model.save if name.endswith(".keras") else model.save_weights
        with pytest.raises(OSError, match=r"not enough space to write .*free some space") as e:
            save(tmp_path / name)
        assert e.value.errno == errno.ENOSPC
    assert sorted(os.listdir(tmp_path)) == ["kept.keras"]
    assert (tmp_path / "kept.keras").read_bytes() == before


def test_a_save_that_fails_midway_leaves_the_previous_file(model, tmp_path, monkeypatch):
    model.save_weights(tmp_path / "m.weights.h5")
    before = (tmp_path / "m.weights.h5").read_bytes()

    def disk_fills(self, filepath, *args, **kwargs):
        with open(filepath, "wb") as f:
            f.write(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(keras.Model, "save_weights", disk_fills)
    with pytest.raises(OSError, match="No space left on device while writing .*m.weights.h5"):
        model.save_weights(tmp_path / "m.weights.h5")
    assert os.listdir(tmp_path) == ["m.weights.h5"]
    assert (tmp_path / "m.weights.h5").read_bytes() == before


def test_saving_still_round_trips_and_overwrite_false_is_honoured(model, tmp_path):
    images = np.random.RandomState(0).rand(2, 32, 32, 3).astype("float32")
    model.save(tmp_path / "m.keras")
    reloaded = keras.saving.load_model(tmp_path / "m.keras")
    assert max_abs_diff(reloaded(images)["logits"], model(images)["logits"]) == 0
    with pytest.raises(FileExistsError, match="pass overwrite=True"):
        model.save(tmp_path / "m.keras", overwrite=False)


def test_leftovers_of_a_killed_writer_are_removed_by_the_next_one(model, tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True).stdout.strip()
    stale_save = tmp_path / f".m.keras.tmp-{dead}-0123abcd.keras"
    stale_save.write_bytes(b"half a model")
    stale_export = tmp_path / f".m.tflite.tmp-{dead}-0123abcd.export"
    stale_export.mkdir()
    (stale_export / "m.tflite").write_bytes(b"unverified")
    model.save(tmp_path / "m.keras")
    assert not stale_save.exists()
    with pytest.raises(ValueError):  # refused before building, after the stale cleanup
        ex.export_model(model, tmp_path / "m.tflite", "tflite", quantize="int3")
    with atomic.temporary_path(tmp_path / "m.tflite", ".export"):
        pass
    assert sorted(os.listdir(tmp_path)) == ["m.keras"]


def test_an_export_that_fills_the_disk_is_one_line_and_leaves_nothing(model, tmp_path,
                                                                      monkeypatch):
    def disk_fills(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(export_core, "_build_artifact", disk_fills)
    monkeypatch.setattr(export_core, "_build_in_child", disk_fills)
    with pytest.raises(ex.ExportError, match=r"filled up during the export; nothing was "
                                             r"written: free some space"):
        ex.export_model(model, tmp_path / "m.tflite", "tflite")
    assert os.listdir(tmp_path) == []


_ORPHAN = """
import os, subprocess, sys, time
lifeline = int(sys.argv[1])
env = dict(os.environ, KERAS_DEIT_EXPORT_PARENT=str(os.getpid()))  # as _build_in_child does
subprocess.Popen([sys.executable, "-c",
    "import time; from keras_deit.export import _exit_with_parent; _exit_with_parent(); "
    "time.sleep(120)"], env=env, pass_fds=[lifeline])
print("started", flush=True)
time.sleep(120)
"""


def test_an_export_worker_dies_with_its_parent_even_on_sigkill():
    # The worker holds the write end of a pipe: the read end sees end-of-file exactly when the
    # last process holding it has exited, which works for an orphan (and for a zombie that
    # nobody reaps) on every POSIX system.
    read_end, write_end = os.pipe()
    parent = subprocess.Popen([sys.executable, "-c", _ORPHAN, str(write_end)],
                              stdout=subprocess.PIPE, text=True, pass_fds=[write_end],
                              env=dict(os.environ, KERAS_BACKEND="jax"))
    os.close(write_end)
    try:
        assert parent.stdout.readline().strip() == "started"
        time.sleep(1)
        readable, _, _ = select.select([read_end], [], [], 0)
        assert not readable  # the worker is running
        parent.send_signal(signal.SIGKILL)
        parent.wait()
        readable, _, _ = select.select([read_end], [], [], 30)
        assert readable and os.read(read_end, 1) == b""  # every holder, the worker too, exited
    finally:
        os.close(read_end)
