"""TensorFlow's C++ start-up logs, hidden from the `keras-deit` commands.

Importing TensorFlow prints ~8 lines to stderr on a CPU machine (oneDNN, "Could not find cuda
drivers", CPU features, `E0000 ... failed call to cuInit`), even with the JAX or PyTorch
backend when tf.data is used. Most are written by shared-library initializers before
TensorFlow reads `TF_CPP_MIN_LOG_LEVEL`, so that variable alone cannot hide them: the backend
is imported with stderr captured, and every line that is not such a log line is written back.

No Keras here: this runs before the backend is imported.
"""

import contextlib
import importlib.util
import os
import re
import sys
import tempfile

# An absl/glog line ("I0000 00:00:1796.123    9384 port.cc:153] ..."), absl's notice before its
# initialization, and the continuation line of the CPU-feature message.
_TF_LOG_LINE = re.compile(
    r"[IWEF]\d{4} [\d:.]+\s+\d+ [\w.]+:\d+\]"
    r"|WARNING: All log messages before absl::InitializeLog\(\) is called"
    r"|To enable the following instructions: "
)


def is_tf_log_line(line):
    """Whether `line` (one line of stderr) is one of TensorFlow's C++ log lines."""
    return bool(_TF_LOG_LINE.match(line))


def import_backend(verbose=False, with_tensorflow=False):
    """Imports Keras (and TensorFlow too when `with_tensorflow` and it is installed, as for the
    commands that use tf.data or write TensorFlow files) with TensorFlow's C++ logs hidden.

    The logs stay when `verbose` (the commands' `--verbose`), when the user set
    `TF_CPP_MIN_LOG_LEVEL` (their choice wins), or when the backend is imported already.
    """
    wanted = ["keras"]
    if with_tensorflow and importlib.util.find_spec("tensorflow") is not None:
        wanted.append("tensorflow")
    if verbose or "TF_CPP_MIN_LOG_LEVEL" in os.environ or all(m in sys.modules for m in wanted):
        for module in wanted:
            importlib.import_module(module)
        return
    # The logs TensorFlow writes after start-up (cuInit's error among them) obey this one.
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
    with _stderr_without_tf_logs():
        for module in wanted:
            importlib.import_module(module)


@contextlib.contextmanager
def _stderr_without_tf_logs():
    """Captures file descriptor 2 (C++ writes there directly) and writes back what is not a
    TensorFlow log line, also when the import fails."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            text = captured.read().decode("utf-8", errors="replace")
            kept = [line for line in text.splitlines(keepends=True) if not is_tf_log_line(line)]
            sys.stderr.write("".join(kept))
            sys.stderr.flush()
