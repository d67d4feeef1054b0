"""The projections of the encoder and heads: plain `keras.layers.Dense` layers (applied with
`keras_deit.kernels.dense`), and how their owners load files written before they existed."""

import keras

from keras_deit.keras_internals import skip_next_load


def projection(units, initializer_range, dtype, name, use_bias=True):
    """A `keras.layers.Dense(units)` with DeiT's truncated-normal kernel initializer.

    Being Keras' own layer, it takes `model.quantize(...)`, `enable_lora(...)`, dtype policies
    (including a `DTypePolicyMap`, looked up by the layer's path) and layout maps.

    Args:
        units: int, output width.
        initializer_range: float, stddev of the kernel initializer.
        dtype: the owner's dtype policy (or policy map).
        name: str, the last part of the variable paths (`.../name/kernel`, `.../name/bias`).
        use_bias: bool.
    """
    return keras.layers.Dense(
        units,
        use_bias=use_bias,
        kernel_initializer=keras.initializers.TruncatedNormal(stddev=initializer_range),
        dtype=dtype,
        name=name,
    )


def load_legacy_variables(store, layers, owner):
    """Loads a weights store written when `owner` held its projections as raw variables.

    Files saved before the projections were `Dense` sublayers (keras-deit 0.1.0, including the
    shipped deit-digits model) list them under the owner, in the order kernel, bias of each
    layer in `layers`. The values go into the sublayers, which are then told to skip their own,
    empty, entry of that file. A store of today's layout holds nothing under the owner.

    Args:
        store: the owner's entry of a Keras weights store (`len` and `store["0"]`, ...).
        layers: the owner's built `Dense` sublayers, in their legacy order.
        owner: the owner layer, for the error message.
    """
    count = len(store)
    if not count:
        return
    targets = [v for layer in layers for v in layer.weights]  # kernel, then bias
    if count != len(targets):
        raise ValueError(
            f"Layer {owner.name!r} expected {len(targets)} variables in a keras-deit 0.1.0 "
            f"file, but received {count}. The file was written by another architecture: "
            "rebuild the model from that file's own config."
        )
    for i, variable in enumerate(targets):
        variable.assign(store[str(i)])
    for layer in layers:
        skip_next_load(layer)
