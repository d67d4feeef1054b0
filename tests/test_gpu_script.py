"""benchmarks/gpu.sh --dry-run: the accelerator suite's steps on CPU, the tests' tiny model."""

import os
import subprocess
import sys

SCRIPT = os.path.join(os.path.dirname(__file__), "..", "benchmarks", "gpu.sh")


def test_dry_run_writes_one_results_file(tmp_path):
    import keras

    out = tmp_path / "results.md"
    backend = keras.backend.backend()
    env = dict(os.environ, PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"])
    result = subprocess.run(["bash", SCRIPT, "--dry-run", "--out", str(out),
                             "--backends", backend], env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    lines = out.read_text().splitlines()
    assert lines[0] == "# gpu_suite results (dry run on CPU)"
    rows = [line for line in lines if line.startswith(f"| {backend} |")]
    # float32 and mixed bfloat16, each with the fused and the eager attention.
    cells = {tuple(c.strip() for c in row.split("|")[3:6]) for row in rows}
    assert cells == {("test", p, a) for p in ("float32", "mixed_bfloat16")
                     for a in ("sdpa", "eager")}
    for row in rows:
        infer, train = (float(c) for c in row.split("|")[6:8])
        assert infer > 0 and train > 0
    assert "CPU only" in rows[0]


def test_without_a_device_it_refuses_and_says_so(tmp_path):
    env = dict(os.environ, PATH="/usr/bin:/bin")  # no nvidia-smi on this path
    result = subprocess.run(["bash", SCRIPT, "--out", str(tmp_path / "r.md")], env=env,
                            capture_output=True, text=True)
    assert result.returncode == 2 and "no CUDA device" in result.stderr
    assert not (tmp_path / "r.md").exists()
