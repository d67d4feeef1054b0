"""`keras-deit predict` over folders and list files (keras_deit/batch_prediction.py): the
streaming reader, batches, skipped files, .csv / .jsonl rows written as they go, and JAX's
devices; the bundled `deit-digits` model on small PNG and JPEG files."""

import csv
import glob
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

import keras_deit
from keras_deit import batch_prediction
from keras_deit.batch_prediction import expand_inputs
from keras_deit.cli import main
from keras_deit.inference import class_probabilities, load_classifier
from helpers import bomb_png

EXAMPLES = sorted(glob.glob(os.path.join(os.path.dirname(keras_deit.__file__), "data",
                                         "examples", "digit_*.png")))


@pytest.fixture
def folder(tmp_path):
    """6 digits (PNG, one JPEG) in nested folders, a corrupt file, a bomb, files to ignore."""
    root = tmp_path / "images"
    for i, path in enumerate(EXAMPLES[:6]):
        target = root / ("a" if i < 3 else os.path.join("a", "deeper")) / os.path.basename(path)
        os.makedirs(target.parent, exist_ok=True)
        if i == 4:
            Image.open(path).convert("RGB").save(target.with_suffix(".jpg"), quality=95)
        else:
            shutil.copy(path, target)
    (root / "a" / "bad.png").write_bytes(b"not an image")
    bomb_png(root / "bomb.png")
    (root / "notes.txt").write_text("not an image")
    os.makedirs(root / ".hidden")
    shutil.copy(EXAMPLES[0], root / ".hidden" / "x.png")
    return root


def _in_memory(paths, k):
    """The in-memory `predict` path's top-k (labels, probabilities) per file."""
    model, processor = load_classifier("deit-digits")
    pictures = [Image.open(p).convert("RGB") for p in paths]
    probabilities = class_probabilities(model, processor, pictures)
    order = np.argsort(-probabilities, axis=-1)[:, :k]
    return [([str(i) for i in o], row[o]) for o, row in zip(order, probabilities)]


def test_a_folder_is_searched_recursively_in_sorted_order(folder):
    names = [os.path.relpath(p, folder) for p in expand_inputs([str(folder)])]
    # Each folder's files (sorted) before its sub-folders', as torchvision walks.
    deeper = [os.path.basename(p) for p in EXAMPLES[3:6]]
    deeper[1] = deeper[1][:-4] + ".jpg"
    assert names == ["bomb.png", os.path.join("a", "bad.png")] + [
        os.path.join("a", os.path.basename(p)) for p in EXAMPLES[:3]] + [
        os.path.join("a", "deeper", name) for name in deeper]


def test_a_list_file_resolves_relative_paths_and_ignores_comments(folder, tmp_path):
    listing = folder / "a" / "list.txt"
    listing.write_text(f"# digits\n{os.path.basename(EXAMPLES[1])}\n\n  deeper/"
                       f"{os.path.basename(EXAMPLES[3])}\n{EXAMPLES[0]}\n")
    assert expand_inputs([str(listing), EXAMPLES[2]]) == [
        str(folder / "a" / os.path.basename(EXAMPLES[1])),
        str(folder / "a" / "deeper" / os.path.basename(EXAMPLES[3])), EXAMPLES[0], EXAMPLES[2]]


@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
def test_rows_match_in_memory_predict_and_skipped_files_are_named(folder, tmp_path, suffix,
                                                                  capsys):
    output = str(tmp_path / f"rows{suffix}")
    args = ["predict", str(folder), "--top-k", "3", "--batch-size", "3", "--output", output]
    assert main(args) == 0
    if suffix == ".csv":
        with open(output, newline="") as f:
            table = list(csv.reader(f))
        assert table[0] == ["path", "label_1", "prob_1", "label_2", "prob_2", "label_3",
                            "prob_3", "error"]
        rows = [{"path": r[0], "labels": r[1:7:2], "error": r[7],
                 "probabilities": [float(p) for p in r[2:7:2] if p]} for r in table[1:]]
    else:
        with open(output) as f:
            rows = [json.loads(line) for line in f]
    paths = expand_inputs([str(folder)])
    assert [row["path"] for row in rows] == paths
    errors = {os.path.basename(row["path"]) for row in rows if row.get("error")}
    assert errors == {"bad.png", "bomb.png"}
    good = [row for row in rows if not row.get("error")]
    expected = _in_memory([row["path"] for row in good], 3)
    for row, (labels, probabilities) in zip(good, expected):
        assert row["labels"] == labels
        assert np.all(np.diff(row["probabilities"]) <= 0) and sum(row["probabilities"]) <= 1
        np.testing.assert_allclose(row["probabilities"], probabilities, atol=1e-5)
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.splitlines() == [captured.err.strip()]
    assert "6 images classified" in captured.err
    assert "2 skipped (1 unreadable, 1 over the pixel limit)" in captured.err


