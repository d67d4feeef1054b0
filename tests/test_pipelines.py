"""Every Keras input pipeline trains, evaluates and predicts every task model and the distiller:
numpy arrays, tf.data (integer, one-hot and soft labels, sample weights, dict inputs), a folder
read by `keras.utils.image_dataset_from_directory`, Python generators, `keras.utils.PyDataset`
and `torch.utils.data.DataLoader` (Keras reads it on every backend)."""

import math

import keras
import numpy as np
import pytest

import keras_deit as kd
from helpers import max_abs_diff, small_config, to_numpy

N, BATCH, CLASSES, SIZE, PATCHES = 8, 4, 5, 32, 16


def cnn_teacher():
    return keras.Sequential([
        keras.Input((SIZE, SIZE, 3)),
        keras.layers.Conv2D(4, 3, strides=2),
        keras.layers.GlobalAveragePooling2D(),
        keras.layers.Dense(CLASSES),
    ], name="teacher")


# ---- the model families: (model, inputs for images, whether it trains on labels) --------------
def build(family, labels):
    """A compiled model of `family` for targets of kind `labels` ("int", "onehot", "soft")."""
    loss = None
    if family == "simmim":
        model = kd.DeiTForMaskedImageModeling(small_config())
    elif family in CLASSIFIERS:
        # Float rows are soft targets of a single-label head when the config says so; one-hot
        # rows go through Keras' own categorical cross-entropy.
        changes = dict(problem_type="single_label_classification") if labels == "soft" else {}
        model = CLASSIFIERS[family](small_config(**changes))
        loss = "categorical_crossentropy" if labels == "onehot" else None
    else:
        # The distiller's student is single-label: one model for every kind of target.
        teacher = cnn_teacher() if family == "distiller" else None
        student = kd.DeiTForImageClassificationWithTeacher(small_config())
        model = kd.DeiTDistiller(student, teacher, distillation_type="hard")
    model.compile(keras.optimizers.Adam(1e-2), loss=loss)
    return model


_MODELS = {}


def model_for(family, labels="int"):
    """The module's one compiled model per family and kind of target. Each test still checks
    what its own `fit` changed; sharing the model reuses its compiled steps, which a fresh
    model per test would spend most of the module's time building."""
    key = (family, labels if family in CLASSIFIERS else "any")
    if key not in _MODELS:
        _MODELS[key] = build(family, labels)
    return _MODELS[key]


CLASSIFIERS = {
    "classifier": kd.DeiTForImageClassification,
    "with_teacher": kd.DeiTForImageClassificationWithTeacher,
}
# "distiller_logits": the teacher's logits come with the data instead of a teacher model.
LABELLED = ["classifier", "with_teacher", "distiller", "distiller_logits"]


def inputs(family, images, seed=0):
    """What the model takes for `images`: the images, or the dict of its family."""
    rng = np.random.RandomState(seed)
    if family == "simmim":
        return {"pixel_values": images, "bool_masked_pos": rng.rand(len(images), PATCHES) < 0.5}
    if family == "distiller_logits":
        teacher_logits = rng.randn(len(images), CLASSES).astype("float32")
        return {"pixel_values": images, "teacher_logits": teacher_logits}
    return images


def targets(kind, n=N):
    ids = np.arange(n) % CLASSES
    if kind == "int":
        return ids
    onehot = np.eye(CLASSES, dtype="float32")[ids]
    if kind == "onehot":
        return onehot
    # Label smoothing 0.1 then a mixup of each row with the next one, as the DeiT recipe does.
    smoothed = onehot * 0.9 + 0.1 / CLASSES
    return 0.6 * smoothed + 0.4 * np.roll(smoothed, 1, axis=0)


# ---- the pipelines: each turns (x, y, sample_weight) into the arguments of fit / evaluate ------
def take(tree, start, stop):
    if isinstance(tree, dict):
        return {key: value[start:stop] for key, value in tree.items()}
    return tree[start:stop]


def batches(x, y, weight):
    """The (x[, y[, weight]]) batches, tuples as Keras asks of generators."""
    for start in range(0, N, BATCH):
        yield tuple(take(v, start, start + BATCH) for v in (x, y, weight) if v is not None)


def numpy_arrays(x, y, weight):
    return (x, y), dict(batch_size=BATCH, sample_weight=weight)


