"""Files that appear whole or not at all: a hidden temporary path beside the destination,
renamed into place by the caller only once complete.

The temporary name carries the writer's process id (`.model.keras.tmp-1234-ab12cd34.keras`),
so a later run can tell the leftovers of a killed writer (its process is gone) from a file
another process is still writing, and removes them. SIGTERM during the write removes the
temporary file before the process exits; SIGKILL cannot be caught, which is what the cleanup
on the next run is for.
"""

import contextlib
import os
import re
import secrets
import shutil
import signal
import threading


def _pattern(name, suffix):
    return re.compile(rf"^\.{re.escape(name)}\.tmp-(\d+)-[0-9a-f]+{re.escape(suffix)}$")


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def _remove(path):
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    elif os.path.lexists(path):
        os.remove(path)


def remove_stale(dest, suffix=""):
    """Removes the temporary files for `dest` left by writers that no longer run; returns
    their names."""
    folder, name = os.path.split(os.path.abspath(dest))
    pattern = _pattern(name, suffix)
    removed = []
    for entry in os.listdir(folder) if os.path.isdir(folder) else []:
        match = pattern.match(entry)
        if match and int(match[1]) != os.getpid() and not _alive(int(match[1])):
            _remove(os.path.join(folder, entry))
            removed.append(entry)
    return removed


@contextlib.contextmanager
def _removed_on_sigterm(path):
    """While the block runs, SIGTERM exits through it (so `finally` clauses remove `path`)."""
    if threading.current_thread() is not threading.main_thread():
        yield  # handlers can only be set from the main thread; the next run cleans up
        return

    def terminate(signum, frame):
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def temporary_path(dest, suffix=""):
    """A temporary path beside `dest` (same folder, so `os.replace` is atomic), ending with
    `suffix` (Keras picks its format from the name). Whatever is still at the path when the
    block ends, normally or by an exception or SIGTERM, is removed; stale ones of killed
    earlier runs are removed first."""
    remove_stale(dest, suffix)
    folder, name = os.path.split(os.path.abspath(dest))
    tmp = os.path.join(folder, f".{name}.tmp-{os.getpid()}-{secrets.token_hex(4)}{suffix}")
    try:
        with _removed_on_sigterm(tmp):
            yield tmp
    finally:
        _remove(tmp)
