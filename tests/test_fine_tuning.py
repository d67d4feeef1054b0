"""`keras-deit train` (keras_deit.training.command): a folder of class folders in, a model that
predict, export and from_pretrained load out; checkpoints, resume, Ctrl-C, bad input."""

import csv
import importlib.util
import glob
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

import keras_deit as kd
from helpers import finish, free_port
from keras_deit.training import command as fine_tuning
from keras_deit.training import image_folder as imf
from keras_deit.cli import main
from keras_deit.saving import load_model

CLASSES = ("circle", "cross", "square")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _picture(kind, rng):
    image = np.zeros((32, 32), "uint8")
    if kind == "square":
        image[8:24, 8:24] = 255
    elif kind == "cross":
        image[14:18, :] = image[:, 14:18] = 255
    else:
        yy, xx = np.mgrid[:32, :32]
        image[(yy - 16) ** 2 + (xx - 16) ** 2 < 64] = 255
    noise = rng.integers(0, 40, image.shape).astype("uint8")
    return np.maximum(image, noise)


def _write_folder(root, per_class=6, classes=CLASSES):
    rng = np.random.default_rng(0)
    for kind in classes:
        os.makedirs(os.path.join(root, kind), exist_ok=True)
        for i in range(per_class):
            Image.fromarray(_picture(kind, rng)).save(os.path.join(root, kind, f"{i}.png"))
    return str(root)


def _write_model(folder, num_labels, distilled=True):
    os.makedirs(folder, exist_ok=True)
    config = kd.DeiTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                           intermediate_size=64, image_size=32, patch_size=8,
                           num_labels=num_labels, layer_norm_eps=1e-6)
    cls = kd.DeiTForImageClassificationWithTeacher if distilled else kd.DeiTForImageClassification
    path = os.path.join(folder, "model.keras")
    cls(config).save(path)
    kd.DeiTImageProcessor(size={"height": 32, "width": 32}, do_center_crop=False,
                          image_mean=[0.5] * 3, image_std=[0.5] * 3).save_pretrained(folder)
    return path


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("train")
    return dict(data=_write_folder(root / "data"), model=_write_model(str(root / "src"), 3),
                other=_write_model(str(root / "other"), 4))


def _files(folder):
    return sorted(os.path.relpath(p, folder) for p in glob.glob(os.path.join(folder, "**"),
                                                                  recursive=True))


def test_train_light_loads_in_predict_export_and_from_pretrained(setup, tmp_path, capsys):
    data = str(tmp_path / "data")
    _write_folder(data)
    with open(os.path.join(data, "cross", "broken.png"), "wb") as f:
        f.write(b"not a png")
    output = str(tmp_path / "out" / "model.keras")
    os.makedirs(os.path.dirname(output))
    assert main(["train", data, output, "--model", setup["model"], "--recipe", "light",
                 "--epochs", "2", "--batch-size", "4", "--base-lr", "0.05"]) == 0
    printed = capsys.readouterr().out
    assert "validation accuracy on 3 images: logits" in printed and "distillation_logits" in printed
    # broken.png is a training file: streamed (and skipped) once in each of the 2 epochs.
    assert "skipped 2 unreadable image read(s) and 0 over Pillow's pixel limit" in printed
    # Keras' per-epoch line: the epoch's 4 steps of 4 images over its wall time.
    assert re.search(r"images_per_second: [0-9.]+", printed), printed
    model = kd.DeiTForImageClassificationWithTeacher.from_pretrained(output)
    assert [model.config.id2label[i] for i in range(3)] == list(CLASSES)
    assert not os.path.exists(output[:-6] + ".checkpoint.npz")  # a finished run removes it
    with open(output[:-6] + ".log.csv") as f:
        rows = list(csv.DictReader(f))
    assert [row["epoch"] for row in rows] == ["0", "1"]
    assert all(float(row["images_per_second"]) > 0 for row in rows)
    assert main(["predict", os.path.join(data, "square", "0.png"), "--model", output,
                 "--top-k", "3"]) == 0
    predicted = capsys.readouterr().out
    assert all(name in predicted for name in CLASSES), predicted
    assert main(["export", output, "--format", "onnx", str(tmp_path / "model.onnx")]) == 0
    assert os.path.isfile(tmp_path / "model.onnx")


