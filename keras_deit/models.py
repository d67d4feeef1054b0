"""The DeiT models: functional `keras.Model`s that mirror transformers' DeiT classes.

Each model builds its graph in `__init__` in three sections (layers / functional model /
config), so it has a class name, a static graph, and a `get_config` that rebuilds it. Outputs
are dicts keyed by the transformers names (`last_hidden_state`, `logits`, ...).
"""

import inspect
import os
import re

import keras
import numpy as np
from keras import ops

from keras_deit import atomic, keras_native, model_preprocessing
from keras_deit.config import DeiTConfig
from keras_deit.losses import (
    _is_integer_dtype,
    as_logits_loss,
    check_classification_labels,
    classification_loss,
    dataset_spec,
    is_dataset,
    masked_image_modeling_loss,
    warn_float_rows_read_as_multi_label,
)
from keras_deit.layers import (
    DeiTEmbeddings,
    DeiTEncoder,
    DeiTMaskedImageModelingDecoder,
    DeiTPooler,
)
from keras_deit.layers.projection import projection

DATA_FORMATS = ("channels_last", "channels_first")


def _as_config(config):
    if isinstance(config, DeiTConfig):
        return config
    if isinstance(config, dict):
        return DeiTConfig.from_dict(config)
    raise ValueError(
        "`config` must be a DeiTConfig (or its dict form). "
        f"Received: config of type {type(config).__name__}"
    )


class DeiTPreTrainedModel(keras.Model):
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
        id; see `conversion.load_pretrained` for the keyword arguments (`strict`, `num_labels`,
        model options, ...). The format readers live in the `conversion` package, which is
        imported here, on first use, so that the modelling code stays free of them.
        """
        from conversion import load_pretrained

        return load_pretrained(cls, source, **kwargs)

    # ---- input checks ---------------------------------------------------------------------
    def call(self, inputs, training=None, mask=None, **kwargs):
        # Checked here rather than in __call__: JAX's predict/fit reach `call` directly.
        self._check_inputs(inputs)
        return super().call(inputs, training=training, mask=mask, **kwargs)

    # The trainer entry points check array inputs before any step runs: on JAX, Keras takes
    # the variables out of the model for the loop and does not put them back if a step raises.
    def fit(self, x=None, *args, **kwargs):
        self._check_inputs(x)
        self._check_training_data("fit", x, args, kwargs)
        return super().fit(x, *args, **kwargs)

    def evaluate(self, x=None, *args, **kwargs):
        self._check_inputs(x)
        self._check_training_data("evaluate", x, args, kwargs)
        return super().evaluate(x, *args, **kwargs)

    def predict(self, x, *args, **kwargs):
        self._check_inputs(x)
        return super().predict(x, *args, **kwargs)

    def train_on_batch(self, x, *args, **kwargs):
        self._check_inputs(x)
        self._check_training_data("train_on_batch", x, args, kwargs)
        return super().train_on_batch(x, *args, **kwargs)

    def test_on_batch(self, x, *args, **kwargs):
        self._check_inputs(x)
        self._check_training_data("test_on_batch", x, args, kwargs)
        return super().test_on_batch(x, *args, **kwargs)

    def predict_on_batch(self, x):
        self._check_inputs(x)
        return super().predict_on_batch(x)

    def _check_inputs(self, inputs):
        """Names the problem and the fix before Keras' generic shape error can."""
        pixel_values = inputs.get("pixel_values") if isinstance(inputs, dict) else inputs
        if isinstance(pixel_values, (list, tuple)) and not (
                len(pixel_values) == 1 and hasattr(pixel_values[0], "shape")):
            # Keras would read a list as several model inputs and fail on the count.
            raise ValueError(
                f"Expected a batch of images as one array or tensor, got a Python "
                f"{type(pixel_values).__name__} of {len(pixel_values)} items. Pass "
                "np.stack(images) (or the image processor's pixel_values)."
            )
        shape = getattr(pixel_values, "shape", None)  # None for datasets and generators
        if shape is None:
            return
        shape = tuple(shape)
        if shape and shape[0] == 0:
            raise ValueError(f"Expected at least one image, got an empty batch. Received: "
                             f"shape={shape}. Pass one image or more.")
        if getattr(self, "include_preprocessing", None):
            return model_preprocessing.check_raw_images(shape, self.config.num_channels)
        model_preprocessing.warn_if_raw_images(self, pixel_values)
        cfg = self.config
        layout = "(batch, channels, height, width)" if self.data_format == "channels_first" else (
            "(batch, height, width, channels)"
        )
        if len(shape) != 4:
            raise ValueError(
                f"Expected a batch of images of shape {layout}, got rank {len(shape)}. "
                f"Received: shape={shape}. Add a batch axis for a single image."
            )
        if self.data_format == "channels_first":
            channels, spatial = shape[1], shape[2:]
        else:
            channels, spatial = shape[3], shape[1:3]
        if channels is not None and channels != cfg.num_channels:
            other = shape[3] if self.data_format == "channels_first" else shape[1]
            hint = (
                " The images look like they are in the other layout: build the model with "
                f"data_format={'channels_last' if self.data_format == 'channels_first' else 'channels_first'!r}."
                if other == cfg.num_channels
                else " Convert grayscale or RGBA images to RGB first."
            )
            raise ValueError(
                f"Expected {cfg.num_channels} channels in a {self.data_format} batch {layout}. "
                f"Received: shape={shape}.{hint}"
            )
        for size, patch, axis in zip(spatial, cfg.patch_hw, ("height", "width")):
            if size is not None and size % patch:
                raise ValueError(
                    f"Image {axis} {size} is not divisible by the patch size {patch}. "
                    f"Received: shape={shape}. Resize or crop to a multiple of {patch}."
                )
        if not self.interpolate_pos_encoding and None not in spatial and tuple(spatial) != cfg.image_hw:
            raise ValueError(
                f"Input image size {tuple(spatial)} doesn't match the model's {cfg.image_hw}. "
                f"Received: shape={shape}. Resize the images to {cfg.image_hw}, or build the "
                "model with interpolate_pos_encoding=True to resample the position embeddings."
            )

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

    def compile_from_config(self, config):
        """Compiles a loaded model from its saved compile config (`compile` is overridden, so
        Keras leaves this to the class)."""
        self.compile(**keras.saving.deserialize_keras_object(config))
        if self.built and getattr(self, "optimizer", None) is not None:
            self.optimizer.build(self.trainable_variables)

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
                return loss
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

    def _check_training_data(self, method, x, args, kwargs):
        """Checks the targets (and validation data) before Keras runs a step."""
        arguments = inspect.signature(getattr(keras.Model, method)).bind(
            self, x, *args, **kwargs
        ).arguments
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


