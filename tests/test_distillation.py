"""Distillation: DeiT's losses (against numpy and facebookresearch/deit's PyTorch formula) and
`DeiTDistiller` with compile / fit / evaluate / save / load."""

import keras
import numpy as np
import pytest

import keras_deit as kd
from helpers import max_abs_diff, small_config, to_numpy
from keras_deit.training.distillation import (
    DeiTDistiller,
    distillation_loss,
    hard_distillation_loss,
    soft_distillation_loss,
)


def cnn_teacher(num_classes=5):
    """A small Keras CNN teacher (DeiT's was a RegNet), with BatchNorm statistics."""
    return keras.Sequential([
        keras.Input((32, 32, 3)),
        keras.layers.Conv2D(4, 3, strides=2),
        keras.layers.BatchNormalization(),
        keras.layers.GlobalAveragePooling2D(),
        keras.layers.Dense(num_classes),
    ], name="teacher")


def data(n=8, seed=0):
    rng = np.random.RandomState(seed)
    return rng.rand(n, 32, 32, 3).astype("float32"), np.arange(n) % 5


# ---- numpy reference ---------------------------------------------------------------------------
def np_log_softmax(z):
    z = np.asarray(z, "float64")
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def np_ce(logits, labels):
    return -np.mean(np_log_softmax(logits)[np.arange(len(labels)), labels])


def np_total(labels, cls, dist, teacher, kind, alpha, tau, normalization):
    cls, dist, teacher = (np.asarray(v, "float64") for v in (cls, dist, teacher))
    base = np_ce(cls, labels)
    if kind == "none":
        return base
    if kind == "hard":
        kd_loss = np_ce(dist, teacher.argmax(-1))
    else:
        log_s, log_t = np_log_softmax(dist / tau), np_log_softmax(teacher / tau)
        kl = np.sum(np.exp(log_t) * (log_t - log_s)) * tau * tau
        kd_loss = kl / (dist.size if normalization == "deit" else len(dist))
    return (1 - alpha) * base + alpha * kd_loss


CASES = [
    ("none", 0.5, 1.0, "deit"),
    ("hard", 0.5, 1.0, "deit"),
    ("hard", 0.3, 1.0, "deit"),
    ("soft", 0.5, 1.0, "deit"),
    ("soft", 0.7, 3.0, "deit"),
    ("soft", 0.5, 2.0, "timm"),
]


def random_logits(seed=1, batch=6, classes=5):
    rng = np.random.RandomState(seed)
    cls, dist, teacher = (rng.randn(batch, classes).astype("float32") * 3 for _ in range(3))
    return rng.randint(0, classes, batch), cls, dist, teacher


@pytest.mark.parametrize("kind, alpha, tau, normalization", CASES)
def test_losses_match_a_hand_computation(kind, alpha, tau, normalization):
    labels, cls, dist, teacher = random_logits()
    ours = distillation_loss(labels, cls, dist, teacher, kind, alpha, tau, normalization)
    expected = np_total(labels, cls, dist, teacher, kind, alpha, tau, normalization)
    assert abs(float(to_numpy(ours)) - expected) < 1e-5


@pytest.mark.parametrize("kind, alpha, tau, normalization", CASES)
def test_losses_match_the_deit_pytorch_formula(kind, alpha, tau, normalization):
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    labels, cls, dist, teacher = random_logits()
    s, t, c = (torch.tensor(v, dtype=torch.float64) for v in (dist, teacher, cls))
    y = torch.tensor(labels)
    # facebookresearch/deit losses.py, DistillationLoss.forward (base criterion: cross-entropy).
    base = F.cross_entropy(c, y)
    if kind == "none":
        reference = base
    else:
        if kind == "soft":
            kd_loss = F.kl_div(F.log_softmax(s / tau, dim=1), F.log_softmax(t / tau, dim=1),
                               reduction="sum", log_target=True) * (tau * tau)
            kd_loss = kd_loss / (s.numel() if normalization == "deit" else s.shape[0])
        else:
            kd_loss = F.cross_entropy(s, t.argmax(dim=1))
        reference = base * (1 - alpha) + kd_loss * alpha
    ours = distillation_loss(labels, cls, dist, teacher, kind, alpha, tau, normalization)
    assert abs(float(to_numpy(ours)) - float(reference)) < 1e-5


def test_kd_terms_take_no_gradient_from_the_teacher_and_weigh_samples():
    _, _, dist, teacher = random_logits()
    weights = np.array([1, 0, 1, 0, 1, 0], "float32")
    # A zero weight drops a sample; the reduction stays "sum over batch size" as in Keras.
    for loss in (hard_distillation_loss, lambda s, t, sample_weight: soft_distillation_loss(
            s, t, 2.0, "timm", sample_weight)):
        full = float(to_numpy(loss(dist[::2], teacher[::2], sample_weight=None)))
        weighted = float(to_numpy(loss(dist, teacher, sample_weight=weights)))
        assert abs(weighted - full / 2) < 1e-5