def test_interrupt_then_resume_with_a_teacher(setup, tmp_path, capsys,
                                                                  monkeypatch):
    output = str(tmp_path / "model.keras")
    save = fine_tuning.EpochCheckpoint.on_epoch_end

    def save_then_interrupt(self, epoch, logs=None):
        save(self, epoch, logs)
        raise KeyboardInterrupt

    monkeypatch.setattr(fine_tuning.EpochCheckpoint, "on_epoch_end", save_then_interrupt)
    # The training stream's epochs (its permutation is seed + epoch), run by run.
    read, epoch_indices = [], imf.ImageStream._epoch_indices

    def recording(self):
        if self.sampling["shuffle"]:
            read.append(self.epoch)
        yield from epoch_indices(self)

    monkeypatch.setattr(imf.ImageStream, "_epoch_indices", recording)
    args = ["train", setup["data"], output, "--model", setup["model"], "--teacher",
            setup["model"], "--recipe", "light", "--epochs", "2", "--batch-size", "4",
            "--validation-split", "0.2"]
    assert main(args) == 130
    assert "continue with --resume" in capsys.readouterr().err
    checkpoint = output[:-6] + ".checkpoint.npz"
    with np.load(checkpoint) as saved:
        assert int(saved["epochs_done"]) == 1
    assert load_model(output).config.num_labels == 3
    monkeypatch.setattr(fine_tuning.EpochCheckpoint, "on_epoch_end", save)
    assert main(args + ["--resume"]) == 0
    assert read == [0, 1]  # the resumed run reads epoch 1's order, as an uninterrupted one
    with open(output[:-6] + ".log.csv") as f:
        assert [row["epoch"] for row in csv.DictReader(f)] == ["0", "1"]
    assert not os.path.exists(checkpoint)


def test_from_scratch_with_lora_and_another_image_size(setup, tmp_path):
    result = fine_tuning.train_folder(setup["data"], str(tmp_path / "m.keras"),
                                      model=setup["model"], from_scratch=True, lora=2,
                                      image_size=16, recipe="light", epochs=1, batch_size=4,
                                      verbose=0, print_fn=lambda line: None)
    model = load_model(result["output"])
    assert model.config.image_hw == (16, 16)
    assert not any("lora" in v.path for v in model.weights)  # merged at the end
    assert set(result["accuracy"]) == {"logits", "cls_logits", "distillation_logits"}


def _bad(setup, tmp_path, capsys, data, *extra):
    out_dir = tmp_path / "out"
    out_dir.mkdir(exist_ok=True)
    before = _files(str(out_dir))
    code = main(["train", str(data), str(out_dir / "m.keras"), "--model", setup["model"],
                 "--epochs", "1", "--batch-size", "4", *extra])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("keras-deit: error:"), err
    assert _files(str(out_dir)) == before  # nothing written
    return err[0]


