"""The built-in model `deit-digits` (benchmarks/distillation_experiment.py): it loads on the
current backend, reads the bundled example PNGs and scikit-learn's digits test split through PNG
files and its own preprocessor_config.json, and is the default of `keras-deit predict`."""

import glob
import io
import os

import numpy as np
import pytest
from PIL import Image

import keras_deit
from keras_deit.cli import main
from keras_deit.inference import BUILTIN_MODELS, load_classifier

DATA = os.path.join(os.path.dirname(keras_deit.__file__), "data")
EXAMPLES = sorted(glob.glob(os.path.join(DATA, "examples", "digit_*.png")))
# Measured when the model was trained (JAX): 10/10 on the examples, 92.04% on the 540-image test
# split (in memory and through PNG files alike); the margins absorb backend rounding only.
EXAMPLES_MIN_ACCURACY = 0.9
TEST_SPLIT_MIN_ACCURACY = 0.90


@pytest.fixture(scope="module")
def builtin():
    return load_classifier("deit-digits")


def digit_of(path):
    """The true digit, from the file name digit_<label>_<index>.png."""
    return int(os.path.basename(path).split("_")[1])


def predicted_digits(model, processor, pictures):
    # One batch: per-batch overhead dominates on eager PyTorch.
    logits = model.predict(processor(pictures)["pixel_values"], batch_size=len(pictures),
                           verbose=0)["logits"]
    return np.argmax(np.asarray(logits), axis=-1)


def test_the_bundled_model_is_small_labelled_and_preprocessed_as_trained(builtin):
    model, processor = builtin
    assert os.path.getsize(BUILTIN_MODELS["deit-digits"]) < 2e6
    assert model.config.id2label == {i: str(i) for i in range(10)}
    assert model.config.use_distillation_token
    # The training preprocessing: 32x32 nearest resize, no crop, x/255, mean = std = 0.5.
    assert processor.size == {"height": 32, "width": 32}
    assert processor.resample == int(Image.Resampling.NEAREST)
    assert not processor.do_center_crop
    assert processor.image_mean == [0.5] * 3 and processor.image_std == [0.5] * 3
    assert 6 <= len(EXAMPLES) <= 10


def test_it_reads_the_bundled_examples(builtin):
    model, processor = builtin
    pictures = [Image.open(path).convert("RGB") for path in EXAMPLES]
    predicted = predicted_digits(model, processor, pictures)
    truth = np.array([digit_of(path) for path in EXAMPLES])
    assert np.mean(predicted == truth) >= EXAMPLES_MIN_ACCURACY


def test_it_reads_the_digits_test_split_through_png_files(builtin):
    """The experiment's split, each digit saved as its 64x64 PNG (nearest upscale of the 8x8
    image, values 0-16 -> 0-255) and read back as `keras-deit predict` reads files, gives the
    very tensors of training (the 8x8 image through the same processor) and the accuracy."""
    datasets = pytest.importorskip("sklearn.datasets")
    model_selection = pytest.importorskip("sklearn.model_selection")
    digits = datasets.load_digits()
    labels = digits.target
    _, test_idx = model_selection.train_test_split(
        np.arange(len(labels)), test_size=0.3, stratify=labels, random_state=0)
    images8 = np.round(digits.images[test_idx] * (255.0 / 16.0)).astype(np.uint8)
    pictures = []
    for image in images8:
        buffer = io.BytesIO()
        Image.fromarray(image).resize((64, 64), Image.Resampling.NEAREST).save(buffer, "PNG")
        buffer.seek(0)
        pictures.append(Image.open(buffer).convert("RGB"))
    model, processor = builtin
    in_memory = processor([np.repeat(image[..., None], 3, -1) for image in images8])
    np.testing.assert_array_equal(processor(pictures)["pixel_values"], in_memory["pixel_values"])
    predicted = predicted_digits(model, processor, pictures)
    assert len(test_idx) == 540
    assert np.mean(predicted == labels[test_idx]) >= TEST_SPLIT_MIN_ACCURACY


def test_predict_uses_the_builtin_model_by_default(capsys):
    path = EXAMPLES[0]
    assert main(["predict", path, "--top-k", "2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == path
    assert lines[1].split()[:2] == ["1.", str(digit_of(path))]


def test_help_names_the_default(capsys):
    with pytest.raises(SystemExit):
        main(["predict", "--help"])
    assert "deit-digits" in capsys.readouterr().out