# ---- DeiTDistiller -----------------------------------------------------------------------------
def student_and_teacher():
    return kd.DeiTForImageClassificationWithTeacher(small_config()), cnn_teacher()


@pytest.mark.parametrize("kind", ["hard", "soft"])
def test_distiller_trains_the_student_and_never_the_teacher(kind):
    student, teacher = student_and_teacher()
    images, labels = data()
    distiller = DeiTDistiller(student, teacher, distillation_type=kind, alpha=0.5, tau=2.0)
    distiller.compile(keras.optimizers.Adam(1e-2), metrics=["accuracy"])
    teacher_ids = {id(w) for w in teacher.weights}
    assert not any(id(v) in teacher_ids for v in distiller.trainable_variables)
    # evaluate: the DeiT loss of the student's heads against the teacher, and the accuracy
    # of the averaged logits (the inference prediction).
    out = student(images)
    cls, dist, logits = (to_numpy(out[k]) for k in ("cls_logits", "distillation_logits", "logits"))
    teacher_logits = to_numpy(teacher(images, training=False))
    result = distiller.evaluate(images, labels, batch_size=8, verbose=0, return_dict=True)
    expected = np_total(labels, cls, dist, teacher_logits, kind, 0.5, 2.0, "deit")
    assert abs(result["loss"] - expected) < 1e-5
    assert abs(result["accuracy"] - np.mean(logits.argmax(-1) == labels)) < 1e-6
    assert {"base_loss", "distillation_loss"} <= set(result)

    teacher_before = [to_numpy(w) for w in teacher.weights]
    student_before = [to_numpy(w) for w in student.trainable_weights]
    history = distiller.fit(images, labels, epochs=3, batch_size=4, verbose=0).history
    assert history["loss"][-1] < history["loss"][0]
    assert all(max_abs_diff(w, b) == 0 for w, b in zip(teacher.weights, teacher_before))
    assert all(max_abs_diff(w, b) > 0 for w, b in zip(student.trainable_weights, student_before))
    # Inference is the student's averaged heads.
    predicted = distiller.predict(images, verbose=0)
    assert max_abs_diff(predicted["logits"], student(images)["logits"]) < 1e-5


@pytest.mark.filterwarnings("ignore:Gradients do not exist")
def test_none_matches_deit_class_head_only():
    student, teacher = student_and_teacher()
    images, labels = data()
    distiller = DeiTDistiller(student, teacher, distillation_type="none")
    distiller.compile(keras.optimizers.SGD(0.1))
    head = to_numpy(student.get_layer("distillation_classifier").kernel)
    cls = to_numpy(student(images)["cls_logits"])
    loss = to_numpy(distiller.compute_loss(images, labels, student(images)))
    assert abs(float(loss) - np_ce(cls, labels)) < 1e-5
    distiller.fit(images, labels, epochs=1, verbose=0)
    # deit's "none" trains the class head only: the distillation head is left as it was.
    assert max_abs_diff(student.get_layer("distillation_classifier").kernel, head) == 0


def test_distiller_saves_and_loads(tmp_path):
    student, teacher = student_and_teacher()
    images, labels = data()
    distiller = DeiTDistiller(student, teacher, distillation_type="soft", tau=2.0,
                              soft_normalization="timm",
                              teacher_preprocessing=keras.layers.Rescaling(2.0, offset=-1.0))
    distiller.compile(keras.optimizers.Adam(1e-3), metrics=["accuracy"])
    distiller.fit(images, labels, verbose=0)
    path = str(tmp_path / "distiller.keras")
    distiller.save(path)
    restored = keras.saving.load_model(path)
    assert isinstance(restored, DeiTDistiller) and restored.compiled
    assert (restored.distillation_type, restored.tau, restored.soft_normalization) == (
        "soft", 2.0, "timm")
    assert not restored.teacher.trainable_weights
    out = restored.predict(images, verbose=0)
    assert max_abs_diff(out["logits"], student(images)["logits"]) < 1e-5
    expected = distiller.compute_loss(images, labels, student(images))
    actual = restored.compute_loss(images, labels, restored.student(images))
    assert max_abs_diff(actual, expected) < 1e-5
    restored.fit(images, labels, verbose=0)


