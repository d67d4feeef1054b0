"""Files that appear whole or not at all: a hidden temporary path beside the destination,
renamed into place only once complete (`replacing`, or the caller with `temporary_path`).

The one home of atomic writes: model saving, conversion, downloads and export staging.

The temporary name carries the writer's process id (`.model.keras.tmp-1234-ab12cd34.keras`),
so a later run can tell the leftovers of a killed writer (its process is gone) from a file
another process is still writing, and removes them. SIGTERM during the write removes the
temporary file before the process exits; SIGKILL cannot be caught, which is what the cleanup
on the next run is for.
"""

import contextlib
import errno
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


@contextlib.contextmanager
def replacing(dest, overwrite=True, needed_bytes=0):
    """Writes `dest` whole or not at all: yields a temporary path beside it (same suffix, so
    Keras reads the format from the name) and renames it over `dest` once the block succeeds.

    Checked before anything is written: `dest` exists and `overwrite` is False
    (FileExistsError), or the disk holds less than `needed_bytes` (OSError ENOSPC: some
    writers, h5py among them, crash on a full disk instead of raising). A full disk during
    the write is one OSError naming the file; the temporary file never stays behind.
    """
    dest = os.fspath(dest)
    if os.path.lexists(dest) and not overwrite:
        raise FileExistsError(f"{dest} exists: pass overwrite=True to replace it.")
    folder, name = os.path.split(os.path.abspath(dest))
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"cannot write {dest}: the folder {folder} does not exist.")
    free = shutil.disk_usage(folder).free
    if needed_bytes and free < needed_bytes:
        raise OSError(errno.ENOSPC, f"not enough space to write {dest}: it needs about "
                                    f"{needed_bytes / 2**20:.1f} MiB and {folder} has "
                                    f"{free / 2**20:.1f} MiB free; free some space or write "
                                    "elsewhere")
    suffix = next((s for s in (".weights.h5", ".keras", ".h5") if name.endswith(s)), "")
    with temporary_path(dest, suffix) as tmp:
        try:
            yield tmp
        except OSError as e:
            if e.errno == errno.ENOSPC:
                raise OSError(errno.ENOSPC, f"No space left on device while writing {dest}; "
                                            "nothing was written: free some space and save "
                                            "again") from None
            raise
        os.replace(tmp, dest)
