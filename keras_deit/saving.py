"""Loading a `.keras` file from a stranger: checked as an archive, and its DeiT config checked
against the size of its weights, before Keras builds anything.

Keras builds the whole model from the archive's `config.json` before it reads a weight, so a
config that lies (`hidden_size: 3000000` beside a 1 MB weights file) would allocate gigabytes.
The zip directory gives the weights file's size without reading it; a DeiT config whose
encoder alone needs more bytes than that (at half a byte per parameter, what int4
quantization stores) is refused.
"""

import json
import os
import zipfile

from keras_deit.config import ConfigError, DeiTConfig

WEIGHTS_NAME = "model.weights.h5"


def min_parameters(config):
    """A lower bound on the parameter count of any DeiT model built from `config`: the
    encoder's projections and the position embeddings (heads and norms left out)."""
    h, i = config.hidden_size, config.intermediate_size
    positions = config.num_patches + (config.num_prefix_tokens
                                      if config.class_token_position_embedding else 0)
    return config.num_hidden_layers * (4 * h * h + 2 * h * i) + positions * h


def load_model(path):
    """`keras.saving.load_model(path)` (safe mode) after the checks above.

    Raises:
        FileNotFoundError: no such file.
        ValueError: a folder, not a zip archive, a DeiT config that does not fit its weights,
            or an archive Keras cannot rebuild; one line naming the file and the fix.
    """
    import keras

    if os.path.isdir(path):
        raise ValueError(f"{path} is a folder, not a .keras file: pass the model file.")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no such model file: {path}")
    # Keras says "File not found" for a file that exists but is no zip archive.
    if not zipfile.is_zipfile(path):
        raise ValueError(f"{path} is not a .keras archive (it is corrupt or truncated, or "
                         "another format): convert or save the model again.")
    _check_deit_config(path)
    try:
        return keras.saving.load_model(path)
    except Exception as e:  # Keras raises many types for an archive it cannot rebuild
        reason = " ".join(str(e).split())[:300] or type(e).__name__
        raise ValueError(f"{path} could not be loaded as a Keras model ({type(e).__name__}: "
                         f"{reason}): save or convert it again with this package.") from None


def _check_deit_config(path):
    """Refuses a DeiT config that asks for more parameters than the archive's weights hold."""
    try:
        with zipfile.ZipFile(path) as archive:
            saved = json.loads(archive.read("config.json"))
            weights_bytes = archive.getinfo(WEIGHTS_NAME).file_size
    except (KeyError, ValueError, OSError, zipfile.BadZipFile) as e:
        raise ValueError(f"{path} is not a complete .keras archive ({e}): convert or save the "
                         "model again.") from None
    inner = saved.get("config") if isinstance(saved, dict) else None
    deit = inner.get("config") if isinstance(inner, dict) else None
    if not (isinstance(deit, dict) and "hidden_size" in deit):
        return  # not one of our models; the caller decides what to do with it
    try:
        config = DeiTConfig.from_dict(deit)
    except ConfigError as e:
        raise ConfigError(f"{path}: its config.json: {e}") from None
    needed = (min_parameters(config) + 1) // 2  # int4 packs two parameters in a byte
    if needed > weights_bytes:
        raise ValueError(
            f"{path} is refused before building: its config (hidden_size={config.hidden_size}, "
            f"num_hidden_layers={config.num_hidden_layers}, intermediate_size="
            f"{config.intermediate_size}) needs at least {needed:,} bytes of weights but its "
            f"weights file holds {weights_bytes:,} bytes; the archive was edited or is corrupt: save "
            "or convert it again."
        )