def tf_dataset(x, y, weight):
    tf = pytest.importorskip("tensorflow")
    parts = [v for v in (x, y, weight) if v is not None]
    return (tf.data.Dataset.from_tensor_slices(parts[0] if len(parts) == 1 else tuple(parts))
            .batch(BATCH),), {}


def python_generator(x, y, weight):
    return (batches(x, y, weight),), {}


class Batches(keras.utils.PyDataset):
    """A `keras.utils.PyDataset` serving fixed batches by index."""

    def __init__(self, x, y, weight):
        super().__init__()
        self.items = list(batches(x, y, weight))

    def __len__(self):
        return len(self.items)

    def __getitem__(self, index):
        return self.items[index]


def py_dataset(x, y, weight):
    return (Batches(x, y, weight),), {}


def torch_dataloader(x, y, weight):
    torch = pytest.importorskip("torch")

    class Samples(torch.utils.data.Dataset):
        def __len__(self):
            return N

        def __getitem__(self, i):
            part = [take(v, i, i + 1) for v in (x, y, weight) if v is not None]
            # One sample: the batch axis dropped; torch's collate stacks samples (and dicts).
            part = [{k: v[0] for k, v in p.items()} if isinstance(p, dict) else p[0] for p in part]
            return tuple(part)

    return (torch.utils.data.DataLoader(Samples(), batch_size=BATCH),), {}


PIPELINES = {
    "numpy": numpy_arrays,
    "tf_data": tf_dataset,
    "generator": python_generator,
    "py_dataset": py_dataset,
    "torch_dataloader": torch_dataloader,
}


def trainable_snapshot(model):
    return [to_numpy(v) for v in model.trainable_variables]


def check_fit_evaluate_predict(model, family, pipeline, x, y, weight=None, predict_x=None,
                               n=N):
    """fit changes the weights with a finite loss; evaluate returns finite numbers; predict
    returns one output row per image."""
    before = trainable_snapshot(model)
    args, kwargs = pipeline(x, y, weight)
    history = model.fit(*args, epochs=1, verbose=0, **kwargs).history
    assert math.isfinite(history["loss"][-1]), history
    changed = [max_abs_diff(a, b) > 0 for a, b in zip(model.trainable_variables, before)]
    assert sum(changed) > len(changed) // 2, f"{sum(changed)} of {len(changed)} variables moved"
    args, kwargs = pipeline(x, y, weight)  # Generators are spent: a fresh one.
    result = model.evaluate(*args, verbose=0, return_dict=True, **kwargs)
    assert result and all(math.isfinite(float(v)) for v in result.values()), result
    args, kwargs = pipeline(x if predict_x is None else predict_x, None, None)
    kwargs.pop("sample_weight", None)
    predicted = model.predict(args[0], verbose=0, **kwargs)
    if family == "simmim":
        assert predicted["reconstruction"].shape == (n, SIZE, SIZE, 3)
    else:
        assert predicted["logits"].shape == (n, CLASSES)
        assert np.isfinite(predicted["logits"]).all()
    return result


# ---- 1. each pipeline x each model family -----------------------------------------------------
def images(n=N, seed=0):
    return np.random.RandomState(seed).rand(n, SIZE, SIZE, 3).astype("float32")


@pytest.mark.parametrize("pipeline", list(PIPELINES))
@pytest.mark.parametrize("family", LABELLED + ["simmim"])
def test_pipeline_trains_evaluates_and_predicts(family, pipeline):
    model = model_for(family)
    x = inputs(family, images())
    y = None if family == "simmim" else targets("int")
    check_fit_evaluate_predict(model, family, PIPELINES[pipeline], x, y)


# ---- 2. tf.data with one-hot and soft labels, and sample weights ------------------------------
# One family per loss code path (WithTeacher averages the classifier's loss over its heads; the
# distiller's loss is the same with teacher logits in the data), to keep the module fast.
@pytest.mark.parametrize("labels", ["onehot", "soft"])
@pytest.mark.parametrize("family", ["classifier", "distiller"])
def test_tf_data_with_float_label_rows(family, labels):
    model = model_for(family, labels)
    check_fit_evaluate_predict(model, family, tf_dataset, inputs(family, images()),
                               targets(labels))