def test_empty_folder(setup, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert "holds no class folders" in _bad(setup, tmp_path, capsys, tmp_path / "empty")


def test_class_folder_without_images(setup, tmp_path, capsys):
    data = _write_folder(tmp_path / "data", per_class=3, classes=CLASSES[:2])
    os.makedirs(os.path.join(data, "square"))
    assert "class folder" in _bad(setup, tmp_path, capsys, data) and "square" in \
        _bad(setup, tmp_path, capsys, data)


def test_class_of_unreadable_images_only(setup, tmp_path, capsys):
    data = _write_folder(tmp_path / "data", per_class=3, classes=CLASSES[:2])
    os.makedirs(os.path.join(data, "square"))
    for i in range(3):
        with open(os.path.join(data, "square", f"{i}.png"), "wb") as f:
            f.write(b"broken")
    line = _bad(setup, tmp_path, capsys, data)
    assert "no readable training image" in line and "square" in line


def test_teacher_with_another_class_count(setup, tmp_path, capsys):
    line = _bad(setup, tmp_path, capsys, setup["data"], "--teacher", setup["other"])
    assert "has 4 classes and the data 3" in line


def test_resume_without_a_checkpoint(setup, tmp_path, capsys):
    line = _bad(setup, tmp_path, capsys, setup["data"], "--resume")
    assert "--resume: there is no checkpoint" in line


def test_sigint_leaves_the_last_complete_checkpoint(setup, tmp_path):
    output = str(tmp_path / "model.keras")
    checkpoint = output[:-6] + ".checkpoint.npz"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([REPO, os.environ.get("PYTHONPATH", "")]))
    process = subprocess.Popen(
        [sys.executable, "-m", "keras_deit.cli", "train", setup["data"], output, "--model",
         setup["model"], "--recipe", "light", "--epochs", "1000", "--batch-size", "4"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 240
        while not os.path.exists(checkpoint) and process.poll() is None:
            assert time.time() < deadline, "no epoch finished in time"
            time.sleep(0.2)
        time.sleep(0.5)  # somewhere in a later epoch, possibly inside a save
        process.send_signal(signal.SIGINT)
        try:  # the next batch raises; on two loaded cores that can take a while
            _, err = process.communicate(timeout=300)
        except subprocess.TimeoutExpired:
            process.kill()
            _, err = process.communicate()
            raise AssertionError("no exit within 300 s of Ctrl-C: " + err[-2000:])
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 130, err[-2000:]
    assert "continue with --resume" in err
    assert not [p for p in os.listdir(tmp_path) if ".tmp-" in p]  # no half-written file
    with np.load(checkpoint) as saved:
        assert int(saved["epochs_done"]) >= 1
    assert load_model(output).config.num_labels == 3


MEMORY_SCRIPT = """
import resource, sys
from keras_deit.cli import main
code = main(["train", sys.argv[1], sys.argv[2], "--model", sys.argv[3], "--recipe", "light",
             "--epochs", "1", "--batch-size", "10"])
print(code, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


@pytest.mark.slow
def test_train_peak_memory_does_not_grow_with_the_folder(setup, tmp_path):
    """30 vs 300 images of 256 x 256: held in memory, the 270 more would be ~53 MB decoded."""
    peaks = []
    for count in (30, 300):
        data, rng = tmp_path / f"data{count}", np.random.default_rng(count)
        for c in range(3):
            os.makedirs(data / str(c))
            for i in range(count // 3):
                pixels = rng.integers(0, 256, (8, 8, 3)).astype("uint8")
                Image.fromarray(pixels).resize((256, 256)).save(data / str(c) / f"{i}.jpg")
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([REPO, os.environ.get("PYTHONPATH", "")]))
        out = subprocess.run([sys.executable, "-c", MEMORY_SCRIPT, str(data),
                              str(tmp_path / f"m{count}.keras"), setup["model"]], env=env,
                             capture_output=True, text=True, timeout=240)
        code, peak_kb = (int(v) for v in out.stdout.split()[-2:])
        assert code == 0, out.stderr[-3000:]
        peaks.append(peak_kb)
    assert peaks[1] - peaks[0] < 40_000, peaks


@pytest.mark.slow
def test_two_processes_train_and_only_the_chief_writes(tmp_path):
    """`keras-deit train --num-processes 2` on JAX (whatever this process' backend: several
    processes train on JAX only), each process streaming its own shard."""
    data = _write_folder(tmp_path / "data", per_class=4)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("KERAS_DISTRIBUTION_")}
    env.update(KERAS_BACKEND="jax", PYTHONPATH=os.pathsep.join([REPO, env.get("PYTHONPATH", "")]))
    processes = [subprocess.Popen(
        [sys.executable, "-m", "keras_deit.cli", "train", data, str(out_dir / "m.keras"),
         "--epochs", "1", "--batch-size", "4", "--num-processes", "2", "--process-id", str(i),
         "--coordinator", f"127.0.0.1:{port}", "--join-timeout", "30"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True) for i in range(2)]
    results = finish(processes, timeout=120)
    for code, output in results:
        assert code == 0, output[-3000:]
    assert "data parallel on 2 devices (2 processes, this is 0, jax)" in results[0][1]
    assert "images_per_second" in results[0][1] and "wrote" not in results[1][1]
    # Each process scores every validation image (3: one per class), whole batches or not.
    assert "validation accuracy on 3 images" in results[0][1]
    written = sorted(p for p in os.listdir(out_dir) if not p.endswith(".tensorboard"))
    assert written == ["m.keras", "m.log.csv", "preprocessor_config.json"]
    assert load_model(str(out_dir / "m.keras")).config.num_labels == 3


def test_from_pretrained_of_a_keras_file_checks_the_class_and_options(setup):
    with pytest.raises(ValueError, match="holds a DeiTForImageClassificationWithTeacher, not a "
                                         "DeiTForImageClassification"):
        kd.DeiTForImageClassification.from_pretrained(setup["model"])
    with pytest.raises(ValueError, match=r"takes no options.*\['num_labels'\]"):
        kd.DeiTForImageClassificationWithTeacher.from_pretrained(setup["model"], num_labels=2)
    assert kd.DeiTPreTrainedModel.from_pretrained(setup["model"]).config.num_labels == 3


def test_the_defaults_learn_an_easy_folder(tmp_path, capsys, recwarn):
    """`keras-deit train DATA OUT.keras` with no option: a fine-tune of the built-in model that
    learns three classes of coloured shapes (chance is 1/3)."""
    spec = importlib.util.spec_from_file_location(
        "shapes_folder", os.path.join(REPO, "benchmarks", "shapes_folder.py"))
    shapes = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(shapes)
    data = str(tmp_path / "shapes")
    shapes.write_shapes_folder(data, train_per_class=20, val_per_class=8)
    output = str(tmp_path / "model.keras")
    assert main(["train", data, output]) == 0
    printed = capsys.readouterr().out
    assert ("recipe light, batch 8, 7 steps per epoch, 10 epochs, learning rate 0.0001 "
            "(fine-tuning default), warm-up 1 epoch from 1e-06, cosine to 1e-06") in printed
    accuracy = float(re.search(r"validation accuracy on 24 images: logits ([0-9.]+)",
                               printed).group(1))
    assert accuracy >= 0.75, printed
    # Not a terminal: Keras' one line per epoch, no progress bar and no colour codes.
    assert "\x1b[" not in printed and "Epoch 10/10" in printed
    assert not [w for w in recwarn if "shuffle" in str(w.message)]  # fit's own warning
