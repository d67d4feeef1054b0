"""`DeiTModel`, the bare encoder, and the graph pieces the task models share: the inputs, the
backbone graph (`_encode`), and the optional outputs they forward."""

import keras

from keras_deit import keras_native, model_preprocessing
from keras_deit.layers import DeiTEmbeddings, DeiTEncoder, DeiTPooler
from keras_deit.models.base import DeiTPreTrainedModel, as_config, check_options

def pixel_values_input(config, interpolate_pos_encoding, data_format,
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


def bool_masked_pos_input(config, interpolate_pos_encoding):
    """The SimMIM mask Input: (batch, num_patches) bool, (batch, None) at any image size."""
    length = None if interpolate_pos_encoding else config.num_patches
    return keras.Input(shape=(length,), dtype="bool", name="bool_masked_pos")


def forward_extras(source, outputs):
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

    def __init__(self, config, add_pooling_layer=True, use_mask_token=False, dtype=None,
                 **kwargs):
        # The other options are declared once, in `DeiTPreTrainedModel._options`.
        options = self._take_options(kwargs)
        output_hidden_states = options["output_hidden_states"]
        output_attentions = options["output_attentions"]
        interpolate_pos_encoding = options["interpolate_pos_encoding"]
        data_format = options["data_format"]
        head_mask = options["head_mask"]
        attn_implementation = options["attn_implementation"]
        include_preprocessing = options["include_preprocessing"]
        config = as_config(config)
        requested_dtype, dtype = dtype, keras_native.layer_policy(dtype)
        check_options(data_format)

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
        images, pixel_values = pixel_values_input(
            config, interpolate_pos_encoding, data_format, include_preprocessing
        )
        inputs = images
        bool_masked_pos = None
        if use_mask_token:
            bool_masked_pos = bool_masked_pos_input(config, interpolate_pos_encoding)
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
            options,
            add_pooling_layer=add_pooling_layer,
            use_mask_token=use_mask_token,
            head_mask=encoder.head_mask,
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
    return forward_extras(encoded, outputs)


def build_backbone(config, name="deit", **options):
    """A `DeiTModel` without pooler, used as the body of the task models; the task model
    holds any `include_preprocessing` itself (its body reads pixel values)."""
    options = dict(options, include_preprocessing=None)
    return DeiTModel(config, add_pooling_layer=False, name=name, **options)
