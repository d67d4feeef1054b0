"""`DeiTPreTrainedModel`, the base of every DeiT model: the bundled config and options,
`get_config` / `from_config`, `from_pretrained`, compile and loss routing, atomic saving, and
the Keras-native methods (quantization, LoRA, layouts). The input and label checks live in
`keras_deit.checks`; the graphs in `backbone`, `classification` and `masked_image_modeling`.
"""

import os
import re

import keras
import numpy as np
from keras import ops
# Keras' own per-replica loss scaling (its `Loss` applies it; a custom `compute_loss` must).
from keras_deit.keras_internals import scale_loss_for_distribution

from keras_deit import atomic, keras_native, kernels, model_preprocessing
from keras_deit.checks import TrainerEntryChecks, check_model_images
from keras_deit.config import DeiTConfig
from keras_deit.conversion import loading, writers
from keras_deit.losses import (
    _is_integer_dtype,
    as_logits_loss,
    check_classification_labels,
    dataset_spec,
    is_dataset,
)

DATA_FORMATS = ("channels_last", "channels_first")


def as_config(config):
    """`config` (a `DeiTConfig` or the dict of its fields) as a `DeiTConfig`."""
    if isinstance(config, DeiTConfig):
        return config
    if isinstance(config, dict):
        return DeiTConfig.from_dict(config)
    raise ValueError(
        "`config` must be a DeiTConfig (or its dict form). "
        f"Received: config of type {type(config).__name__}"
    )


# The DeiT model classes by name, filled by `keras_deit.models` once all are defined: a
# checkpoint names its class, and `from_pretrained` on the base class builds that one.
MODEL_CLASSES = {}


