"""benchmarks/pipeline_speed.py in its smoke form: ours only (no timm), tiny JPEGs."""

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "benchmarks"))
import pipeline_speed  # noqa: E402


def test_make_jpegs_writes_class_folders(tmp_path):
    from PIL import Image

    root = pipeline_speed.make_jpegs(str(tmp_path), 6, height=10, width=12, classes=3)
    assert sorted(os.listdir(root)) == ["c0", "c1", "c2"]
    files = [os.path.join(root, c, f) for c in os.listdir(root) for f in os.listdir(
        os.path.join(root, c))]
    assert len(files) == 6 and Image.open(files[0]).size == (12, 10)


def test_quick_mode_measures_ours_from_files_and_memory(capsys):
    rows = pipeline_speed.main(["--quick", "--no-rand-augment"])
    assert [r["source"] for r in rows] == ["files", "memory"]
    for row in rows:
        assert row["ours"] > 0 and row["timm"] is None and row["ratio"] is None
    printed = capsys.readouterr().out
    assert "| source | keras-deit img/s | timm img/s | ratio |" in printed
    assert "| files |" in printed and "| memory |" in printed
