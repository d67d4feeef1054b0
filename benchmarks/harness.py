"""What the benchmark scripts share: timing a call, and running a script on one Keras backend.

Each script measures in child processes, one per backend (the backend is fixed when Keras is
imported): the parent runs `script --child ...` with KERAS_BACKEND set, and the child prints
its figures as one JSON line.
"""

import json
import os
import subprocess
import sys
import time


def per_second(step, count, seconds=None, warmup=2):
    """Calls per second of `step()`, after `warmup` calls: at least `count` calls, and calls
    until `seconds` have passed if given."""
    for _ in range(warmup):
        step()
    calls, start = 0, time.perf_counter()
    while calls < count or (seconds is not None and time.perf_counter() - start < seconds):
        step()
        calls += 1
    return calls / (time.perf_counter() - start)


def run_child(script, backend, *args):
    """Runs `python script --child *args` on `backend`; returns the JSON of its last line.

    Exits with the end of the child's stderr if it fails.
    """
    env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="3")
    result = subprocess.run([sys.executable, script, "--child", *args], env=env,
                            capture_output=True, text=True)
    if result.returncode:
        sys.exit(f"{os.path.basename(script)} on {backend} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])
