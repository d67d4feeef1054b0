"""The building blocks of DeiT, each a serializable Keras layer."""

from keras_deit.layers.attention import DeiTAttention, default_attn_implementation
from keras_deit.layers.embeddings import DeiTEmbeddings, DeiTPatchEmbeddings
from keras_deit.layers.encoder import DeiTEncoder, DeiTLayer, DeiTMLP
from keras_deit.layers.heads import DeiTMaskedImageModelingDecoder, DeiTPooler, pixel_shuffle
from keras_deit.layers.interpolation import bicubic_resize
