"""Every Keras internal keras-deit uses (keras_deit/keras_internals.py), one test each: a Keras
release that renames or changes one fails here, by name, rather than somewhere downstream."""

import keras
import numpy as np

from keras_deit import keras_internals as ki
from helpers import max_abs_diff, tiny_config
import keras_deit as kd


def _dense():
    layer = keras.layers.Dense(3, name="proj")
    layer.build((None, 4))
    return layer


def test_data_layer_is_keras_tf_data_safe_base():
    assert issubclass(ki.DataLayer, keras.layers.Layer)
    # The base of Keras' own tf.data-safe preprocessing layers, with their backend switch.
    assert issubclass(keras.layers.RandAugment, ki.DataLayer)
    assert hasattr(ki.DataLayer(), "backend")


def test_scope_checks_are_keras_own():
    assert ki.in_stateless_scope is not None and ki.get_autocast_scope is not None
    assert ki.scope_may_change_values() is False
    with keras.StatelessScope():
        assert ki.scope_may_change_values() is True


def test_dense_kernel_is_the_kernel_property():
    layer = _dense()
    assert "_kernel" in vars(layer)  # the attribute itself, not the fallback
    assert ki.dense_kernel(layer) is layer.kernel

    class Public:  # a layer without `_kernel`: the public property
        kernel = "k"

    assert ki.dense_kernel(Public()) == "k"


def test_stored_value_is_the_variable_value():
    variable = keras.Variable(np.arange(6.0, dtype="float32").reshape(2, 3))
    assert "_value" in vars(variable)
    assert max_abs_diff(ki.stored_value(variable), variable.value) == 0.0


def test_flatten_layers_reaches_nested_sublayers():
    model = kd.DeiTModel(tiny_config(num_hidden_layers=1), add_pooling_layer=False)
    names = [layer.name for layer in ki.flatten_layers(model)]
    assert names.count("qkv") == 1 and names.count("fc1") == 1 and names.count("fc2") == 1
    assert model not in ki.flatten_layers(model)
    assert ki.flatten_layers(model, include_self=True)[0] is model


def test_call_built_matches_call():
    layer = _dense()
    x = np.ones((2, 4), "float32")
    assert max_abs_diff(ki.call_built(layer, x), layer(x)) == 0.0


def test_skip_next_load_skips_one_load_only():
    layer = _dense()
    ones = [np.ones((4, 3), "float32"), np.ones((3,), "float32")]
    before = keras.ops.convert_to_numpy(layer.kernel).copy()
    ki.skip_next_load(layer)
    layer.load_own_variables({"0": ones[0], "1": ones[1]})
    assert max_abs_diff(layer.kernel, before) == 0.0  # skipped
    layer.load_own_variables({"0": ones[0], "1": ones[1]})
    assert max_abs_diff(layer.kernel, ones[0]) == 0.0  # the class method is back


def test_loss_scaling_is_keras_own_and_one_replica_leaves_the_loss():
    # Keras' own (not the fallback); the division under MirroredStrategy is checked by
    # tests/test_distribution.py (two devices train like one).
    assert ki.scale_loss_for_distribution.__module__ == "keras.src.losses.loss"
    assert ki.unscale_loss_for_distribution.__module__ == "keras.src.losses.loss"
    loss = keras.ops.convert_to_tensor(3.0)
    assert float(keras.ops.convert_to_numpy(ki.scale_loss_for_distribution(loss))) == 3.0
    assert float(keras.ops.convert_to_numpy(ki.unscale_loss_for_distribution(loss))) == 3.0


def test_tensorflow_ops_compute_with_tensorflow_on_every_backend():
    import tensorflow as tf

    tf_ops = ki.tensorflow_ops()
    out = tf_ops.numpy.clip(tf_ops.convert_to_tensor([-1.0, 2.0]), 0.0, 1.0)
    assert isinstance(out, tf.Tensor) and out.numpy().tolist() == [0.0, 1.0]
