"""Every use of a Keras internal in keras-deit, each in one function, tested in
tests/test_keras_internals.py so that a Keras release that changes one fails there, loudly,
by name. Where the public API gives the same answer at no cost, it is the fallback.

Tested with Keras 3.15 (README, "Dependencies"). The internals, and why each is used:

- `keras.src...DataLayer`: the base of Keras' own tf.data-safe preprocessing layers (switches
  to TensorFlow ops inside tf.data on every backend); Keras exports no public one.
- `DynamicBackend("tensorflow")`: the namespace of TensorFlow's implementation of Keras' ops
  (`.numpy`, `.image`, `.random`, ...), which a DataLayer uses inside tf.data; our
  augmentation computes with it outside a layer too (crop windows, erasing boxes).
- `in_stateless_scope` / `get_autocast_scope`: whether a variable's stored tensor is what
  `Variable.value` would return (the PyTorch fast path of `kernels.read`); Keras exports no way
  to ask whether a scope is open. Fallback: "a scope may be open" (read `.value`).
- `Dense._kernel`, `Variable._value`: the stored kernel and tensor, read without the
  properties' per-call checks (~4 us and ~2 us on PyTorch). Fallback: `kernel`, `value`.
- `Layer._flatten_layers`: every layer of a model, nested ones included, in a stable order;
  Keras exports no recursive listing.
- `Layer.call` on a built sublayer, from inside its owner's `call`: skips `Layer.__call__`'s
  bookkeeping (~45 us per layer on PyTorch), correct only because the owner's `__call__`
  opened the name, autocast and training scopes already.
- An instance attribute shadowing `load_own_variables` once, for files whose variables a
  sublayer's owner has loaded already (`layers/projection.py`).
- `scale_loss_for_distribution` / `unscale_loss_for_distribution`: the division by the
  replicas in sync that Keras' `Loss` applies, for the losses our `compute_loss` builds itself
  (under MirroredStrategy they would otherwise sum each replica's gradient). Keras exports no
  public one. Fallback: no distribution strategy, so scale by 1.
"""

# Keras exports no public base for layers that switch to TensorFlow ops inside tf.data on
# every backend (its own RandAugment, MixUp, ... derive from this one).
from keras.src.layers.preprocessing.data_layer import DataLayer  # noqa: F401  (used elsewhere)
from keras.src.utils.backend_utils import DynamicBackend


def tensorflow_ops():
    """Keras' ops as TensorFlow implements them (`.numpy`, `.image`, `.random`, `.cast`, ...),
    whatever the configured backend: what a DataLayer computes with inside tf.data."""
    return DynamicBackend("tensorflow")

try:
    from keras.src.losses.loss import scale_loss_for_distribution, unscale_loss_for_distribution
except ImportError:  # moved: correct without a tf.distribute strategy (1 replica)
    def scale_loss_for_distribution(value):
        return value

    unscale_loss_for_distribution = scale_loss_for_distribution

try:
    from keras.src.backend.common.stateless_scope import in_stateless_scope
    from keras.src.backend.common.variables import get_autocast_scope
except ImportError:  # moved: assume a scope may be open, so `Variable.value` is read
    in_stateless_scope = get_autocast_scope = None


def scope_may_change_values():
    """Whether a stateless or autocast scope is open, in which `Variable.value` differs from
    the variable's stored tensor; True when Keras no longer tells."""
    if in_stateless_scope is None:
        return True
    return in_stateless_scope() or get_autocast_scope() is not None


def dense_kernel(layer):
    """The kernel variable of a plain `keras.layers.Dense` (no LoRA, not quantized): what its
    `kernel` property returns, without the property's quantization-mode checks."""
    try:
        return layer._kernel
    except AttributeError:
        return layer.kernel


def stored_value(variable):
    """A Keras variable's stored backend tensor (None before it is initialized), without
    `Variable.value`'s scope checks; callers decide when no scope would change it."""
    try:
        return variable._value
    except AttributeError:
        return variable.value


def flatten_layers(model, include_self=False):
    """Every layer of `model`, sublayers of sublayers included, in Keras' tracking order."""
    return list(model._flatten_layers(include_self=include_self))


def call_built(layer, *args, **kwargs):
    """Runs a built sublayer's `call` from inside its owner's `call`, skipping
    `Layer.__call__` (whose scopes the owner's call has opened already)."""
    return layer.call(*args, **kwargs)


def skip_next_load(layer):
    """Makes `layer.load_own_variables` a no-op for the next call only (Keras' loader calls it
    on every layer; an instance attribute shadows the class method, and deleting it restores
    the method)."""

    def skip(store):
        del layer.__dict__["load_own_variables"]

    layer.__dict__["load_own_variables"] = skip