def _check_options(data_format):
    if data_format not in DATA_FORMATS:
        raise ValueError(
            f"`data_format` must be one of {DATA_FORMATS}. Received: data_format={data_format!r}"
        )


def _pixel_values_input(config, interpolate_pos_encoding, data_format,
                        include_preprocessing=None):
    """(the model's image Input, the pixel values the backbone reads).

    Without preprocessing both are the `pixel_values` Input (spatial size left open when the
    model interpolates). With `include_preprocessing` (see `keras_deit.model_preprocessing`)
    the Input takes uint8 `images` of any size and the pixel values are its preprocessed form.
    """
    preprocessing = model_preprocessing.resolve(
        include_preprocessing, config, interpolate_pos_encoding
    )
    if preprocessing is not None:
        return model_preprocessing.raw_images_input(preprocessing, config, data_format)
    h, w = (None, None) if interpolate_pos_encoding else config.image_hw
    c = config.num_channels
    shape = (c, h, w) if data_format == "channels_first" else (h, w, c)
    pixel_values = keras.Input(shape=shape, name="pixel_values")
    return pixel_values, pixel_values


def _bool_masked_pos_input(config, interpolate_pos_encoding):
    length = None if interpolate_pos_encoding else config.num_patches
    return keras.Input(shape=(length,), dtype="bool", name="bool_masked_pos")


def _forward_extras(source, outputs):
    """Copies `hidden_states` / `attentions` from the backbone's outputs, when present."""
    for key in ("hidden_states", "attentions"):
        if key in source:
            outputs[key] = source[key]
    return outputs


