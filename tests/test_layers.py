"""Each layer: shapes, get_config round-trip, and its numerics against a reference."""

import keras
import numpy as np
import pytest

import keras_deit as kd
from keras_deit.layers import bicubic_resize, pixel_shuffle
from helpers import max_abs_diff, to_numpy

RNG = np.random.RandomState(0)
TOKENS = RNG.randn(2, 18, 48).astype("float32")
IMAGES = RNG.rand(2, 32, 32, 3).astype("float32")

LAYER_CASES = [
    (kd.DeiTPatchEmbeddings, dict(hidden_size=48, patch_size=8), (IMAGES,), (2, 4, 4, 48)),
    (kd.DeiTEmbeddings, dict(hidden_size=48, patch_size=8, image_size=32, use_mask_token=True,
                             dropout=0.1), (IMAGES,), (2, 18, 48)),
    (kd.DeiTEmbeddings, dict(hidden_size=48, patch_size=8, image_size=32,
                             use_distillation_token=False, class_token_position_embedding=False),
     (IMAGES,), (2, 17, 48)),
    (kd.DeiTAttention, dict(hidden_size=48, num_heads=3, head_mask=[1, 0, 1]), (TOKENS,), (2, 18, 48)),
    (kd.DeiTAttention, dict(hidden_size=48, num_heads=3, attn_implementation="sdpa"), (TOKENS,),
     (2, 18, 48)),
    (kd.DeiTMLP, dict(hidden_size=48, intermediate_size=96, hidden_act="gelu_new"), (TOKENS,), (2, 18, 48)),
    (kd.DeiTLayer, dict(hidden_size=48, num_heads=3, intermediate_size=96, drop_path_rate=0.1,
                        layer_scale_init_value=1e-5), (TOKENS,), (2, 18, 48)),
    (kd.DeiTPooler, dict(output_size=32), (TOKENS,), (2, 32)),
    (kd.DeiTMaskedImageModelingDecoder, dict(encoder_stride=8), (TOKENS[:, 2:], IMAGES), (2, 32, 32, 3)),
]


@pytest.mark.parametrize("cls, kwargs, inputs, expected_shape", LAYER_CASES,
                         ids=[f"{c[0].__name__}-{i}" for i, c in enumerate(LAYER_CASES)])
def test_layer_shapes_and_config_round_trip(cls, kwargs, inputs, expected_shape):
    layer = cls(**kwargs)
    out = layer(*inputs)
    assert tuple(out.shape) == expected_shape
    config = layer.get_config()
    clone = cls.from_config(config)
    assert clone.get_config() == config  # every key is a constructor argument
    clone(*inputs)
    assert [tuple(v.shape) for v in clone.weights] == [tuple(v.shape) for v in layer.weights]
    clone.set_weights(layer.get_weights())
    assert max_abs_diff(clone(*inputs), out) == 0.0
    # And through Keras' generic (de)serialization, as .keras saving does.
    revived = keras.layers.deserialize(keras.layers.serialize(layer))
    assert type(revived) is cls and revived.get_config() == config


def test_encoder_round_trip_and_outputs():
    encoder = kd.DeiTEncoder(3, 48, 3, 96, head_mask=[[1, 1, 1], [0, 1, 1], [1, 1, 0]])
    out = encoder(TOKENS, output_hidden_states=True, output_attentions=True)
    assert len(out["hidden_states"]) == 4 and len(out["attentions"]) == 3
    assert tuple(out["attentions"][0].shape) == (2, 3, 18, 18)
    # A masked head has zero attention probabilities.
    assert np.all(to_numpy(out["attentions"][1])[:, 0] == 0)
    clone = kd.DeiTEncoder.from_config(encoder.get_config())
    assert clone.get_config() == encoder.get_config()


