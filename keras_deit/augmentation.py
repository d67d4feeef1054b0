"""DeiT's training augmentations under their public path, `keras_deit.augmentation`.

They live in `keras_deit.training.augmentation` (crop, flip, erasing, mixup/cutmix, the whole
recipe over tf.data) and `keras_deit.training.rand_augment` (timm's RandAugment, op for op);
this module only names them.
"""

from keras_deit.training.augmentation import (  # noqa: F401
    DeiTImageTransform,
    MixupCutmix,
    RandomErasing,
    RandomResizedCrop,
    deit_train_dataset,
    mixed_batches,
    rand_augment,
    rand_augment_op,
    random_erasing,
    repeated_augmentation,
    smooth_labels,
)
from keras_deit.training.rand_augment import OP_NAMES, RandAugment  # noqa: F401
