"""The losses (keras_deit.losses) as the task models apply them: the loss each problem type
implies, soft targets, and the warning for float rows without a problem type."""

import warnings

import keras
import numpy as np
import pytest

import keras_deit as kd
from helpers import (
    batch, head_outputs, np_bce, np_cross_entropy, np_log_softmax, np_mse, small_config, to_numpy,
)

HEADS = [kd.DeiTForImageClassification, kd.DeiTForImageClassificationWithTeacher]

PROBLEMS = {
    # name: (config changes, labels for a batch of n, numpy reference loss)
    "single_label": (dict(), lambda n: np.arange(n) % 5, np_cross_entropy),
    "multi_label": (dict(),
                    lambda n: (np.arange(n * 5).reshape(n, 5) % 3 == 0).astype("float32"), np_bce),
    "regression": (dict(num_labels=1), lambda n: np.linspace(-1, 1, n).astype("float32"), np_mse),
    "soft_targets": (dict(problem_type="single_label_classification"),
                     lambda n: (np.eye(5)[np.arange(n) % 5] * 0.9 + 0.02).astype("float32"),
                     lambda logits, t: float(-np.mean((t * np_log_softmax(logits)).sum(-1)))),
}


@pytest.mark.parametrize("cls", HEADS, ids=lambda c: c.__name__)
def test_default_loss_follows_the_problem_type(cls):
    images, _ = batch()
    for problem, (changes, make_labels, reference) in PROBLEMS.items():
        model = cls(small_config(**changes))
        model.compile("adam")
        labels = make_labels(len(images))
        loss = to_numpy(model.compute_loss(images, labels, model(images)))
        # transformers' loss; WithTeacher: the mean over its two heads.
        expected = np.mean([reference(logits, labels) for logits in head_outputs(model, images)])
        assert abs(loss - expected) < 1e-5, (problem, loss, expected)


def soft_targets(n=8):
    """Label-smoothed rows mixed with the next ones, as mixup / cutmix produce them."""
    onehot = np.eye(5, dtype="float32")[np.arange(n) % 5]
    smoothed = onehot * 0.9 + 0.02
    return 0.7 * smoothed + 0.3 * np.roll(smoothed, 1, axis=0)


def float_row_warnings(caught):
    return [w for w in caught if "problem_type is unset" in str(w.message)]


@pytest.mark.parametrize("cls", HEADS, ids=lambda c: c.__name__)
def test_soft_targets_train_with_softmax_cross_entropy(cls):
    images, targets = batch()[0], soft_targets()
    model = cls(small_config(problem_type="single_label_classification"))
    model.compile(keras.optimizers.Adam(1e-2))
    reference = np.mean([float(-np.mean((targets * np_log_softmax(z)).sum(-1)))
                         for z in head_outputs(model, images)])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        loss = model.evaluate(images, targets, batch_size=8, verbose=0)
        history = model.fit(images, targets, batch_size=8, epochs=3, verbose=0).history["loss"]
    assert abs(loss - reference) < 1e-5
    assert history[-1] < history[0]
    assert not float_row_warnings(caught)


@pytest.mark.parametrize("cls", HEADS, ids=lambda c: c.__name__)
def test_float_rows_without_problem_type_warn_once_per_model(cls):
    images, targets = batch()[0], soft_targets()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = cls(small_config())
        model.compile(keras.optimizers.Adam(1e-2))
        reference = np.mean([np_bce(z, targets) for z in head_outputs(model, images)])
        loss = model.evaluate(images, targets, batch_size=8, verbose=0)
        model.fit(images, targets, batch_size=4, epochs=2, verbose=0)
        model.evaluate(images, targets, batch_size=4, verbose=0)
    # transformers' rule stands (sigmoid cross-entropy), and says so once, naming both options.
    assert abs(loss - reference) < 1e-5
    [warning] = float_row_warnings(caught)
    message = str(warning.message)
    assert "problem_type='single_label_classification'" in message
    assert "problem_type='multi_label_classification'" in message
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        other = cls(small_config())
        other.compile("adam")
        other.evaluate(images, targets, batch_size=8, verbose=0)  # Another model: again.
        multi = cls(small_config(problem_type="multi_label_classification"))
        multi.compile("adam")
        multi.evaluate(images, targets, batch_size=8, verbose=0)  # Said what they are: silent.
        multi_hot = cls(small_config())
        multi_hot.compile("adam")
        multi_hot.evaluate(images, targets > 0.5, batch_size=8, verbose=0)  # bool: multi-hot.
    assert len(float_row_warnings(caught)) == 1