@keras.saving.register_keras_serializable(package="keras_deit")
class DeiTModel(DeiTPreTrainedModel):
    """The bare DeiT encoder (transformers' `DeiTModel`).

    Args:
        config: a `DeiTConfig`.
        add_pooling_layer: bool, add the tanh pooler on the class token (`pooler_output`).
        use_mask_token: bool, take a second input `bool_masked_pos` (batch, num_patches) and
            replace masked patches by a learned mask token (SimMIM). The inputs are then a dict
            `{"pixel_values", "bool_masked_pos"}`.
        output_hidden_states: bool, add `hidden_states`: the embeddings and every block's output.
        output_attentions: bool, add `attentions`: (batch, heads, seq, seq) per block.
        interpolate_pos_encoding: bool, accept any input size divisible by the patch, resampling
            the position embeddings (PyTorch bicubic, as transformers).
        data_format: "channels_last" (batch, H, W, C) or "channels_first" (batch, C, H, W).
        head_mask: optional (num_heads,) or (num_layers, num_heads) values in [0, 1] that scale
            each head's attention probabilities.
        attn_implementation: "sdpa" (`keras.ops.dot_product_attention`), "eager" (batched
            matmuls), or None: the faster of the two on this backend and device (see
            `keras_deit.layers.attention.default_attn_implementation`). Both give the same
            outputs; attention maps and head masks always use "eager".
        include_preprocessing: None / False, or True (transformers' processor defaults at the
            config's size), a `DeiTImageProcessor` or its dict: the model then takes uint8
            `images` (batch, any H, any W, C), channels-last, and resizes, crops and normalizes
            them in its graph (`keras_deit.model_preprocessing`). `from_pretrained(source,
            include_preprocessing=True)` uses the checkpoint's own processor.

    Inputs:
        pixel_values (batch, H, W, C), preprocessed float images (or the dict above).

    Outputs:
        dict: `last_hidden_state` (batch, prefix + patches, hidden) after the final LayerNorm,
        `pooler_output` (batch, pooler_output_size), and the optional entries above.
    """

    _options = dict(DeiTPreTrainedModel._options, add_pooling_layer=True, use_mask_token=False)

    def __init__(
        self,
        config,
        add_pooling_layer=True,
        use_mask_token=False,
        output_hidden_states=False,
        output_attentions=False,
        interpolate_pos_encoding=False,
        data_format="channels_last",
        head_mask=None,
        attn_implementation=None,
        include_preprocessing=None,
        dtype=None,
        **kwargs,
    ):
        config = _as_config(config)
        requested_dtype, dtype = dtype, keras_native.layer_policy(dtype)
        _check_options(data_format)

        # === Layers ===
        to_channels_last = (
            keras.layers.Permute((2, 3, 1), dtype=dtype, name="to_channels_last")
            if data_format == "channels_first"
            else None
        )
        embeddings = DeiTEmbeddings(
            config.hidden_size,
            config.patch_size,
            config.image_size,
            num_channels=config.num_channels,
            use_distillation_token=config.use_distillation_token,
            use_mask_token=use_mask_token,
            class_token_position_embedding=config.class_token_position_embedding,
            dropout=config.hidden_dropout_prob,
            initializer_range=config.initializer_range,
            dtype=dtype,
            name="embeddings",
        )
        encoder = DeiTEncoder(
            config.num_hidden_layers,
            config.hidden_size,
            config.num_attention_heads,
            config.intermediate_size,
            hidden_act=config.hidden_act,
            qkv_bias=config.qkv_bias,
            layer_norm_eps=config.layer_norm_eps,
            hidden_dropout=config.hidden_dropout_prob,
            attention_dropout=config.attention_probs_dropout_prob,
            drop_path_rate=config.drop_path_rate,
            layer_scale_init_value=config.layer_scale_init_value,
            head_mask=head_mask,
            initializer_range=config.initializer_range,
            attn_implementation=attn_implementation,
            dtype=dtype,
            name="encoder",
        )
        layernorm = keras.layers.LayerNormalization(
            epsilon=config.layer_norm_eps, dtype=dtype, name="layernorm"
        )
        pooler = (
            DeiTPooler(
                config.pooler_output_size,
                config.pooler_act,
                initializer_range=config.initializer_range,
                dtype=dtype,
                name="pooler",
            )
            if add_pooling_layer
            else None
        )

        # === Functional model ===
        images, pixel_values = _pixel_values_input(
            config, interpolate_pos_encoding, data_format, include_preprocessing
        )
        inputs = images
        bool_masked_pos = None
        if use_mask_token:
            bool_masked_pos = _bool_masked_pos_input(config, interpolate_pos_encoding)
            inputs = {"pixel_values": images, "bool_masked_pos": bool_masked_pos}
        outputs = _encode(
            (to_channels_last, embeddings, encoder, layernorm),
            pixel_values,
            bool_masked_pos,
            interpolate_pos_encoding=interpolate_pos_encoding,
            output_hidden_states=output_hidden_states,
            output_attentions=output_attentions,
        )
        if pooler is not None:
            outputs["pooler_output"] = pooler(outputs["last_hidden_state"])
        super().__init__(inputs=inputs, outputs=outputs, dtype=requested_dtype, **kwargs)

        # === Config ===
        self.to_channels_last = to_channels_last
        self.embeddings = embeddings
        self.encoder = encoder
        self.layernorm = layernorm
        self.pooler = pooler
        self._set_options(config, dict(
            add_pooling_layer=add_pooling_layer,
            use_mask_token=use_mask_token,
            output_hidden_states=output_hidden_states,
            output_attentions=output_attentions,
            interpolate_pos_encoding=interpolate_pos_encoding,
            data_format=data_format,
            head_mask=encoder.head_mask,
            attn_implementation=attn_implementation,
            include_preprocessing=include_preprocessing,
        ))

    def encode(self, inputs):
        """Applies this backbone's layers to new symbolic `inputs`; returns its outputs without
        the pooler.

        The task models build their graphs with it: they share the backbone's layers (and so
        its weights) rather than calling it as a nested model, whose call costs about 0.5 ms of
        bookkeeping per forward pass on the PyTorch backend. `model.deit` stays a working
        `DeiTModel` on the same weights.

        Args:
            inputs: a `keras.Input` like this model's inputs (a tensor, or the dict with
                `bool_masked_pos` when the model has a mask token).
        """
        pixel_values = inputs["pixel_values"] if isinstance(inputs, dict) else inputs
        bool_masked_pos = inputs.get("bool_masked_pos") if isinstance(inputs, dict) else None
        return _encode(
            (self.to_channels_last, self.embeddings, self.encoder, self.layernorm),
            pixel_values,
            bool_masked_pos,
            interpolate_pos_encoding=self.interpolate_pos_encoding,
            output_hidden_states=self.output_hidden_states,
            output_attentions=self.output_attentions,
        )


