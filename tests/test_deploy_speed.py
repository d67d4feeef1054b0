"""benchmarks/deploy_speed.py in its smoke form: two paths, the tests' tiny architecture."""

import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "benchmarks"))
import deploy_speed  # noqa: E402


def test_agreement_and_sizes_helpers(tmp_path):
    import numpy as np

    logits = np.array([[0.0, 1.0], [2.0, 1.0], [0.0, 3.0]])
    assert deploy_speed.top1_agreement(logits, np.array([[0, 1], [0, 1], [0, 1]])) == 2 / 3
    (tmp_path / "a").write_bytes(b"x" * 10)
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b").write_bytes(b"y" * 5)
    assert deploy_speed.file_size(str(tmp_path)) == 15
    photos = deploy_speed.photographs(32)
    assert photos.shape[1:] == (32, 32, 3) and len(photos) >= 2 and photos.dtype == "float32"


def test_quick_mode_measures_each_path_and_prints_the_table(capsys):
    pytest.importorskip("transformers")
    pytest.importorskip("onnxruntime")
    rows = deploy_speed.main(["--quick", "--sizes", "test", "--seconds", "0.1",
                              "--paths", "transformers-onnx,keras-int8"])
    assert [r["path"].split(" ")[0] for r in rows] == ["transformers-onnx", "keras-int8"]
    for row in rows:
        assert row["size"] == "test" and row["batch"] == 1
        assert row["ms"] > 0 and row["img/s"] > 0 and row["MB"] > 0
        assert 0.0 <= row["top-1"] <= 1.0
    # An exported float32 graph of the same weights picks the same classes.
    assert rows[0]["top-1"] == 1.0
    printed = capsys.readouterr().out
    assert "| path | size | batch | median ms | img/s | file MB | top-1 vs float32 |" in printed
    assert printed.count("| test | 1 |") == 2
