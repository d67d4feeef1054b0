"""One process of the distribution tests (run by tests/test_distribution.py, never collected).

    python tests/distributed_worker.py OUT.npz [LOGICAL_CPUS [JOIN_TIMEOUT [STEP_SLEEP]]]

Trains a tiny DeiT (no dropout, no drop path) for 2 epochs of 2 steps at a global batch of 8
on fixed data, inside `keras_deit.training.distribution.configure()`'s cluster (read from the
KERAS_DISTRIBUTION_* variables), each process feeding its own rows of every global batch.
The chief writes OUT.npz (losses, weights, describe()); the others write OUT.<index>.npz.
"""

import os
import sys
import time

import numpy as np

GLOBAL_BATCH, SAMPLES, EPOCHS = 8, 16, 2


def main(out, logical_cpus=1, join_timeout=30, step_sleep=0.0):
    if os.environ.get("KERAS_BACKEND") == "tensorflow" and logical_cpus > 1:
        import tensorflow as tf

        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * logical_cpus)
    import keras

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from helpers import tiny_config

    import keras_deit as kd
    from keras_deit.training.distribution import configure

    cluster = configure(initialization_timeout=join_timeout, heartbeat_timeout=5)
    print(cluster.describe(), flush=True)
    rng = np.random.RandomState(0)
    x = rng.rand(SAMPLES, 32, 32, 3).astype("float32")
    y = (np.arange(SAMPLES) % 5).astype("int32")
    local = cluster.local_batch_size(GLOBAL_BATCH)
    # This process's rows of every global batch, in order.
    rows = np.concatenate([np.arange(start + cluster.process_index * local,
                                     start + (cluster.process_index + 1) * local)
                           for start in range(0, SAMPLES, GLOBAL_BATCH)])
    with cluster.scope():
        keras.utils.set_random_seed(0)
        model = kd.DeiTForImageClassification(tiny_config(
            hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, drop_path_rate=0.0))
        model.compile(optimizer=keras.optimizers.AdamW(1e-3))
        # STEP_SLEEP > 0: a long run (many slow epochs) for the fault tests to kill.
        epochs = 1000 if step_sleep else EPOCHS
        pause = keras.callbacks.LambdaCallback(on_batch_end=lambda batch, logs=None: time.sleep(step_sleep))
        print("training", flush=True)
        history = model.fit(x[rows], y[rows], batch_size=local, epochs=epochs, shuffle=False,
                            verbose=0, callbacks=[pause])
    weights = np.concatenate([np.asarray(keras.ops.convert_to_numpy(v.value)).ravel()
                              for v in model.weights])
    path = out if cluster.is_chief else f"{out[:-4]}.{cluster.process_index}.npz"
    np.savez(path, loss=np.asarray(history.history["loss"]), weights=weights,
             describe=np.array(cluster.describe()))


if __name__ == "__main__":
    numbers = [float(a) for a in sys.argv[2:]]
    main(sys.argv[1], *[int(n) for n in numbers[:2]], *numbers[2:])