def _encode(layers, pixel_values, bool_masked_pos, interpolate_pos_encoding,
            output_hidden_states, output_attentions):
    """The backbone graph: (channels-last) -> embeddings -> encoder -> final LayerNorm.

    Returns the outputs dict: `last_hidden_state`, and `hidden_states` / `attentions` when
    requested.
    """
    to_channels_last, embeddings, encoder, layernorm = layers
    images = to_channels_last(pixel_values) if to_channels_last else pixel_values
    tokens = embeddings(
        images, bool_masked_pos=bool_masked_pos, interpolate_pos_encoding=interpolate_pos_encoding
    )
    encoded = encoder(
        tokens, output_hidden_states=output_hidden_states, output_attentions=output_attentions
    )
    outputs = {"last_hidden_state": layernorm(encoded["last_hidden_state"])}
    return _forward_extras(encoded, outputs)


def _backbone(config, name="deit", **options):
    """A `DeiTModel` without pooler, used as the body of the task models."""
    return DeiTModel(config, add_pooling_layer=False, name=name, **options)


def _classifier(config, name, dtype):
    """Dense(num_labels) on a token; None (identity) when `num_labels` is 0, as transformers."""
    if config.num_labels == 0:
        return None
    return projection(config.num_labels, config.initializer_range, dtype, name)