def test_stdout_lists_every_file_with_skipped_ones_marked(folder, capsys):
    assert main(["predict", str(folder / "a"), "--top-k", "1", "--batch-size", "2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[:2] == [str(folder / "a" / "bad.png"), "  skipped: " + batch_prediction.SKIPPED]
    assert len(lines) == 7 * 2 and lines[3].split()[0] == "1."


def test_an_interrupted_run_keeps_its_completed_batches(folder, tmp_path, monkeypatch):
    calls = []
    original = batch_prediction.batch_probabilities

    def interrupted(*args):
        if calls:
            raise KeyboardInterrupt
        calls.append(1)
        return original(*args)

    monkeypatch.setattr(batch_prediction, "batch_probabilities", interrupted)
    output = str(tmp_path / "rows.jsonl")
    with pytest.raises(KeyboardInterrupt):
        main(["predict", str(folder), "--batch-size", "2", "--output", output])
    with open(output) as f:
        rows = [json.loads(line) for line in f]
    # The first batch: the two skipped files before it, then its two digits.
    assert [row["path"] for row in rows] == expand_inputs([str(folder)])[:4]
    assert [len(row.get("probabilities", [])) for row in rows] == [0, 0, 5, 5]


@pytest.mark.parametrize("args, message", [
    (["{root}/missing.png"], "no such image: {root}/missing.png"),
    (["{root}/empty"], "the folder {root}/empty holds no images"),
    (["{root}/list.lst"], "{root}/list.lst line 3 names gone.png, which is not a file"),
    (["{root}/a.png", "--output", "{root}/rows.tsv"], "--output must end in .csv or .jsonl"),
    (["{root}/a.png", "--output", "{root}/old.csv"], "old.csv exists: pass --overwrite"),
    (["{root}/bad.png"], "cannot read any of the 1 images"),
])
def test_bad_inputs_are_one_line_errors(args, message, tmp_path, capsys):
    root = str(tmp_path)
    os.makedirs(tmp_path / "empty")
    shutil.copy(EXAMPLES[0], tmp_path / "a.png")
    (tmp_path / "list.lst").write_text("a.png\n# gone\ngone.png\n")
    (tmp_path / "old.csv").write_text("kept")
    (tmp_path / "bad.png").write_text("not an image")
    code = None
    try:
        code = main(["predict", *[a.replace("{root}", root) for a in args]])
    except SystemExit as e:  # argparse's own errors
        code = e.code
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message.replace("{root}", root) in err[0]
    assert (tmp_path / "old.csv").read_text() == "kept"


@pytest.mark.slow
def test_two_jax_devices_give_the_probabilities_of_one(folder, tmp_path):
    """On JAX the batches run data parallel over every visible device (here 2 host devices);
    a last partial batch (7 images, batches of 3) is padded."""
    rows = {}
    for devices in (1, 2):
        output = str(tmp_path / f"rows{devices}.jsonl")
        env = dict(os.environ, KERAS_BACKEND="jax",
                   XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
                   PYTHONPATH=os.pathsep.join(filter(None, [
                       os.path.dirname(os.path.dirname(keras_deit.__file__)),
                       os.environ.get("PYTHONPATH")])))
        result = subprocess.run(
            [sys.executable, "-m", "keras_deit.cli", "predict", str(folder), "--batch-size",
             "3", "--output", output], env=env, capture_output=True, text=True, timeout=240)
        assert result.returncode == 0, result.stderr[-2000:]
        assert (" on 2 devices" in result.stderr) == (devices == 2)
        with open(output) as f:
            rows[devices] = [json.loads(line) for line in f]
    assert [row["path"] for row in rows[1]] == [row["path"] for row in rows[2]]
    for one, two in zip(rows[1], rows[2]):
        assert one.get("labels") == two.get("labels")
        np.testing.assert_allclose(one.get("probabilities", []), two.get("probabilities", []),
                                   atol=1e-5)


def test_a_model_with_its_preprocessing_inside_reads_raw_images(folder, tmp_path):
    """Such a model takes raw images of any size: they stream one at a time, and give the
    in-memory `predict`'s probabilities."""
    from keras_deit.model_preprocessing import with_preprocessing

    model, processor = load_classifier("deit-digits")
    processor.resample = int(Image.Resampling.BILINEAR)  # the Keras layer's resizes
    path = str(tmp_path / "inside.keras")
    with_preprocessing(model, processor).save(path)
    output = str(tmp_path / "rows.jsonl")
    assert main(["predict", str(folder / "a" / "deeper"), "--model", path, "--output",
                 output]) == 0
    with open(output) as f:
        rows = [json.loads(line) for line in f]
    inside, processor = load_classifier(path)
    pictures = [Image.open(row["path"]).convert("RGB") for row in rows]
    expected = class_probabilities(inside, processor, pictures)
    assert len(rows) == 3
    for row, probabilities in zip(rows, expected):
        order = np.argsort(-probabilities)[:5]
        assert row["labels"] == [str(i) for i in order]
        np.testing.assert_allclose(row["probabilities"], probabilities[order], atol=1e-5)


def test_the_stream_follows_a_channels_first_processor(folder):
    from keras_deit.training.image_folder import processor_stream

    _, processor = load_classifier("deit-digits")
    processor.data_format = "channels_first"
    paths = expand_inputs([str(folder / "a" / "deeper")])
    pixel_values, indices = next(iter(processor_stream(paths, [0, 1, 2], processor, 3).dataset))
    assert tuple(pixel_values.shape) == (3, 3, 32, 32) and list(np.asarray(indices)) == [0, 1, 2]