@pytest.mark.parametrize("family", ["classifier", "distiller"])
def test_tf_data_sample_weights_weigh_the_loss(family):
    model = model_for(family)
    x, y = inputs(family, images()), targets("int")
    check_fit_evaluate_predict(model, family, tf_dataset, x, y, np.ones(N, "float32"))
    # The weights reach the loss: doubling them doubles it (Keras' sum / batch reduction).
    once, twice = (
        model.evaluate(*tf_dataset(x, y, np.full(N, w, "float32"))[0], verbose=0,
                       return_dict=True)["loss"]
        for w in (1.0, 2.0)
    )
    assert abs(twice - 2 * once) < 1e-4 * max(1.0, abs(once)), (once, twice)


# ---- 3. a folder of PNGs through keras.utils.image_dataset_from_directory ----------------------
@pytest.fixture(scope="module")
def image_folder(tmp_path_factory):
    """Four PNGs in each of five class folders: whole batches, so no step is compiled twice."""
    root = tmp_path_factory.mktemp("images")
    rng = np.random.RandomState(0)
    for label in range(CLASSES):
        (root / f"class_{label}").mkdir()
        for i in range(4):
            pixels = rng.randint(0, 256, (SIZE, SIZE, 3)).astype("uint8")
            keras.utils.save_img(str(root / f"class_{label}" / f"{i}.png"), pixels)
    return str(root)


@pytest.mark.parametrize("family", LABELLED + ["simmim"])
def test_image_dataset_from_directory(family, image_folder):
    pytest.importorskip("tensorflow")
    import tensorflow as tf

    folder = keras.utils.image_dataset_from_directory(
        image_folder, image_size=(SIZE, SIZE), batch_size=BATCH, shuffle=False)
    assert folder.class_names == [f"class_{i}" for i in range(CLASSES)]
    rescale = keras.layers.Rescaling(1 / 255)

    def to_model(pixels, labels):
        pixels = rescale(pixels)
        if family == "simmim":
            masks = tf.random.uniform((tf.shape(pixels)[0], PATCHES)) < 0.5
            return {"pixel_values": pixels, "bool_masked_pos": masks}
        if family == "distiller_logits":
            # Precomputed teacher logits, here looked up per class.
            return {"pixel_values": pixels,
                    "teacher_logits": tf.one_hot(labels, CLASSES) * 3.0}, labels
        return pixels, labels

    dataset = folder.map(to_model)
    model = model_for(family)
    before = trainable_snapshot(model)
    history = model.fit(dataset, epochs=2, verbose=0).history
    assert all(math.isfinite(v) for v in history["loss"])
    assert any(max_abs_diff(a, b) > 0 for a, b in zip(model.trainable_variables, before))
    result = model.evaluate(dataset, verbose=0, return_dict=True)
    assert math.isfinite(result["loss"])
    predicted = model.predict(dataset, verbose=0)
    key = "reconstruction" if family == "simmim" else "logits"
    assert predicted[key].shape[0] == 4 * CLASSES


# ---- 4. label checks on datasets: from the spec before any step, never a crash -----------------
def test_dataset_label_specs_are_checked_before_any_step():
    tf = pytest.importorskip("tensorflow")
    model = model_for("classifier")
    onehot_ids = tf.data.Dataset.from_tensor_slices(
        (images(), np.eye(CLASSES, dtype="int64")[targets("int")])).batch(BATCH)
    with pytest.raises(ValueError, match="one-hot or multi-hot"):
        model.fit(onehot_ids, verbose=0)
    wrong_width = tf.data.Dataset.from_tensor_slices(
        (images(), np.zeros((N, 3), "float32"))).batch(BATCH)
    with pytest.raises(ValueError, match=r"\(batch, 5\)"):
        model.evaluate(wrong_width, verbose=0)
    distiller = model_for("distiller")
    with pytest.raises(ValueError, match="one-hot or multi-hot"):
        distiller.fit(onehot_ids, verbose=0)
    logits = tf.data.Dataset.from_tensor_slices(
        ({"pixel_values": images(), "teacher_logits": np.zeros((N, 3), "float32")},
         targets("int"))).batch(BATCH)
    with pytest.raises(ValueError, match="teacher_logits with 3 classes"):
        model_for("distiller_logits").fit(logits, verbose=0)