@keras.saving.register_keras_serializable(package="keras_deit")
class DeiTForImageClassification(DeiTPreTrainedModel):
    """DeiT with a linear classifier on the class token (transformers' class of that name).

    This is the fine-tuning head: a distilled backbone keeps its distillation token, but only
    the class token is classified. For a checkpoint stored as ViT (the non-distilled
    facebook/deit-*), this is ViTForImageClassification.

    Args:
        config: a `DeiTConfig`; `num_labels` sets the classifier width.
        Other arguments as in `DeiTModel`.

    Outputs:
        dict: `logits` (batch, num_labels), plus `hidden_states` / `attentions` if requested.
    """

    def __init__(
        self,
        config,
        output_hidden_states=False,
        output_attentions=False,
        interpolate_pos_encoding=False,
        data_format="channels_last",
        head_mask=None,
        attn_implementation=None,
        include_preprocessing=None,
        dtype=None,
        **kwargs,
    ):
        config = _as_config(config)
        requested_dtype, dtype = dtype, keras_native.layer_policy(dtype)
        options = dict(
            output_hidden_states=output_hidden_states,
            output_attentions=output_attentions,
            interpolate_pos_encoding=interpolate_pos_encoding,
            data_format=data_format,
            head_mask=head_mask,
            attn_implementation=attn_implementation,
        )

        # === Layers ===
        deit = _backbone(config, dtype=dtype, **options)
        classifier = _classifier(config, "classifier", dtype)

        # === Functional model ===
        images, pixel_values = _pixel_values_input(
            config, interpolate_pos_encoding, data_format, include_preprocessing
        )
        encoded = deit.encode(pixel_values)
        class_token = encoded["last_hidden_state"][:, 0]
        logits = classifier(class_token) if classifier is not None else class_token
        outputs = _forward_extras(encoded, {"logits": logits})
        super().__init__(inputs=images, outputs=outputs, dtype=requested_dtype, **kwargs)

        # === Config ===
        self.deit = deit
        self.classifier = classifier
        self._set_options(config, dict(options, head_mask=deit.head_mask,
                                       include_preprocessing=include_preprocessing))

    _primary_output = "logits"

    def default_loss(self, x, y, y_pred, sample_weight=None):
        """The transformers loss for `config.problem_type` on `logits`.

        None -> `num_labels == 1`: MSE; integer labels: softmax cross-entropy; float labels:
        sigmoid cross-entropy (multi-label), with a one-time warning naming
        problem_type="single_label_classification" for soft targets. See
        `losses.classification_loss`.
        """
        if y is None:
            self._check_labels(x, y)  # Names the fix.
        warn_float_rows_read_as_multi_label(self, y)
        return classification_loss(y, y_pred["logits"], self.config.problem_type, sample_weight)

    def _check_targets(self, x, y):
        self._check_labels(x, y)


@keras.saving.register_keras_serializable(package="keras_deit")
class DeiTForImageClassificationWithTeacher(DeiTPreTrainedModel):
    """Distilled DeiT with a class head and a distillation head, averaged at inference.

    `cls_logits` classify the class token, `distillation_logits` the distillation token, and
    `logits = (cls_logits + distillation_logits) / 2` is the prediction the paper reports.
    Training the distillation head needs a teacher: see `keras_deit.distillation`.

    Args:
        config: a `DeiTConfig` with `use_distillation_token=True`.
        Other arguments as in `DeiTModel`.

    Outputs:
        dict: `logits`, `cls_logits`, `distillation_logits` (batch, num_labels), plus
        `hidden_states` / `attentions` if requested.
    """

    def __init__(
        self,
        config,
        output_hidden_states=False,
        output_attentions=False,
        interpolate_pos_encoding=False,
        data_format="channels_last",
        head_mask=None,
        attn_implementation=None,
        include_preprocessing=None,
        dtype=None,
        **kwargs,
    ):
        config = _as_config(config)
        requested_dtype, dtype = dtype, keras_native.layer_policy(dtype)
        if not config.use_distillation_token:
            raise ValueError(
                "DeiTForImageClassificationWithTeacher needs a distillation token, and this "
                "config has none (use_distillation_token=False, e.g. a checkpoint stored as ViT). "
                "Use DeiTForImageClassification for it."
            )
        options = dict(
            output_hidden_states=output_hidden_states,
            output_attentions=output_attentions,
            interpolate_pos_encoding=interpolate_pos_encoding,
            data_format=data_format,
            head_mask=head_mask,
            attn_implementation=attn_implementation,
        )

        # === Layers ===
        deit = _backbone(config, dtype=dtype, **options)
        cls_classifier = _classifier(config, "cls_classifier", dtype)
        distillation_classifier = _classifier(config, "distillation_classifier", dtype)

        # === Functional model ===
        images, pixel_values = _pixel_values_input(
            config, interpolate_pos_encoding, data_format, include_preprocessing
        )
        encoded = deit.encode(pixel_values)
        sequence = encoded["last_hidden_state"]
        cls_logits, distillation_logits = sequence[:, 0], sequence[:, 1]
        if cls_classifier is not None:
            cls_logits = cls_classifier(cls_logits)
            distillation_logits = distillation_classifier(distillation_logits)
        outputs = {
            "logits": (cls_logits + distillation_logits) / 2,
            "cls_logits": cls_logits,
            "distillation_logits": distillation_logits,
        }
        super().__init__(
            inputs=images, outputs=_forward_extras(encoded, outputs),
            dtype=requested_dtype, **kwargs,
        )

        # === Config ===
        self.deit = deit
        self.cls_classifier = cls_classifier
        self.distillation_classifier = distillation_classifier
        self._set_options(config, dict(options, head_mask=deit.head_mask,
                                       include_preprocessing=include_preprocessing))

    _primary_output = "logits"

    def default_loss(self, x, y, y_pred, sample_weight=None):
        """Both heads trained on the labels: the mean of the problem-type loss of each head.

        This is fine-tuning without a teacher (transformers does not support training this
        class). Each head learns the labels, so their average, `logits`, stays a sound
        prediction. It differs from facebookresearch/deit's `distillation_type="none"`, which
        trains the class head only and leaves the distillation head as it was; for that, and for
        training with a teacher, use `keras_deit.distillation.DeiTDistiller`.
        """
        if y is None:
            self._check_labels(x, y)  # Names the fix.
        warn_float_rows_read_as_multi_label(self, y)
        problem_type = self.config.problem_type
        cls_loss = classification_loss(y, y_pred["cls_logits"], problem_type, sample_weight)
        distillation_loss = classification_loss(
            y, y_pred["distillation_logits"], problem_type, sample_weight
        )
        return (cls_loss + distillation_loss) / 2

    def _check_targets(self, x, y):
        self._check_labels(x, y)