class DeiTPreTrainedModel(TrainerEntryChecks, keras.Model):
    """Behaviour shared by all DeiT models: the bundled config, input checks, loading.

    Attributes:
        config: the `DeiTConfig` the model was built from.
        data_format: "channels_last" (inputs (batch, H, W, C)) or "channels_first" (HF's NCHW).
        interpolate_pos_encoding: whether inputs of other sizes are accepted.
    """

    # Options every model takes, with their defaults; subclasses add their own.
    _options = dict(
        output_hidden_states=False,
        output_attentions=False,
        interpolate_pos_encoding=False,
        data_format="channels_last",
        head_mask=None,
        attn_implementation=None,
        include_preprocessing=None,
    )

    # Keyword arguments Keras' Model takes that our constructors pass on.
    _model_kwargs = ("name", "trainable")

    @staticmethod
    def _take_options(kwargs):
        """Pops the options every model takes (`_options`, with their defaults) out of a task
        model's `kwargs`: the one place they are declared, documented on `DeiTModel`."""
        return {key: kwargs.pop(key, default)
                for key, default in DeiTPreTrainedModel._options.items()}

    def __init__(self, *args, dtype=None, **kwargs):
        unknown = sorted(set(kwargs) - {"inputs", "outputs", *self._model_kwargs})
        if unknown:
            raise ValueError(
                f"{type(self).__name__} got unknown keyword arguments {unknown}; it takes the "
                f"options {sorted(self._options)}, dtype, name and trainable."
            )
        super().__init__(*args, **kwargs)
        # The functional Model drops `dtype`; the layers were built with `layer_policy(dtype)`.
        self._dtype_policy = keras_native.layer_policy(dtype)
        self._pending_quantization = keras_native.pending_quantization(dtype)

    @classmethod
    def from_pretrained(cls, source, **kwargs):
        """Builds this model and fills it from a checkpoint.

        `source` is a local HF folder (`config.json` plus `model.safetensors`,
        `pytorch_model.bin` or `tf_model.h5`), an original `.pth` file, a preset name or a hub
        id; see `keras_deit.conversion.load_pretrained` for the keyword arguments (`strict`,
        `num_labels`, model options, ...): the body lives there, beside the format readers.
        """
        if str(source).endswith(".keras"):  # a saved keras_deit model, e.g. `keras-deit train`'s
            return _load_keras_file(cls, source, kwargs)
        # The base class builds the checkpoint's own class.
        return loading.load_pretrained(
            MODEL_CLASSES if cls is DeiTPreTrainedModel else cls, source, **kwargs
        )

    def save_pretrained(self, path, layout="transformers", overwrite=False, image_processor=None):
        """Writes the model for PyTorch users; `from_pretrained(path)` reads it back exactly.

        `layout="transformers"`: the folder `path` with `config.json`, `model.safetensors` and
        `preprocessor_config.json` (`image_processor`, by default the checkpoint's own or the
        DeiT recipe) that transformers' DeiT classes load (ViT ones without a distillation
        token). `layout="timm"`: the `.pth` file `path`, `{"model": state_dict}` in timm's
        names, as the original releases (needs torch). An existing `path` is refused unless
        `overwrite=True`; the output appears whole or not at all. See `keras_deit.conversion.writers`.
        """
        return writers.save_pretrained(self, path, layout=layout, overwrite=overwrite,
                                       image_processor=image_processor)

    def predict_step(self, *args):
        # `predict` outputs never take a gradient: on PyTorch, inference mode (see
        # `kernels.inference_scope`) is cheaper than the `no_grad` Keras opens. `*args`: JAX's
        # trainer passes (state, data), the others (data).
        with kernels.inference_scope():
            return super().predict_step(*args)

    # ---- input checks (keras_deit.checks) -------------------------------------------------
    def call(self, inputs, training=None, mask=None, **kwargs):
        # Checked here rather than in __call__: JAX's predict/fit reach `call` directly.
        self._check_inputs(inputs)
        return super().call(inputs, training=training, mask=mask, **kwargs)

    def _check_entry(self, method, arguments):
        """The trainer entry points' check (see `TrainerEntryChecks`): inputs, then the
        targets and validation data of the methods that train or evaluate."""
        x = arguments.get("x")
        self._check_inputs(x)
        if method not in ("predict", "predict_on_batch"):
            self._check_training_data(x, arguments)
        if is_dataset(x) and not getattr(self, "include_preprocessing", None):
            arguments["x"] = model_preprocessing.watch_for_raw_images(self, x)

    def _check_inputs(self, inputs):
        """Names the problem and the fix before Keras' generic shape error can."""
        raw_images = bool(getattr(self, "include_preprocessing", None))
        if not raw_images:
            pixel_values = inputs.get("pixel_values") if isinstance(inputs, dict) else inputs
            model_preprocessing.warn_if_raw_images(self, pixel_values)
        check_model_images(inputs, self.config, self.data_format, self.interpolate_pos_encoding,
                           raw_images=raw_images)

    # ---- training -------------------------------------------------------------------------
    # The output a single loss and a list of metrics apply to when the labels are one array.
    _primary_output = None

    def compile(self, optimizer="rmsprop", loss=None, loss_weights=None, metrics=None,
                weighted_metrics=None, **kwargs):
        """`keras.Model.compile`, with the loss and metrics aimed at the task's main output.

        - `loss=None` (an optimizer alone): the model trains with `default_loss`, the task
          models' own loss (`DeiTModel` has none and needs a loss).
        - A single loss, and a list of metrics, apply to the main output (`logits` of the
          classifiers, `reconstruction` of SimMIM) when the labels are one array, so
          `compile("adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])` works.
        - A dict (`{"cls_logits": ..., "distillation_logits": ...}`) applies per output, each
          output getting the same labels unless `y` is a dict keyed by output name.
        - Keras' cross-entropy names read logits here (see `losses.as_logits_loss`), because
          the heads output logits.
        Other arguments as in `keras.Model.compile`.
        """
        # Tuples, not lists: Keras wraps lists set on a model into tracked containers.
        self._loss_outputs = _dict_keys(loss)
        self._metric_outputs = _dict_keys(metrics, weighted_metrics)
        self._has_compiled_loss = loss is not None
        super().compile(
            optimizer=optimizer,
            loss=as_logits_loss(loss),
            loss_weights=loss_weights,
            metrics=metrics,
            weighted_metrics=weighted_metrics,
            **kwargs,
        )

    def default_loss(self, x, y, y_pred, sample_weight=None):
        """The loss used when the model is compiled without one; None for `DeiTModel`.

        Args:
            x: the inputs. y: the targets (None for SimMIM). y_pred: the output dict.
            sample_weight: optional (batch,) weights.

        Returns:
            A float32 scalar, or None when the model has no task loss.
        """
        return None

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        """`default_loss` when compiled without a loss, else the compiled loss on the main
        output (see `compile`); plus any `add_loss` / regularization losses."""
        if not getattr(self, "_has_compiled_loss", False):
            loss = self.default_loss(x, y, y_pred, sample_weight)
            if loss is not None:
                for extra in self.losses:
                    loss = loss + ops.sum(ops.cast(extra, "float32"))
                # Under tf.distribute each replica's gradients are summed: divide by replicas.
                return scale_loss_for_distribution(loss)
        y, y_pred = self._route_targets(y, y_pred, getattr(self, "_loss_outputs", None))
        return super().compute_loss(x, y, y_pred, sample_weight, training=training)

    def compute_metrics(self, x, y, y_pred, sample_weight=None):
        """Updates the compiled metrics on the main output (or per output for a dict)."""
        y, y_pred = self._route_targets(y, y_pred, getattr(self, "_metric_outputs", None))
        return super().compute_metrics(x, y, y_pred, sample_weight)

    def _route_targets(self, y, y_pred, keys):
        """Pairs the targets with the outputs they belong to (see `compile`)."""
        if not isinstance(y_pred, dict) or y is None:
            return y, y_pred
        if isinstance(y, dict):
            return y, {key: y_pred[key] for key in y}
        if keys:
            return {key: y for key in keys}, {key: y_pred[key] for key in keys}
        if self._primary_output is not None:
            return y, y_pred[self._primary_output]
        return y, y_pred

    def _check_training_data(self, x, arguments):
        """Checks the targets (and validation data) before Keras runs a step."""
        y = arguments.get("y")
        if not getattr(self, "_has_compiled_loss", False) and (
            type(self).default_loss is DeiTPreTrainedModel.default_loss
        ):
            raise ValueError(
                f"{type(self).__name__} has no task loss of its own: compile it with one, "
                "`model.compile(optimizer, loss=...)`, or train a task model "
                "(DeiTForImageClassification, DeiTForMaskedImageModeling, ...)."
            )
        if is_dataset(x):
            # Shapes and dtypes only, from the dataset's spec: a spec has no values to read.
            x, y = dataset_spec(x)
            self._check_inputs(x)
        elif x is not None and not isinstance(x, dict) and not hasattr(x, "shape"):
            return  # Generators and PyDatasets are checked inside the step.
        self._check_targets(x, y)
        validation = arguments.get("validation_data")
        if is_dataset(validation):
            validation = dataset_spec(validation)
        if isinstance(validation, (tuple, list)) and validation:
            self._check_inputs(validation[0])
            self._check_targets(validation[0], validation[1] if len(validation) > 1 else None)

    def _check_targets(self, x, y):
        """Raises a ValueError on targets the task loss cannot use; a no-op by default."""

    def _check_labels(self, x, y):
        """The classifiers' target check: class ids in range, shapes that fit the head."""
        has_loss = getattr(self, "_has_compiled_loss", False)
        if y is None:
            if not has_loss:
                raise ValueError(
                    f"{type(self).__name__} trains on labels: call `fit(images, labels)` (or "
                    "give a dataset of (images, labels) pairs). Received: y=None."
                )
            return
        if isinstance(y, dict) or not hasattr(y, "shape") or not hasattr(y, "dtype"):
            return
        problem_type = self.config.problem_type
        if has_loss:
            # A loss of the user's: only integer labels of one id per image are known to be
            # class ids (integer one-hot rows may suit e.g. categorical cross-entropy).
            if (not _is_integer_dtype(y.dtype) or self.config.num_labels == 0
                    or tuple(y.shape)[1:] not in ((), (1,))):
                return
            problem_type = problem_type or "single_label_classification"
        pixel_values = x.get("pixel_values") if isinstance(x, dict) else x
        shape = getattr(pixel_values, "shape", None)
        batch = tuple(shape)[0] if shape is not None and len(shape) else None
        check_classification_labels(
            y, self.config.num_labels, problem_type,
            batch_size=batch if isinstance(batch, int) else None,
        )

    # ---- Keras-native: quantization, LoRA, layouts ----------------------------------------
    def quantize(self, mode=None, config=None, filters=None, **kwargs):
        """`keras.Model.quantize` on every projection: "int8", "int4" or "float8".

        Reaches the fused q/k/v, the attention output, both MLP layers and the heads (all
        `keras.layers.Dense`); `filters` (a regex on layer paths such as
        "encoder/layer_0/attention/qkv", a list of them, or a callable) limits it.
        The quantized model saves and loads as `.keras` / `.weights.h5` (`get_config` stores a
        `DTypePolicyMap`). GPTQ and AWQ need calibration data and are refused.
        """
        keras_native.check_quantization_mode(mode, self)
        select = keras_native.quantization_filter(filters)
        super().quantize(mode, config=config, filters=select, **kwargs)

    def enable_lora(self, rank, target_names=None, train_heads=True):
        """Adds LoRA adapters and freezes the rest of the model.

        Args:
            rank: int, the rank of each adapter (Keras' `Dense.enable_lora`, alpha = rank).
            target_names: names of the projections to adapt, among "qkv" (the fused query /
                key / value), "proj", "fc1", "fc2"; default ("qkv",), the attention
                projections keras-hub adapts (query and value live in our fused kernel).
            train_heads: bool, keep the task heads (classifiers, pooler, SimMIM decoder)
                trainable: a new head must learn. False leaves only the LoRA weights trainable.

        Saving writes the merged kernels (Keras merges LoRA into `Dense` weights on save), so
        a saved file reloads as a plain model; `merge_lora()` gives that model in memory.
        """
        return keras_native.enable_lora(self, rank, target_names, train_heads)

    def merge_lora(self):
        """A new model of this class with the LoRA adapters folded into the kernels."""
        return keras_native.merge_lora(self)

    @staticmethod
    def get_layout_map(device_mesh, model_parallel_dim_name="model",
                       data_parallel_dim_name="batch"):
        """A `keras.distribution.LayoutMap` for `keras.distribution.ModelParallel`; see
        `keras_deit.keras_native.get_layout_map`."""
        return keras_native.get_layout_map(
            device_mesh, model_parallel_dim_name, data_parallel_dim_name
        )

    # ---- saving ---------------------------------------------------------------------------
    def save(self, filepath, overwrite=True, zipped=None, **kwargs):
        """`keras.Model.save`, written atomically: a killed or failed save (a full disk among
        them, checked before writing) leaves any previous file as it was and no partial one."""
        if zipped is False or not isinstance(filepath, (str, os.PathLike)):
            return super().save(filepath, overwrite=overwrite, zipped=zipped, **kwargs)
        with atomic.replacing(filepath, overwrite, self._saved_bytes()) as tmp:
            super().save(tmp, overwrite=True, zipped=zipped, **kwargs)

    def save_weights(self, filepath, overwrite=True, max_shard_size=None):
        """`keras.Model.save_weights`, written atomically as `save`."""
        if max_shard_size is not None or not isinstance(filepath, (str, os.PathLike)):
            return super().save_weights(filepath, overwrite=overwrite,
                                        max_shard_size=max_shard_size)
        with atomic.replacing(filepath, overwrite, self._saved_bytes()) as tmp:
            super().save_weights(tmp, overwrite=True)

    def _saved_bytes(self):
        """About the size of the saved weights (and optimizer state), plus 1 MiB of headroom."""
        variables = list(self.weights)
        if getattr(self, "optimizer", None) is not None and self.optimizer.built:
            variables += list(self.optimizer.variables)
        return sum(int(np.prod(v.shape)) * _itemsize(v.dtype) for v in variables) + 2**20

    # ---- serialization --------------------------------------------------------------------
    def get_config(self):
        config = {"name": self.name, "trainable": self.trainable, "config": self.config.to_dict()}
        config.update({key: getattr(self, key) for key in self._options})
        config["dtype"] = keras_native.dtype_config(self)
        return config

    @classmethod
    def from_config(cls, config):
        # `trainable` is applied after the graph exists: passed to the constructor, Keras sets
        # it before the sublayers are tracked, and they would stay trainable.
        config = dict(config)
        trainable = config.pop("trainable", True)
        model = cls(**config)
        model.trainable = trainable
        return model

    def _set_options(self, config, options):
        """Records the config and options; the last step of every constructor."""
        # Keras' generic input-spec check would fire before `call` and pre-empt our errors,
        # which name the fix.
        self.input_spec = None
        self.config = config
        if "include_preprocessing" in options:
            options = dict(options, include_preprocessing=model_preprocessing.resolve(
                options["include_preprocessing"], config, options["interpolate_pos_encoding"]))
        for key, value in options.items():
            setattr(self, key, value)
        # Last: quantization locks the model's attributes.
        if self._pending_quantization is not None:
            self.quantize(self._pending_quantization)


