"""The models shipped inside the package (name -> .keras file, beside its
preprocessor_config.json), so that `keras-deit predict` works offline.

No Keras here: the `keras-deit` command lists these names in its --help without importing a
backend. deit-digits: a distilled DeiT trained on scikit-learn's 8x8 digits
(benchmarks/distillation_experiment.py).
"""

import os

BUILTIN_MODELS = {
    "deit-digits": os.path.join(os.path.dirname(__file__), "data", "deit_digits", "model.keras"),
}
DEFAULT_MODEL = "deit-digits"