@keras.saving.register_keras_serializable(package="keras_deit")
class DeiTForMaskedImageModeling(DeiTPreTrainedModel):
    """DeiT with the SimMIM decoder, reconstructing the image from the patch tokens.

    The decoder reads the patch tokens (`sequence[:, 2:]`, transformers v5; v4 and the TF class
    read `[:, 1:-1]`, a bug) and upsamples them with a 1x1 convolution and a PyTorch-order pixel
    shuffle. The loss is `keras_deit.losses.masked_image_modeling_loss`.

    Args:
        config: a `DeiTConfig` whose `encoder_stride` equals its `patch_size`.
        Other arguments as in `DeiTModel`.

    Inputs:
        dict: `pixel_values` (batch, H, W, C), `bool_masked_pos` (batch, num_patches) bool.

    Outputs:
        dict: `reconstruction`, the size and layout of `pixel_values`, plus `hidden_states` /
        `attentions` if requested.
    """

    def __init__(
        self,
        config,
        output_hidden_states=False,
        output_attentions=False,
        interpolate_pos_encoding=False,
        data_format="channels_last",
        head_mask=None,
        attn_implementation=None,
        include_preprocessing=None,
        dtype=None,
        **kwargs,
    ):
        config = _as_config(config)
        requested_dtype, dtype = dtype, keras_native.layer_policy(dtype)
        if config.patch_hw != (config.encoder_stride, config.encoder_stride):
            raise ValueError(
                "The SimMIM decoder upsamples each patch token by `encoder_stride`, so it must "
                f"equal the patch size. Received: encoder_stride={config.encoder_stride}, "
                f"patch_size={config.patch_size}"
            )
        if include_preprocessing:
            raise ValueError(
                "DeiTForMaskedImageModeling reconstructs its input pixel values, so it cannot "
                "include the preprocessing: preprocess the images with DeiTImageProcessor. "
                f"Received: include_preprocessing={include_preprocessing!r}."
            )
        options = dict(
            output_hidden_states=output_hidden_states,
            output_attentions=output_attentions,
            interpolate_pos_encoding=interpolate_pos_encoding,
            data_format=data_format,
            head_mask=head_mask,
            attn_implementation=attn_implementation,
        )

        # === Layers ===
        deit = _backbone(config, use_mask_token=True, dtype=dtype, **options)
        decoder = DeiTMaskedImageModelingDecoder(
            config.encoder_stride,
            config.num_channels,
            data_format=data_format,
            initializer_range=config.initializer_range,
            dtype=dtype,
            name="decoder",
        )

        # === Functional model ===
        inputs = {
            "pixel_values": _pixel_values_input(config, interpolate_pos_encoding, data_format)[0],
            "bool_masked_pos": _bool_masked_pos_input(config, interpolate_pos_encoding),
        }
        encoded = deit.encode(inputs)
        patch_tokens = encoded["last_hidden_state"][:, config.num_prefix_tokens:]
        reconstruction = decoder(patch_tokens, inputs["pixel_values"])
        outputs = _forward_extras(encoded, {"reconstruction": reconstruction})
        super().__init__(inputs=inputs, outputs=outputs, dtype=requested_dtype, **kwargs)

        # === Config ===
        self.deit = deit
        self.decoder = decoder
        self._set_options(config, dict(options, head_mask=deit.head_mask,
                                       include_preprocessing=None))

    _primary_output = "reconstruction"

    def default_loss(self, x, y, y_pred, sample_weight=None):
        """SimMIM's L1 loss on the masked pixels (`losses.masked_image_modeling_loss`).

        The target is `pixel_values`, or `y` when given (e.g. unnormalized images), of the same
        shape. `sample_weight` is not used: the loss is one ratio over the whole batch.
        """
        target = x["pixel_values"] if y is None else y
        return masked_image_modeling_loss(
            ops.cast(target, "float32"),
            ops.cast(y_pred["reconstruction"], "float32"),
            x["bool_masked_pos"],
            self.config.encoder_stride,
            self.data_format,
        )

    def _check_inputs(self, inputs):
        super()._check_inputs(inputs)
        if not isinstance(inputs, dict):
            if getattr(inputs, "shape", None) is not None:
                raise ValueError(
                    "DeiTForMaskedImageModeling takes a dict {'pixel_values': images, "
                    "'bool_masked_pos': masks}. Received: an array of shape "
                    f"{tuple(inputs.shape)}. Draw masks with keras_deit.masking.MaskGenerator."
                )
            return
        pixel_values, mask = inputs.get("pixel_values"), inputs.get("bool_masked_pos")
        pixel_shape, mask_shape = getattr(pixel_values, "shape", None), getattr(mask, "shape", None)
        if mask is None:
            raise ValueError(
                "DeiTForMaskedImageModeling needs `bool_masked_pos` (batch, num_patches) next to "
                f"`pixel_values`. Received: keys {sorted(inputs)}. Draw masks with "
                "keras_deit.masking.MaskGenerator."
            )
        if pixel_shape is None or mask_shape is None:
            return
        pixel_shape, mask_shape = tuple(pixel_shape), tuple(mask_shape)
        if len(pixel_shape) != 4:
            return  # `super()` named the problem.
        spatial = pixel_shape[2:] if self.data_format == "channels_first" else pixel_shape[1:3]
        if None in spatial:
            num_patches = None
        else:
            (ph, pw) = self.config.patch_hw
            num_patches = (spatial[0] // ph) * (spatial[1] // pw)
        expected = (pixel_shape[0], num_patches)
        if len(mask_shape) != 2 or any(
            e is not None and m is not None and e != m for e, m in zip(expected, mask_shape)
        ):
            raise ValueError(
                f"`bool_masked_pos` must have shape (batch, num_patches) = {expected}: one entry "
                f"per {self.config.patch_hw} patch of the {tuple(spatial)} images, row-major. "
                f"Received: bool_masked_pos shape={mask_shape}, pixel_values shape={pixel_shape}. "
                "Use keras_deit.masking.MaskGenerator(input_size, model_patch_size="
                f"{self.config.patch_size}, ...)."
            )

    def _check_targets(self, x, y):
        if y is None or not hasattr(y, "shape") or not isinstance(x, dict):
            return
        pixel_shape = getattr(x.get("pixel_values"), "shape", None)
        if pixel_shape is not None and tuple(y.shape) != tuple(pixel_shape):
            raise ValueError(
                "SimMIM reconstructs the images: a target `y` must have the shape of "
                f"`pixel_values` {tuple(pixel_shape)}. Received: y shape={tuple(y.shape)}. Leave "
                "y out to reconstruct `pixel_values` themselves."
            )


MODEL_CLASSES = {
    cls.__name__: cls
    for cls in (
        DeiTModel,
        DeiTForImageClassification,
        DeiTForImageClassificationWithTeacher,
        DeiTForMaskedImageModeling,
    )
}
