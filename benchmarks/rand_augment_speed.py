"""Throughput of `keras_deit.training.augmentation.rand_augment()` (timm's rand-m9-mstd0.5-inc1 in
TensorFlow ops) on 224x224 uint8 images in a `tf.data` map (num_parallel_calls=AUTOTUNE),
beside an identity map and `keras.layers.RandAugment`, then each op alone at magnitude 9
(`--ops`); images/s and process CPU-ms per image (the machine may be shared: CPU time is the
figure to compare).

    PYTHONPATH=$PWD KERAS_BACKEND=tensorflow python benchmarks/rand_augment_speed.py [--ops]
"""

import sys
import time

import keras
import numpy as np
import tensorflow as tf

from keras_deit.training.augmentation import rand_augment, rand_augment_op
from keras_deit.training.rand_augment import OP_NAMES

IMAGES = np.random.default_rng(0).integers(0, 256, (64, 224, 224, 3), dtype=np.uint8)


def measure(fn, repeats=8):
    dataset = tf.data.Dataset.from_tensor_slices(IMAGES).repeat(repeats)
    dataset = dataset.map(fn, num_parallel_calls=tf.data.AUTOTUNE)
    for _ in dataset.take(64):  # traces (and compiles) the map function
        pass
    cpu, wall = time.process_time(), time.perf_counter()
    count = sum(1 for _ in dataset)
    return count / (time.perf_counter() - wall), (time.process_time() - cpu) / count * 1e3


keras_layer = keras.layers.RandAugment(value_range=(0, 255), num_ops=2, factor=(0.813, 0.987),
                                       seed=0)
runs = [("identity", lambda image: image), ("rand_augment()", rand_augment(seed=0)),
        ("keras.layers.RandAugment", lambda image: keras_layer(tf.cast(image, "float32")))]
if "--ops" in sys.argv:
    runs += [(name, lambda image, name=name: rand_augment_op(image, name, 9))
             for name in OP_NAMES]
for name, fn in runs:
    rate, cpu_ms = measure(fn, repeats=8 if name == "rand_augment()" else 3)
    print(f"{name:26s} {rate:8.0f} images/s {cpu_ms:7.2f} CPU-ms/image", flush=True)
