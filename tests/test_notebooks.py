"""The notebooks in notebooks/ run top to bottom on the current backend, and are stored clean.

Each notebook is executed by a fresh Jupyter kernel (`python3`, i.e. this interpreter) with
nbclient, in notebooks/ as working directory, importing keras_deit from this checkout, with
this process' KERAS_BACKEND: `KERAS_BACKEND=jax python -m pytest tests/test_notebooks.py` runs
them on JAX. The notebooks use their `SMALL = True` settings (under a minute each on two CPU
cores) and need no network. The committed files must carry no outputs, so that diffs show
code changes only.
"""

import json
import os

import keras
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOKS = os.path.join(ROOT, "notebooks")
NAMES = sorted(name for name in os.listdir(NOTEBOOKS) if name.endswith(".ipynb"))
EXPECTED = [
    "01_inference.ipynb",
    "02_fine_tuning.ipynb",
    "03_distillation.ipynb",
    "04_masked_image_modeling.ipynb",
    "05_export.ipynb",
    "06_training_recipe.ipynb",
]
pytestmark = pytest.mark.slow  # every notebook runs for minutes

CELL_TIMEOUT = 300  # seconds, per cell


def read(name):
    with open(os.path.join(NOTEBOOKS, name), encoding="utf-8") as f:
        return json.load(f)


def test_the_notebooks_are_all_here():
    assert set(EXPECTED) <= set(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_notebook_is_stored_without_outputs(name):
    notebook = read(name)
    code = [cell for cell in notebook["cells"] if cell["cell_type"] == "code"]
    assert code
    dirty = [i for i, cell in enumerate(notebook["cells"]) if cell["cell_type"] == "code"
             and (cell.get("outputs") or cell.get("execution_count") is not None
                  or "execution" in cell.get("metadata", {}))]
    assert not dirty, f"{name}: cells {dirty} hold outputs; clear them before committing"
    assert notebook["metadata"]["kernelspec"]["name"] == "python3"
    # The first code cell holds the size switch.
    assert code[0]["source"] and "".join(code[0]["source"]).startswith("SMALL = True")


@pytest.mark.parametrize("name", NAMES)
def test_notebook_runs_top_to_bottom(name):
    import nbformat
    from nbclient import NotebookClient

    notebook = nbformat.read(os.path.join(NOTEBOOKS, name), as_version=4)
    env = dict(os.environ, KERAS_BACKEND=keras.backend.backend())
    # The kernel imports keras_deit from this checkout, as the other tests do, whatever copy is
    # installed.
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")]))
    # One OpenMP thread unless told otherwise: on a busy machine, PyTorch's OpenMP threads
    # spin-wait for each other, and these tiny models trained 10-20x slower with two threads
    # than with one (TensorFlow and JAX do not use OpenMP and are unaffected).
    env.setdefault("OMP_NUM_THREADS", "1")
    client = NotebookClient(
        notebook,
        kernel_name="python3",
        timeout=CELL_TIMEOUT,
        startup_timeout=120,  # a kernel can be slow to start on a busy machine
        resources={"metadata": {"path": NOTEBOOKS}},  # the working directory
    )
    client.execute(env=env)  # raises CellExecutionError, naming the cell, on the first error

    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert all(cell.execution_count is not None for cell in code)
    errors = [output for cell in code for output in cell.outputs
              if output.output_type == "error"]
    assert not errors
    # The notebook really ran on the backend under test.
    printed = "".join(output.get("text", "") for cell in code for output in cell.outputs
                      if output.output_type == "stream")
    assert f"on {keras.backend.backend()}" in printed
