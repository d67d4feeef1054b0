"""SavedModel: written with `tf.saved_model.save` around the serving function, run and
described with `tf.saved_model.load` (see the package docstring for why not Keras' exporter)."""

from keras_deit.export.common import _SIGNATURE, _serving_function

def _write_saved_model(model, preprocessing, spec, path):
    import tensorflow as tf

    signature = tf.TensorSpec(spec["shape"], spec["dtype"], name=spec["name"])
    module = tf.Module()
    # The tf.Variables behind the Keras variables, tracked once. Keras' ExportArchive saves both
    # (`variables` and `_all_variables`), which doubles the size on disk: 48.6 MB instead of
    # 23.9 MB for deit-tiny.
    module.model_variables = [v.value for v in model.variables]
    module.serve = tf.function(_serving_function(model, preprocessing),
                               input_signature=[signature])
    tf.saved_model.save(module, path,
                        signatures={_SIGNATURE: module.serve.get_concrete_function()})


def run_saved_model(path, inputs):
    """The SavedModel's serving signature on `inputs` (reloaded with tf.saved_model.load)."""
    import tensorflow as tf

    function = tf.saved_model.load(path).signatures[_SIGNATURE]
    (name,) = function.structured_input_signature[1]
    return {k: v.numpy() for k, v in function(**{name: tf.constant(inputs)}).items()}


def describe_saved_model(path):
    """({input name: (shape, dtype)}, [output names]) as the SavedModel's signature declares them."""
    import tensorflow as tf

    function = tf.saved_model.load(path).signatures[_SIGNATURE]
    inputs = {name: (tuple(spec.shape.as_list()), spec.dtype.name)
              for name, spec in function.structured_input_signature[1].items()}
    return inputs, sorted(function.structured_outputs)
