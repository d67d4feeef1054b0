"""The DeiT models: functional `keras.Model`s that mirror transformers' DeiT classes.

Each model builds its graph in `__init__` in three sections (layers / functional model /
config), so it has a class name, a static graph, and a `get_config` that rebuilds it. Outputs
are dicts keyed by the transformers names (`last_hidden_state`, `logits`, ...).

One module per role: `base` (`DeiTPreTrainedModel`), `backbone` (`DeiTModel`),
`classification` (the two classifiers), `masked_image_modeling` (SimMIM).
"""

# Registers `DeiTPreprocessing` (a model built with include_preprocessing holds one) with
# Keras' deserializer, so that loading a .keras file needs `keras_deit.models` alone.
import keras_deit.layers.preprocessing  # noqa: F401
from keras_deit.models.backbone import DeiTModel
from keras_deit.models.base import DATA_FORMATS, MODEL_CLASSES, DeiTPreTrainedModel
from keras_deit.models.classification import (
    DeiTForImageClassification,
    DeiTForImageClassificationWithTeacher,
)
from keras_deit.models.masked_image_modeling import DeiTForMaskedImageModeling

# Filled here, once every class is defined; `DeiTPreTrainedModel.from_pretrained` reads it.
MODEL_CLASSES.update({
    cls.__name__: cls
    for cls in (
        DeiTModel,
        DeiTForImageClassification,
        DeiTForImageClassificationWithTeacher,
        DeiTForMaskedImageModeling,
    )
})
