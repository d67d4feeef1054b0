"""The installed layout: a wheel adds one top-level name, `keras_deit`, with the repository's
`conversion/` folder inside it as `keras_deit.conversion` (pyproject.toml's package-dir
mapping); a source checkout on `sys.path` reads the same modules through the stand-in
`keras_deit/conversion/__init__.py`. No framework import: this runs in a second."""

import os
import shutil
import subprocess
import sys
import zipfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _wheel(tmp_path):
    """Builds the wheel from a copy of the sources (the build writes build/ and *.egg-info)."""
    source = tmp_path / "src"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(os.path.join(ROOT, name), source / name)
    for name in ("keras_deit", "conversion"):
        shutil.copytree(os.path.join(ROOT, name), source / name,
                        ignore=shutil.ignore_patterns("__pycache__", "*.keras", "*.h5"))
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", str(tmp_path / "dist"), str(source)],
        check=True, capture_output=True, timeout=120,
    )
    (wheel,) = (tmp_path / "dist").glob("keras_deit-*.whl")
    return zipfile.ZipFile(wheel)


def test_the_wheel_adds_one_top_level_name(tmp_path):
    wheel = _wheel(tmp_path)
    names = wheel.namelist()
    (top_level,) = [n for n in names if n.endswith(".dist-info/top_level.txt")]
    assert wheel.read(top_level).decode().split() == ["keras_deit"]
    assert {n.split("/")[0] for n in names if ".dist-info/" not in n} == {"keras_deit"}
    # The conversion modules, under the namespace; the stand-in is replaced by the real one.
    conversion = sorted(n for n in names if n.startswith("keras_deit/conversion/"))
    assert conversion == sorted(
        f"keras_deit/conversion/{f}" for f in os.listdir(os.path.join(ROOT, "conversion"))
        if f.endswith(".py")
    )
    with open(os.path.join(ROOT, "conversion", "__init__.py"), "rb") as f:
        assert wheel.read("keras_deit/conversion/__init__.py") == f.read()


def test_a_source_checkout_reads_the_conversion_folder():
    code = ("import keras_deit.conversion as c, keras_deit.conversion.readers as r; "
            "print(c.__path__[0]); print(r.__file__)")
    env = dict(os.environ, PYTHONPATH=ROOT)
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, check=True,
                         capture_output=True, text=True, timeout=60).stdout.split()
    folder = os.path.join(ROOT, "conversion")
    assert out == [folder, os.path.join(folder, "readers.py")]
