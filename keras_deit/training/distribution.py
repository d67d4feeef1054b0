"""Data-parallel training on many devices and hosts, through Keras' own engines.

`configure` reads the cluster (arguments, else `KERAS_DISTRIBUTION_JOB_ADDRESSES`,
`KERAS_DISTRIBUTION_NUM_PROCESSES`, `KERAS_DISTRIBUTION_PROCESS_ID`), joins it and returns a
`Cluster`; build, compile and fit the model inside `cluster.scope()`:

    JAX         `keras.distribution.initialize` (several processes), then
                `keras.distribution.DataParallel` over every device of every process. Each
                process feeds its own `global_batch // num_processes` rows per step
                (`auto_shard_dataset=False`): `cluster.process_index` picks the shard.
    TensorFlow  `tf.distribute.MirroredStrategy` over the visible GPUs (or logical CPUs) of one
                process. Multi-worker is refused: Keras 3's `fit` fails under
                `MultiWorkerMirroredStrategy` (keras-team/keras#20585).
    PyTorch     one device, one process (Keras 3.15 has no PyTorch distribution).

The batch size is always the global batch (all devices of all processes together), so the
learning-rate rule of the recipe (lr x batch / 512) follows it unchanged. Only the chief
(process 0) writes files.
"""

import contextlib
import dataclasses
import functools
import json
import os
import socket
import time

import keras

ENV_ADDRESSES = "KERAS_DISTRIBUTION_JOB_ADDRESSES"
ENV_NUM_PROCESSES = "KERAS_DISTRIBUTION_NUM_PROCESSES"
ENV_PROCESS_ID = "KERAS_DISTRIBUTION_PROCESS_ID"


@dataclasses.dataclass(frozen=True)
class Cluster:
    """Where this process trains.

    Attributes:
        backend: the Keras backend name.
        num_devices: devices (replicas) over all processes; each gets
            `global_batch // num_devices` rows of every step.
        num_processes: processes in the job (1 unless JAX multi-process).
        process_index: this process, in [0, num_processes); 0 is the chief.
        strategy: the `tf.distribute.Strategy` on TensorFlow with several devices, else None.
        distribution: the `keras.distribution.Distribution` on JAX with several devices, else
            None.
    """

    backend: str
    num_devices: int = 1
    num_processes: int = 1
    process_index: int = 0
    strategy: object = None
    distribution: object = None

    @property
    def is_chief(self):
        """True in process 0: the only one that writes checkpoints, the model and logs."""
        return self.process_index == 0

    def scope(self):
        """The context to build, compile and fit the model in (a no-op on one device)."""
        if self.strategy is not None:
            return self.strategy.scope()
        if self.distribution is not None:
            return self.distribution.scope()
        return contextlib.nullcontext()

    def local_batch_size(self, global_batch):
        """Rows this process feeds per step: `global_batch // num_processes`.

        Raises a ValueError unless `global_batch` splits evenly over the devices.
        """
        if global_batch % self.num_devices:
            raise ValueError(f"--batch-size is the global batch and must split evenly over "
                             f"{self.num_devices} devices. Received: batch_size={global_batch}")
        return global_batch // self.num_processes

    def describe(self):
        """The start line's words, e.g. "data parallel on 8 devices (2 processes, this is 0)"."""
        if self.num_devices == 1 and self.num_processes == 1:
            return f"one device ({self.backend})"
        processes = (f"{self.num_processes} processes, this is {self.process_index}"
                     if self.num_processes > 1 else "1 process")
        return f"data parallel on {self.num_devices} devices ({processes}, {self.backend})"


def _int_or_none(name, value):
    if value is None or value == "":
        return None
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"{name} must be an integer. Received: {name}={value!r}") from None


def _cluster_settings(coordinator, num_processes, process_id):
    """(addresses, num_processes, process_id) from the arguments, else the environment;
    checked. `addresses` is None on a single process."""
    addresses = coordinator if coordinator is not None else os.environ.get(ENV_ADDRESSES)
    if num_processes is None:
        num_processes = _int_or_none(ENV_NUM_PROCESSES, os.environ.get(ENV_NUM_PROCESSES))
    if process_id is None:
        process_id = _int_or_none(ENV_PROCESS_ID, os.environ.get(ENV_PROCESS_ID))
    if num_processes is None:
        num_processes = len(addresses.split(",")) if addresses else 1
    if num_processes < 1:
        raise ValueError(f"the number of processes must be at least 1. Received: "
                         f"num_processes={num_processes}")
    if num_processes == 1:
        return None, 1, 0
    if not addresses:
        raise ValueError(f"{num_processes} processes need the coordinator's HOST:PORT: pass "
                         f"--coordinator or set {ENV_ADDRESSES}.")
    listed = addresses.split(",")
    if len(listed) > 1 and len(listed) != num_processes:
        raise ValueError(f"{len(listed)} job addresses for {num_processes} processes: list one "
                         f"address per process, or the coordinator's only. Received: "
                         f"job_addresses={addresses!r}")
    if any(":" not in address for address in listed):
        raise ValueError(f"job addresses are HOST:PORT. Received: job_addresses={addresses!r}")
    if process_id is None:
        raise ValueError(f"{num_processes} processes: give each its index with --process-id or "
                         f"{ENV_PROCESS_ID} (0 is the coordinator).")
    if not 0 <= process_id < num_processes:
        raise ValueError(f"the process id must be in [0, {num_processes - 1}]. Received: "
                         f"process_id={process_id}")
    return addresses, num_processes, process_id


