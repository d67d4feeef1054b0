"""keras-deit: DeiT (Data-efficient Image Transformers) for Keras 3 on TensorFlow, JAX and PyTorch."""

from keras_deit.bridges import from_keras_hub, to_keras_hub
from keras_deit.config import ConfigError, DeiTConfig
from keras_deit.layers import (
    DeiTAttention,
    DeiTEmbeddings,
    DeiTEncoder,
    DeiTLayer,
    DeiTMaskedImageModelingDecoder,
    DeiTMLP,
    DeiTPatchEmbeddings,
    DeiTPooler,
    default_attn_implementation,
)
from keras_deit.distillation import (
    DeiTDistiller,
    distillation_loss,
    hard_distillation_loss,
    soft_distillation_loss,
)
from keras_deit.image_processing import (
    IMAGENET_DEFAULT_MEAN,
    IMAGENET_DEFAULT_STD,
    IMAGENET_STANDARD_MEAN,
    IMAGENET_STANDARD_STD,
    DeiTFeatureExtractor,
    DeiTImageProcessor,
)
from keras_deit.layers.preprocessing import DeiTPreprocessing
from keras_deit.losses import classification_loss, masked_image_modeling_loss
from keras_deit.masking import MaskGenerator
from keras_deit.models import (
    DeiTForImageClassification,
    DeiTForImageClassificationWithTeacher,
    DeiTForMaskedImageModeling,
    DeiTModel,
    DeiTPreTrainedModel,
)
from keras_deit.training import (
    deit_adamw,
    rebuild_at_image_size,
    transfer_backbone_weights,
)

__version__ = "0.1.0"