def test_precomputed_logits_and_plain_callable_teachers():
    student = kd.DeiTForImageClassificationWithTeacher(small_config())
    images, labels = data()
    teacher_logits = np.random.RandomState(3).randn(8, 5).astype("float32")
    distiller = DeiTDistiller(student, distillation_type="hard")
    distiller.compile(keras.optimizers.Adam(1e-3), loss="sparse_categorical_crossentropy",
                      metrics=["accuracy"])
    inputs = {"pixel_values": images, "teacher_logits": teacher_logits}
    out = student(images)
    expected = np_total(labels, to_numpy(out["cls_logits"]), to_numpy(out["distillation_logits"]),
                        teacher_logits, "hard", 0.5, 1.0, "deit")
    assert abs(float(to_numpy(distiller.compute_loss(inputs, labels, out))) - expected) < 1e-5
    distiller.fit(inputs, labels, epochs=1, verbose=0)
    # A plain function as teacher, with a preprocessing function of its own.
    projection = np.random.RandomState(4).randn(3, 5).astype("float32")

    def teacher(x):
        return {"logits": keras.ops.matmul(keras.ops.mean(x, axis=(1, 2)), projection)}

    distiller = DeiTDistiller(student, teacher, distillation_type="soft",
                              teacher_preprocessing=lambda x: x * 2.0 - 1.0)
    expected_teacher = (images * 2 - 1).mean(axis=(1, 2)) @ projection
    assert max_abs_diff(distiller.teacher_logits(images), expected_teacher) < 1e-5
    distiller.compile(keras.optimizers.Adam(1e-3))
    distiller.fit(images, labels, epochs=1, verbose=0)


def test_soft_targets_are_single_label_for_the_distiller():
    # mixup / cutmix / smoothed rows: deit's SoftTargetCrossEntropy, whatever problem_type says.
    student = kd.DeiTForImageClassificationWithTeacher(small_config())
    images, labels = data()
    targets = (np.eye(5)[labels] * 0.9 + 0.02).astype("float32")
    teacher_logits = np.random.RandomState(3).randn(8, 5).astype("float32")
    distiller = DeiTDistiller(student, distillation_type="soft")
    distiller.compile(keras.optimizers.Adam(1e-2))
    inputs = {"pixel_values": images, "teacher_logits": teacher_logits}
    out = student(images)
    base = -np.mean((targets * np_log_softmax(to_numpy(out["cls_logits"]))).sum(-1))
    result = distiller.evaluate(inputs, targets, batch_size=8, verbose=0, return_dict=True)
    assert abs(result["base_loss"] - base) < 1e-5
    history = distiller.fit(inputs, targets, batch_size=8, epochs=3, verbose=0).history
    assert history["loss"][-1] < history["loss"][0]


# ---- bad input, before any step ----------------------------------------------------------------
def test_teacher_with_other_classes_is_refused():
    student = kd.DeiTForImageClassificationWithTeacher(small_config())
    images, labels = data(4)
    with pytest.raises(ValueError, match=r"teacher predicts 7 classes.*num_labels=5"):
        DeiTDistiller(student, cnn_teacher(7))
    distiller = DeiTDistiller(student, lambda x: keras.ops.zeros((x.shape[0], 3)))
    distiller.compile("adam")
    with pytest.raises(ValueError, match=r"teacher predicts 3 classes"):
        distiller.fit(images, labels, verbose=0)
    distiller = DeiTDistiller(student)
    distiller.compile("adam")
    with pytest.raises(ValueError, match=r"teacher_logits with 3 classes"):
        distiller.fit({"pixel_values": images, "teacher_logits": np.zeros((4, 3), "float32")},
                      labels, verbose=0)
    with pytest.raises(ValueError, match=r"needs a teacher or precomputed logits"):
        distiller.fit(images, labels, verbose=0)


def test_bad_labels_student_and_options_are_named():
    student, teacher = student_and_teacher()
    images, labels = data(4)
    distiller = DeiTDistiller(student, teacher)
    distiller.compile("adam")
    weights = [to_numpy(w) for w in student.weights]
    with pytest.raises(ValueError, match=r"values \[7\]"):
        distiller.fit(images, np.array([0, 1, 7, 2]), verbose=0)
    with pytest.raises(ValueError, match="trains on labels"):
        distiller.fit(images, verbose=0)
    assert all(max_abs_diff(a, b) == 0 for a, b in zip(student.weights, weights))
    with pytest.raises(ValueError, match="DeiTForImageClassificationWithTeacher"):
        DeiTDistiller(kd.DeiTForImageClassification(small_config()), teacher)
    with pytest.raises(ValueError, match="distillation_type"):
        DeiTDistiller(student, teacher, distillation_type="soft_fd")
    with pytest.raises(ValueError, match="alpha"):
        DeiTDistiller(student, teacher, alpha=1.5)
    with pytest.raises(ValueError, match="soft_normalization"):
        DeiTDistiller(student, teacher, soft_normalization="mean")
    with pytest.raises(ValueError, match="single-label"):
        DeiTDistiller(kd.DeiTForImageClassificationWithTeacher(small_config(num_labels=1)))