def _itemsize(dtype):
    """Bytes per element of a Keras dtype name (bfloat16 and float8 included; at least 1)."""
    bits = re.search(r"\d+", keras.backend.standardize_dtype(dtype))
    return max(int(bits[0]) // 8, 1) if bits else 1


def _dict_keys(*specs):
    """The output names of the dicts among `specs` (losses, metrics), or None if none is one."""
    keys = []
    for spec in specs:
        if isinstance(spec, dict):
            keys.extend(key for key in spec if key not in keys)
    return tuple(keys) or None


def check_options(data_format):
    """Raises a one-line ValueError for a `data_format` the models do not take."""
    if data_format not in DATA_FORMATS:
        raise ValueError(
            f"`data_format` must be one of {DATA_FORMATS}. Received: data_format={data_format!r}"
        )


def _load_keras_file(cls, path, kwargs):
    """`from_pretrained` of a .keras file: the saved model itself, if it is a `cls`."""
    from keras_deit.saving import load_model

    preprocessing = kwargs.pop("include_preprocessing", None)
    if kwargs:
        raise ValueError(f"from_pretrained of a .keras file takes no options but "
                         f"include_preprocessing; it loads the saved model as it is. Received: "
                         f"{sorted(kwargs)} for {path}")
    model = load_model(path)
    if not isinstance(model, cls):
        raise ValueError(f"{path} holds a {type(model).__name__}, not a {cls.__name__}: load it "
                         f"with {type(model).__name__}.from_pretrained or keras_deit.load_model.")
    if preprocessing and not getattr(model, "include_preprocessing", None):
        if preprocessing is True:  # the processor saved beside it (`keras-deit train` writes it)
            folder = os.path.dirname(os.path.abspath(path))
            preprocessing = model_preprocessing.processor_for(folder, None, model.config)
        model = model_preprocessing.with_preprocessing(model, preprocessing)
    return model
