"""The child process: a model on one backend is saved as a `.keras` file and rebuilt by
`python -m keras_deit.export --worker` on the backend that writes the format."""

import json
import os
import subprocess
import sys
import threading
import time

from keras_deit.export.artifacts import _build_artifact
from keras_deit.export.common import (
    ExportError, MissingDependencyError, _disk_full_message, _is_disk_full,
)

def _build_in_child(model, preprocessing, jobs, backend, stage):
    """Saves `model` to `stage` and has a child process with `backend` rebuild it and write
    `jobs`."""
    import keras

    model_path = os.path.join(stage, ".export-model.keras")
    model.save(model_path)
    request = {
        "model": model_path,
        "preprocessing": (None if preprocessing is None
                          else keras.saving.serialize_keras_object(preprocessing)),
        "jobs": [{k: job[k] for k in ("format", "quantize", "spec", "path", "data_path",
                                      "pixels_path") if k in job} for job in jobs],
    }
    request_path = os.path.join(stage, ".export-request.json")
    response_path = os.path.join(stage, ".export-response.json")
    with open(request_path, "w", encoding="utf-8") as f:
        json.dump(request, f)
    # keras_deit/export/worker.py -> the folder holding keras_deit.
    package_root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = dict(os.environ, KERAS_BACKEND=backend, KERAS_DEIT_EXPORT_PARENT=str(os.getpid()))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_root, env.get("PYTHONPATH")]))
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    process = subprocess.run(
        [sys.executable, "-m", "keras_deit.export", "--worker", request_path, response_path],
        env=env, capture_output=True, text=True,
    )
    formats = ", ".join(sorted({job["format"] for job in jobs}))
    if not os.path.isfile(response_path):
        tail = " | ".join(process.stderr.strip().splitlines()[-5:])
        raise ExportError(f"the {backend} child process building the {formats} file(s) died "
                          f"(exit code {process.returncode}): {tail}")
    with open(response_path, encoding="utf-8") as f:
        response = json.load(f)
    if response.get("error"):
        kind, message = response["error"]["type"], response["error"]["message"]
        if kind in ("ImportError", "ModuleNotFoundError", "MissingDependencyError"):
            raise MissingDependencyError(f"the {backend} child process: {message}")
        if kind in ("ValueError", "ExportError"):  # already worded for the user
            raise (ValueError if kind == "ValueError" else ExportError)(message)
        raise ExportError(f"{kind} in the {backend} child process building the {formats} "
                          f"file(s): {message}")


def _exit_with_parent():
    """Ends this child process when its parent is gone (killed, even by SIGKILL): an
    orphaned worker would build on for nothing. SIGTERM to the parent kills the child
    directly (`subprocess.run` does on any exception). The parent names itself in
    `KERAS_DEIT_EXPORT_PARENT`: a parent killed while this child was still importing Keras is
    caught too."""
    parent = int(os.environ.get("KERAS_DEIT_EXPORT_PARENT") or os.getppid())

    def watch():
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(1)

    threading.Thread(target=watch, daemon=True).start()


def _worker(request_path, response_path):
    """The child: rebuilds the model from the request and writes the artifact."""
    import keras

    import keras_deit.models  # noqa: F401  registers the classes the saved model names

    _exit_with_parent()
    try:
        with open(request_path, encoding="utf-8") as f:
            request = json.load(f)
        model = keras.saving.load_model(request["model"])
        preprocessing = request["preprocessing"]
        if preprocessing is not None:
            preprocessing = keras.saving.deserialize_keras_object(preprocessing)
        for job in request["jobs"]:
            _build_artifact(model, preprocessing, job)
        response = {"error": None}
    except Exception as e:  # Reported to the parent, which raises it there.
        if _is_disk_full(e):
            e = ExportError(_disk_full_message(request_path))
        response = {"error": {"type": type(e).__name__, "message": str(e) or type(e).__name__}}
    with open(response_path, "w", encoding="utf-8") as f:
        json.dump(response, f)


def main(argv=None):
    """`python -m keras_deit.export --worker REQUEST RESPONSE` (started by `_build_in_child`)."""
    import argparse

    worker = argparse.ArgumentParser(prog="python -m keras_deit.export")
    worker.add_argument("--worker", nargs=2, required=True, metavar=("REQUEST", "RESPONSE"))
    _worker(*worker.parse_args(argv).worker)