def test_sdpa_and_eager_attention_agree():
    sdpa = kd.DeiTAttention(48, 3, attn_implementation="sdpa")
    eager = kd.DeiTAttention(48, 3, attn_implementation="eager")
    out = sdpa(TOKENS)
    eager.build(TOKENS.shape)
    eager.set_weights(sdpa.get_weights())
    assert max_abs_diff(eager(TOKENS), out) < 1e-5
    # Asking for the probabilities runs the eager kernel whatever the setting.
    with_probs, probs = sdpa(TOKENS, return_attention_scores=True)
    assert max_abs_diff(with_probs, out) < 1e-5
    np.testing.assert_allclose(to_numpy(probs).sum(-1), 1.0, atol=1e-5)


def test_attention_implementation_default_and_errors():
    assert kd.default_attn_implementation() in ("sdpa", "eager")
    if keras.backend.backend() == "torch":
        assert kd.default_attn_implementation() == "sdpa"  # PyTorch's fused CPU kernel
    layer = kd.DeiTAttention(48, 3)
    assert layer.get_config()["attn_implementation"] is None  # re-resolved where it is loaded
    with pytest.raises(ValueError, match="attn_implementation.*'flash'"):
        kd.DeiTAttention(48, 3, attn_implementation="flash")


@pytest.mark.parametrize("attn_implementation", ["sdpa", "eager"])
def test_attention_matches_torch_multihead_formula(attn_implementation):
    torch = pytest.importorskip("torch")
    layer = kd.DeiTAttention(48, 3, attn_implementation=attn_implementation)
    layer.build((None, 18, 48))
    qkv_w, qkv_b, out_w, out_b = (to_numpy(v) for v in layer.weights)
    x = torch.from_numpy(TOKENS)
    q, k, v = (x @ torch.from_numpy(qkv_w[:, i * 48:(i + 1) * 48]) + torch.from_numpy(qkv_b[i * 48:(i + 1) * 48])
               for i in range(3))
    split = lambda t: t.reshape(2, 18, 3, 16).transpose(1, 2)
    ref = torch.nn.functional.scaled_dot_product_attention(split(q), split(k), split(v))
    ref = ref.transpose(1, 2).reshape(2, 18, 48) @ torch.from_numpy(out_w) + torch.from_numpy(out_b)
    assert max_abs_diff(layer(TOKENS), ref.numpy()) < 1e-5


def test_bicubic_resize_matches_torch():
    torch = pytest.importorskip("torch")
    grid = RNG.randn(1, 14, 14, 8).astype("float32")
    for size in [(24, 30), (7, 9), (14, 14), (3, 20)]:
        ref = torch.nn.functional.interpolate(
            torch.from_numpy(grid).permute(0, 3, 1, 2), size=size, mode="bicubic", align_corners=False
        ).permute(0, 2, 3, 1).numpy()
        assert max_abs_diff(bicubic_resize(grid, size), ref) < 1e-5, size


def test_pixel_shuffle_matches_torch():
    torch = pytest.importorskip("torch")
    x = RNG.randn(2, 4, 5, 3 * 8 * 8).astype("float32")
    ref = torch.nn.PixelShuffle(8)(torch.from_numpy(x).permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
    assert max_abs_diff(pixel_shuffle(x, 8, 3), ref.numpy()) == 0.0


def test_exact_gelu_is_used():
    mlp = kd.DeiTMLP(4, 4, "gelu")
    x = np.array([[-1.0, 0.5, 2.0, -3.0]], "float32")
    from math import erf, sqrt
    expected = [v * 0.5 * (1 + erf(v / sqrt(2))) for v in x[0]]
    assert max_abs_diff(mlp.activation(x), np.array([expected], "float32")) < 1e-6


def test_drop_path_only_in_training():
    layer = kd.DeiTLayer(48, 3, 96, drop_path_rate=0.5)
    inference = layer(TOKENS)
    assert max_abs_diff(layer(TOKENS, training=False), inference) == 0.0
    trained = [to_numpy(layer(TOKENS, training=True)) for _ in range(4)]
    assert any(np.abs(t - to_numpy(inference)).max() > 1e-4 for t in trained)


def test_layer_scale_scales_the_residual_branches():
    layer = kd.DeiTLayer(48, 3, 96, layer_scale_init_value=0.0)
    # With LayerScale at zero both branches vanish: the block is the identity.
    assert max_abs_diff(layer(TOKENS), TOKENS) == 0.0
