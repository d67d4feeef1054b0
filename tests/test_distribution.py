"""keras_deit.training.distribution: several devices and processes train like one (same global batch),
and every fault ends in one clear line. The multi-device and multi-process runs happen in
subprocesses (tests/distributed_worker.py): device counts and `jax.distributed` are fixed per
process. Every subprocess is killed, with its process group, on a timeout."""

import os
import signal
import subprocess
import sys

import keras
import numpy as np
import pytest

from helpers import finish, free_port
from keras_deit.training import distribution

WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "distributed_worker.py")
ROOT = os.path.dirname(os.path.dirname(WORKER))
ENV_KEYS = (distribution.ENV_ADDRESSES, distribution.ENV_NUM_PROCESSES,
            distribution.ENV_PROCESS_ID, "TF_CONFIG", "XLA_FLAGS")
# float32 on 2 steps x 2 epochs: reductions split over devices round differently.
ATOL = 1e-5


@pytest.fixture
def clean_env(monkeypatch):
    for key in ENV_KEYS:
        monkeypatch.delenv(key, raising=False)
    return monkeypatch


def _env(**changes):
    env = {k: v for k, v in os.environ.items() if k not in ENV_KEYS}
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    env.update({k: str(v) for k, v in changes.items()})
    return env


def _start(args, env):
    return subprocess.Popen([sys.executable, WORKER, *map(str, args)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)


def _run(args, env, timeout=90):
    code, output = finish([_start(args, env)], timeout)[0]
    assert code == 0, output[-3000:]
    return output


def _cluster_env(port, process_id, num_processes=2):
    return _env(KERAS_BACKEND=keras.backend.backend(),
                KERAS_DISTRIBUTION_JOB_ADDRESSES=f"127.0.0.1:{port}",
                KERAS_DISTRIBUTION_NUM_PROCESSES=num_processes,
                KERAS_DISTRIBUTION_PROCESS_ID=process_id)


@pytest.fixture(scope="module")
def one_device(tmp_path_factory):
    """Losses and weights of the worker on one device, one process."""
    out = str(tmp_path_factory.mktemp("one") / "run.npz")
    output = _run([out], _env(KERAS_BACKEND=keras.backend.backend()))
    assert f"one device ({keras.backend.backend()})" in output
    return dict(np.load(out))


def _assert_same_training(run, reference):
    assert run["loss"].shape == reference["loss"].shape == (2,)
    np.testing.assert_allclose(run["loss"], reference["loss"], atol=ATOL)
    assert np.max(np.abs(run["weights"] - reference["weights"])) < ATOL


def test_two_devices_train_like_one(one_device, tmp_path, clean_env):
    backend = keras.backend.backend()
    if backend == "torch":
        # Keras 3.15 has no PyTorch distribution: one device, said on the start line.
        cluster = distribution.configure()
        assert (cluster.num_devices, cluster.num_processes, cluster.is_chief) == (1, 1, True)
        assert cluster.describe() == "one device (torch)"
        return
    out = str(tmp_path / "run.npz")
    if backend == "jax":
        env = _env(KERAS_BACKEND="jax", XLA_FLAGS="--xla_force_host_platform_device_count=2")
        output = _run([out], env)
    else:
        output = _run([out, 2], _env(KERAS_BACKEND="tensorflow"))
    assert f"data parallel on 2 devices (1 process, {backend})" in output
    _assert_same_training(dict(np.load(out)), one_device)


def test_two_processes_train_like_one(one_device, tmp_path, clean_env):
    backend = keras.backend.backend()
    if backend != "jax":
        with pytest.raises(ValueError, match="use KERAS_BACKEND=jax.*num_processes=2"):
            distribution.configure("127.0.0.1:1234", num_processes=2, process_id=0)
        return
    out = str(tmp_path / "run.npz")
    port = free_port()
    results = finish([_start([out], _cluster_env(port, i)) for i in range(2)])
    for code, output in results:
        assert code == 0, output[-3000:]
    assert "data parallel on 2 devices (2 processes, this is 1, jax)" in results[1][1]
    chief, other = dict(np.load(out)), dict(np.load(str(tmp_path / "run.1.npz")))
    # Only the chief writes OUT; the other wrote its own file for this comparison only.
    assert sorted(os.listdir(tmp_path)) == ["run.1.npz", "run.npz"]
    np.testing.assert_array_equal(chief["loss"], other["loss"])
    np.testing.assert_array_equal(chief["weights"], other["weights"])
    _assert_same_training(chief, one_device)


def test_tf_config_multi_worker_is_refused(clean_env):
    clean_env.setenv("TF_CONFIG", '{"cluster": {"worker": ["a:1", "b:2"]}, '
                                  '"task": {"type": "worker", "index": 0}}')
    if keras.backend.backend() == "tensorflow":
        with pytest.raises(ValueError, match=r"keras#20585.*num_processes=2"):
            distribution.configure()
    else:  # TF_CONFIG means nothing to the other backends.
        assert distribution.configure().num_processes == 1


@pytest.mark.parametrize("kwargs, env, message", [
    (dict(coordinator="a:1,b:2,c:3", num_processes=2, process_id=0), {},
     r"3 job addresses for 2 processes.*job_addresses='a:1,b:2,c:3'"),
    (dict(coordinator="a:1", num_processes=2, process_id=2), {},
     r"in \[0, 1\]\. Received: process_id=2"),
    (dict(coordinator="a:1", num_processes=2, process_id=-1), {},
     r"Received: process_id=-1"),
    (dict(coordinator="a:1", num_processes=2), {}, "give each its index with --process-id"),
    (dict(num_processes=2, process_id=1), {}, "need the coordinator's HOST:PORT"),
    (dict(coordinator="a", num_processes=2, process_id=1), {}, "HOST:PORT. Received"),
    (dict(num_processes=0), {}, "Received: num_processes=0"),
    ({}, {distribution.ENV_NUM_PROCESSES: "two"},
     "KERAS_DISTRIBUTION_NUM_PROCESSES must be an integer. Received"),
    ({}, {distribution.ENV_ADDRESSES: "a:1,b:2", distribution.ENV_PROCESS_ID: "5"},
     r"in \[0, 1\]\. Received: process_id=5"),
])
def test_bad_cluster_settings_name_the_value(clean_env, kwargs, env, message):
    for key, value in env.items():
        clean_env.setenv(key, value)
    with pytest.raises(ValueError, match=message) as error:
        distribution.configure(**kwargs)
    assert "\n" not in str(error.value)


def test_one_process_by_default(clean_env):
    cluster = distribution.configure()
    assert (cluster.num_processes, cluster.process_index, cluster.is_chief) == (1, 0, True)
    assert cluster.local_batch_size(8) == 8
    with cluster.scope():
        assert keras.ops.convert_to_numpy(keras.ops.ones((2,))).tolist() == [1.0, 1.0]


def test_local_batch_splits_the_global_batch():
    cluster = distribution.Cluster("jax", num_devices=4, num_processes=2, process_index=1)
    assert cluster.local_batch_size(8) == 4
    assert not cluster.is_chief
    assert cluster.describe() == "data parallel on 4 devices (2 processes, this is 1, jax)"
    with pytest.raises(ValueError, match="over 4 devices. Received: batch_size=6"):
        cluster.local_batch_size(6)


def test_silent_coordinator_is_a_bounded_connection_error():
    port = free_port()  # Nothing listens there.
    with pytest.raises(ConnectionError, match=rf"127.0.0.1:{port} did not answer within 1 s"):
        distribution._wait_for_coordinator(f"127.0.0.1:{port}", 1)


def test_a_killed_process_stops_the_others(tmp_path):
    """Process 1 is killed mid-run: JAX's heartbeat (5 s in the worker) ends process 0 with
    its "another task died" line instead of leaving it in a collective forever."""
    out, port = str(tmp_path / "run.npz"), free_port()
    # A 0.2 s pause after each step: the run lasts well past the kill. The workers run on JAX
    # whatever this process' backend (several processes train on JAX only).
    processes = [_start([out, 1, 30, 0.2], dict(_cluster_env(port, i), KERAS_BACKEND="jax"))
                 for i in range(2)]
    try:
        for line in processes[1].stdout:
            if line.startswith("training"):
                break
        os.killpg(processes[1].pid, signal.SIGKILL)
        (code, output), _ = finish(processes, timeout=60)
    finally:
        finish(processes, timeout=1)
    assert code == -signal.SIGABRT, output[-3000:]
    assert "Task 1 heartbeat timeout" in output and "another task died" in output
    assert not os.path.exists(out)