def _tf_config_workers():
    """The number of workers TF_CONFIG declares (0 when unset)."""
    raw = os.environ.get("TF_CONFIG")
    if not raw:
        return 0
    try:
        cluster = json.loads(raw).get("cluster", {})
    except (ValueError, AttributeError):
        raise ValueError(f"TF_CONFIG is not a JSON object. Received: TF_CONFIG={raw!r}") from None
    return sum(len(cluster.get(role, [])) for role in ("chief", "worker"))


def _wait_for_coordinator(address, timeout):
    """Waits until `address` (HOST:PORT) accepts connections; a ConnectionError after
    `timeout` seconds (JAX itself would abort the process with a stack trace)."""
    host, port = address.rsplit(":", 1)
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection((host.strip("[]"), int(port)), timeout=5).close()
            return
        except OSError as e:
            if time.monotonic() > deadline:
                raise ConnectionError(f"the coordinator {address} did not answer within "
                                      f"{timeout} s ({e}): start process 0 there, or fix "
                                      "--coordinator / " + ENV_ADDRESSES) from None
            time.sleep(0.5)


def _join_jax(addresses, num_processes, process_id, initialization_timeout, heartbeat_timeout):
    """`keras.distribution.initialize`, with bounded timeouts: Keras 3.15 passes none to
    `jax.distributed.initialize`, whose defaults wait 5 minutes for a silent coordinator."""
    import jax

    initialize = jax.distributed.initialize
    jax.distributed.initialize = functools.partial(
        initialize, initialization_timeout=initialization_timeout,
        heartbeat_timeout_seconds=heartbeat_timeout)
    try:
        keras.distribution.initialize(addresses, num_processes, process_id)
    except Exception as e:  # XlaRuntimeError and friends: one line naming the fix.
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConnectionError(
            f"process {process_id} of {num_processes} could not join the coordinator "
            f"{addresses.split(',')[0]} within {initialization_timeout} s ({reason[:200]}): "
            "start every process with the same coordinator and process count") from None
    finally:
        jax.distributed.initialize = initialize


def configure(coordinator=None, num_processes=None, process_id=None, seed=0,
              initialization_timeout=120, heartbeat_timeout=60):
    """Joins the cluster (when there is one) and returns this process's `Cluster`.

    Call once per process, before any model is built.

    Args:
        coordinator: "HOST:PORT" of process 0, or every process's address comma-separated
            (as `keras.distribution.initialize`'s `job_addresses`); default
            `KERAS_DISTRIBUTION_JOB_ADDRESSES`.
        num_processes: default `KERAS_DISTRIBUTION_NUM_PROCESSES`, else one per address, else 1.
        process_id: this process's index, in [0, num_processes); default
            `KERAS_DISTRIBUTION_PROCESS_ID`.
        seed: the Keras seed, set before joining so every process initializes the same weights.
        initialization_timeout: seconds to wait for all processes to join (JAX).
        heartbeat_timeout: seconds after which a silent process is deemed dead: JAX then ends
            every other process of the job (SIGABRT, "another task died"), none hangs (JAX).

    Returns:
        A `Cluster`.
    """
    backend = keras.backend.backend()
    addresses, num_processes, process_id = _cluster_settings(coordinator, num_processes,
                                                             process_id)
    if backend == "tensorflow":
        return _configure_tensorflow(num_processes)
    if backend == "jax":
        return _configure_jax(addresses, num_processes, process_id, seed,
                              initialization_timeout, heartbeat_timeout)
    if num_processes > 1:
        raise ValueError(f"the {backend} backend trains in one process (Keras 3 has no "
                         f"{backend} distribution): use KERAS_BACKEND=jax. Received: "
                         f"num_processes={num_processes}")
    return Cluster(backend)


def _configure_tensorflow(num_processes):
    import tensorflow as tf

    workers = _tf_config_workers()
    if num_processes > 1 or workers > 1:
        raise ValueError(f"multi-worker training on TensorFlow fails in Keras 3's fit "
                         f"(keras-team/keras#20585): use KERAS_BACKEND=jax for several processes. "
                         f"Received: num_processes={max(num_processes, workers)}")
    devices = tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("CPU")
    if len(devices) < 2:
        return Cluster("tensorflow")
    strategy = tf.distribute.MirroredStrategy([d.name for d in devices])
    return Cluster("tensorflow", num_devices=strategy.num_replicas_in_sync, strategy=strategy)


def _configure_jax(addresses, num_processes, process_id, seed, initialization_timeout,
                   heartbeat_timeout):
    import jax

    if num_processes > 1:
        # Keras seeds every process alike only when no seed is set; set ours first.
        keras.utils.set_random_seed(seed)
        if not jax.distributed.is_initialized():
            if process_id != 0:
                _wait_for_coordinator(addresses.split(",")[0], initialization_timeout)
            _join_jax(addresses, num_processes, process_id, initialization_timeout,
                      heartbeat_timeout)
    devices = jax.devices()
    if len(devices) < 2:
        return Cluster("jax")
    distribution = keras.distribution.DataParallel(devices=devices, auto_shard_dataset=False)
    return Cluster("jax", num_devices=len(devices), num_processes=jax.process_count(),
                   process_index=jax.process_index(), distribution=distribution)

