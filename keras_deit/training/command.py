"""`keras-deit train`: fine-tune (or train from scratch) a DeiT classifier on a folder of images.

    DATA_DIR/<class>/<image>            a validation split is held out (stratified), or
    DATA_DIR/train/<class>/<image> and DATA_DIR/val/<class>/<image>

`train_folder` checks everything before it writes anything (the folder, a readable image per
class, the teacher's classes, the checkpoint for `resume`), then trains with `model.fit` on
images streamed from disk (`keras_deit.training.image_folder`, `tf.data`, any backend): the
pixels of the folder are never all in memory. Each epoch writes, atomically,
`NAME.checkpoint.npz` (student weights and optimizer state, for `resume`) and then
`NAME.keras` (the student, loadable by `keras-deit predict`, `keras-deit export` and
`from_pretrained`) beside `preprocessor_config.json`, so an interrupt (Ctrl-C) leaves the last
complete epoch and never a half-written file. `NAME.log.csv` holds the epoch logs, images/s
included (and `NAME.tensorboard/` when TensorBoard is installed). A finished run removes its
checkpoint.

Unreadable image files (and images over Pillow's pixel limit) are skipped and counted while
streaming, so one corrupt file does not stop a large run; a class whose files all fail the
header check (JPEG, PNG, GIF or BMP within the limit) is an error before training.
"""

import contextlib
import dataclasses
import importlib.util
import json
import os
import signal
import threading
import time
import warnings

import keras
import numpy as np
from keras import ops

from keras_deit.inference import load_classifier
from keras_deit.training.recipe import DISTILLATION_CHOICES, RECIPES

from keras_deit.training.image_folder import (IMAGE_EXTENSIONS, MAX_IMAGE_PIXELS,
                                              class_images, find_classes, first_readable)

# The formats the stream decodes (`image_folder.declared_shape`), as Pillow names them.
# The classifier layers, replaced when the folder's classes differ from the checkpoint's.
HEAD_LAYERS = ("classifier", "cls_classifier", "distillation_classifier")


@dataclasses.dataclass
class ImageFolder:
    """The images `list_image_folder` found: paths and integer labels per split, class names
    (sorted folder names; label i is `class_names[i]`)."""

    class_names: list
    train_paths: list
    train_labels: list
    val_paths: list
    val_labels: list


def _class_files(folder):
    """{class name: image paths} of the class folders in `folder` (found recursively, in
    torchvision's order, as the streaming reader indexes them)."""
    files = {}
    for name in find_classes(folder):
        files[name] = class_images(folder, name)
        if not files[name]:
            raise ValueError(f"the class folder {os.path.join(folder, name)} holds no images "
                             f"({', '.join(IMAGE_EXTENSIONS)}): add images or remove the folder.")
    return files


def list_image_folder(data_dir, validation_split=0.1, seed=0):
    """The class folders of `data_dir`, and a train / validation split of their images.

    With `data_dir/val/` the split is `train/` and `val/` (same class folders); otherwise
    `validation_split` of each class (at least one image of a class with two or more) is
    held out, chosen by `seed`.

    Returns:
        An `ImageFolder`.
    """
    if not os.path.isdir(data_dir):
        raise ValueError(f"{data_dir} is not a folder: pass a folder with one sub-folder of "
                         "images per class.")
    if not 0.0 < validation_split < 1.0:
        raise ValueError(f"the validation split must be in (0, 1). Received: {validation_split}")
    val_dir, train_dir = os.path.join(data_dir, "val"), os.path.join(data_dir, "train")
    if os.path.isdir(val_dir):
        if not os.path.isdir(train_dir):
            raise ValueError(f"{data_dir} has a val/ folder but no train/ folder: put the "
                             "training class folders in train/.")
        train, val = _class_files(train_dir), _class_files(val_dir)
        if sorted(train) != sorted(val):
            raise ValueError(f"train/ and val/ of {data_dir} hold different class folders "
                             f"({sorted(set(train) ^ set(val))} in only one): use the same.")
        names = list(train)
        pairs = [(p, i) for i, n in enumerate(names) for p in train[n]]
        val_pairs = [(p, i) for i, n in enumerate(names) for p in val[n]]
    else:
        files = _class_files(data_dir)
        names = list(files)
        rng = np.random.default_rng(seed)
        pairs, val_pairs = [], []
        for i, name in enumerate(names):
            paths = list(files[name])
            rng.shuffle(paths)
            held = int(round(len(paths) * validation_split)) if len(paths) > 1 else 0
            held = min(max(held, 1 if len(paths) > 1 else 0), len(paths) - 1)
            val_pairs += [(p, i) for p in paths[:held]]
            pairs += [(p, i) for p in paths[held:]]
    if len(names) < 2:
        raise ValueError(f"{data_dir} holds one class folder ({names[0]}); a classifier needs "
                         "two or more.")
    return ImageFolder(names, [p for p, _ in pairs], [i for _, i in pairs],
                       [p for p, _ in val_pairs], [i for _, i in val_pairs])


def _check_readable(folder, data_dir):
    """A ValueError unless every class has a training image, and the validation split an
    image, that `first_readable` accepts (a class of corrupt files would train blind)."""
    by_class = {}
    for path, label in zip(folder.train_paths, folder.train_labels):
        by_class.setdefault(label, []).append(path)
    missing = [name for i, name in enumerate(folder.class_names)
               if first_readable(by_class.get(i, [])) is None]
    if missing:
        raise ValueError(f"no readable training image in the class folder(s) {missing} (no file "
                         f"is a JPEG, PNG, GIF or BMP within {MAX_IMAGE_PIXELS} pixels): add "
                         "images or remove the folder(s).")
    if first_readable(folder.val_paths) is None:
        raise ValueError(f"{data_dir} leaves no readable validation image: add images, or a "
                         "val/ folder.")


def _processor_at(processor, image_size):
    """`processor` producing `image_size` squares (resize and crop set to it)."""
    from keras_deit.image_processing import DeiTImageProcessor

    config = processor.to_dict()
    square = {"height": image_size, "width": image_size}
    config["size"] = square
    config["crop_size"] = square
    return DeiTImageProcessor.from_dict(config)


def _copy_weights(source, target, keep_heads):
    """Copies every variable of `source` whose path and shape `target` shares (the heads only
    if `keep_heads`); the rest of `target` keeps its initialization."""
    by_path = {v.path: v for v in source.weights}
    for variable in target.weights:
        old = by_path.get(variable.path)
        head = variable.path.split("/")[0] in HEAD_LAYERS
        if old is not None and tuple(old.shape) == tuple(variable.shape) and (keep_heads or not head):
            variable.assign(ops.copy(ops.cast(old.value, variable.dtype)))


def build_student(source, class_names, image_size=None, from_scratch=False, drop_path_rate=None,
                  seed=0):
    """The model to train and its preprocessing: `source`'s architecture (and weights, unless
    `from_scratch`) with a head for `class_names` (kept when they are the checkpoint's own),
    `id2label` set, problem type single-label, at `image_size` (position embeddings resampled).

    Returns:
        (model, processor).
    """
    from keras_deit.training.fine_tuning import rebuild_at_image_size

    model, processor = load_classifier(source)
    size = image_size or model.config.image_hw[0]
    if size != model.config.image_hw[0] or image_size is not None:
        processor = _processor_at(processor, size)
    if tuple(model.config.image_hw) != (size, size):
        model = rebuild_at_image_size(model, size)
    id2label = {i: name for i, name in enumerate(class_names)}
    same_classes = ({int(k): v for k, v in model.config.id2label.items()} == id2label)
    changes = dict(id2label=id2label, label2id={n: i for i, n in id2label.items()},
                   problem_type="single_label_classification")
    if drop_path_rate is not None:
        changes["drop_path_rate"] = drop_path_rate
    config = model.config.replace(**changes)
    keras.utils.set_random_seed(seed)
    student = type(model).from_config(dict(model.get_config(), config=config))
    if not from_scratch:
        _copy_weights(model, student, keep_heads=same_classes)
    return student, processor


def _teacher_preprocessing(student_processor, teacher_processor, teacher_size):
    """Student pixels -> the teacher's: undo the student's normalization, apply the teacher's,
    resize (bilinear) when the sizes differ; None when nothing differs."""
    s_mean, s_std = (np.asarray(student_processor.image_mean, "float32"),
                     np.asarray(student_processor.image_std, "float32"))
    t_mean, t_std = (np.asarray(teacher_processor.image_mean, "float32"),
                     np.asarray(teacher_processor.image_std, "float32"))
    same_norm = np.array_equal(s_mean, t_mean) and np.array_equal(s_std, t_std)
    student_size = student_processor.crop_size["height"] if student_processor.do_center_crop \
        else student_processor.size.get("height")
    if same_norm and student_size == teacher_size:
        return None

    def preprocess(images):
        images = (images * s_std + s_mean - t_mean) / t_std
        if student_size != teacher_size:
            images = ops.image.resize(images, (teacher_size, teacher_size), "bilinear")
        return images

    return preprocess


def load_teacher(source, num_classes):
    """The teacher classifier and its processor; its class count must be `num_classes`."""

    teacher, processor = load_classifier(source)
    if teacher.config.num_labels != num_classes:
        raise ValueError(f"the teacher {source} has {teacher.config.num_labels} classes and the "
                         f"data {num_classes}: pass a teacher trained on these {num_classes} "
                         "classes.")
    return teacher, processor


def _paths(output):
    stem = output[: -len(".keras")]
    return dict(checkpoint=stem + ".checkpoint.npz", log=stem + ".log.csv",
                tensorboard=stem + ".tensorboard",
                preprocessor=os.path.join(os.path.dirname(os.path.abspath(output)),
                                          "preprocessor_config.json"))


@contextlib.contextmanager
def outside_distribution():
    """No Keras distribution within: saving a model creates variables (Keras' optimizer skip
    set), and under a multi-process distribution each is a collective that the processes
    other than the chief, which save nothing, never join."""
    previous = keras.distribution.distribution()
    keras.distribution.set_distribution(None)
    try:
        yield
    finally:
        keras.distribution.set_distribution(previous)


class EpochCheckpoint(keras.callbacks.Callback):
    """After each epoch, atomically: the training state (student weights by path, optimizer
    variables in order, the epoch count) to `checkpoint`, then the student to `output`."""

    def __init__(self, student, checkpoint, output):
        super().__init__()
        self.student, self.checkpoint, self.output = student, checkpoint, output

    def on_epoch_end(self, epoch, logs=None):
        from keras_deit.atomic import replacing

        arrays = {f"weight_{i}": ops.convert_to_numpy(v.value)
                  for i, v in enumerate(self.student.weights)}
        arrays.update({f"optimizer_{i}": ops.convert_to_numpy(v.value)
                       for i, v in enumerate(self.model.optimizer.variables)})
        arrays["paths"] = np.array([v.path for v in self.student.weights])
        arrays["epochs_done"] = np.array(epoch + 1)
        with replacing(self.checkpoint) as tmp:
            with open(tmp, "wb") as f:
                np.savez(f, **arrays)
        with outside_distribution():
            self.student.save(self.output)


def restore_checkpoint(path, student, trainer):
    """Loads an `EpochCheckpoint` into `student` and the (built) optimizer of `trainer`;
    returns the epochs it had completed."""
    if not os.path.isfile(path):
        raise ValueError(f"--resume: there is no checkpoint {path} (a finished run removes it): "
                         "run without --resume to start training.")
    with np.load(path) as saved:
        paths = [str(p) for p in saved["paths"]]
        if paths != [v.path for v in student.weights]:
            raise ValueError(f"the checkpoint {path} holds another model's variables: resume "
                             "with the same --model, --lora and --image-size.")
        optimizer = trainer.optimizer
        optimizer.build(trainer.trainable_variables)
        count = sum(1 for k in saved.files if k.startswith("optimizer_"))
        if count != len(optimizer.variables):
            raise ValueError(f"the checkpoint {path} holds another optimizer state: resume with "
                             "the same options as the run that wrote it.")
        for i, variable in enumerate(student.weights):
            variable.assign(saved[f"weight_{i}"])
        for i, variable in enumerate(optimizer.variables):
            variable.assign(saved[f"optimizer_{i}"])
        return int(saved["epochs_done"])


def _silent(*args, **kwargs):
    """The `print_fn` of the processes other than the chief."""


HEAD_OUTPUTS = ("logits", "cls_logits", "distillation_logits")


def _head_hits(model, pixel_values, labels, batch_size):
    """{output name: correct predictions} of every head on one batch of images."""
    labels = np.asarray(labels)
    # Padded to whole batches (several devices split every batch evenly); the pad is dropped.
    pad = -len(labels) % batch_size
    pixel_values = np.concatenate([pixel_values, np.zeros_like(pixel_values[:1]).repeat(pad, 0)])
    outputs = model.predict(pixel_values, batch_size=batch_size, verbose=0)
    return {name: int(np.sum(np.argmax(np.asarray(outputs[name])[:len(labels)], -1) == labels))
            for name in HEAD_OUTPUTS if name in outputs}


def head_accuracies(model, dataset, batch_size):
    """({output name: accuracy}, images scored) of every head over a dataset of (pixel_values
    (b, H, W, 3), labels (b,) int or (b, classes) one-hot) batches, one batch in memory."""
    totals, count = {}, 0
    for pixels, labels in dataset:
        labels = np.asarray(labels)
        labels = labels.argmax(-1) if labels.ndim == 2 else labels
        for name, value in _head_hits(model, np.asarray(pixels), labels, batch_size).items():
            totals[name] = totals.get(name, 0) + value
        count += len(labels)
    return {name: value / max(count, 1) for name, value in totals.items()}, count


class EpochSpeed(keras.callbacks.Callback):
    """Adds `images_per_second` (the epoch's training steps x `batch_size` over its wall
    time, validation included) to the epoch logs, so Keras' per-epoch line and the CSV log
    show it."""

    # Keras may run batch ends in worker threads (no device sync per step); it waits for
    # them before `on_epoch_end`. list.append is atomic.
    async_safe = True

    def __init__(self, batch_size):
        super().__init__()
        self.batch_size, self.start, self.ends = batch_size, None, []

    def on_epoch_begin(self, epoch, logs=None):
        self.start, self.ends = time.perf_counter(), []

    def on_train_batch_end(self, batch, logs=None):
        # At the end: a stream that runs out begins one more step than it trains.
        self.ends.append(batch)

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None and self.start is not None:
            logs["images_per_second"] = len(self.ends) * self.batch_size / max(
                time.perf_counter() - self.start, 1e-9)


class StreamEpoch(keras.callbacks.Callback):
    """Sets the stream's epoch (its permutation is seed + epoch) to fit's at each epoch's
    start, so a resumed run reads what an uninterrupted one would; over a `repeated`
    dataset only at the first (the repeat moves it on; later sets would race the prefetch)."""

    def __init__(self, stream, initial_epoch, repeated):
        super().__init__()
        self.stream, self.initial_epoch, self.repeated = stream, initial_epoch, repeated

    def on_epoch_begin(self, epoch, logs=None):
        if not self.repeated or epoch == self.initial_epoch:
            self.stream.epoch = epoch


class CtrlC(keras.callbacks.Callback):
    """Ctrl-C during `fit` as a flag: the handler only records it, and the next batch (of
    training or validation) raises KeyboardInterrupt on the main thread, between steps and
    never inside a checkpoint. Python's own KeyboardInterrupt can land inside the data
    pipeline's iterator (JAX's data adapter over a repeated tf.data stream), where it is lost
    and training goes on. A second Ctrl-C raises at once. Use as `with CtrlC() as ctrl_c:`."""

    def __init__(self):
        super().__init__()
        self.pressed, self.previous = False, None

    def _handler(self, signum, frame):
        if self.pressed:
            raise KeyboardInterrupt
        self.pressed = True

    def __enter__(self):
        # Signal handlers can only be set from the main thread; elsewhere Python's stays.
        if threading.current_thread() is threading.main_thread():
            self.previous = signal.signal(signal.SIGINT, self._handler)
        return self

    def __exit__(self, *exc):
        if self.previous is not None:
            signal.signal(signal.SIGINT, self.previous)
            self.previous = None

    def _raise_if_pressed(self, *args, **kwargs):
        if self.pressed:
            raise KeyboardInterrupt

    on_epoch_begin = on_train_batch_begin = on_test_batch_begin = _raise_if_pressed


def _check_choices(recipe, distillation, epochs, batch_size, image_size, lora, output):
    if recipe is not None and recipe not in RECIPES:
        raise ValueError(f"--recipe must be one of {RECIPES}. Received: {recipe!r}")
    if distillation not in DISTILLATION_CHOICES:
        raise ValueError(f"--distillation must be one of {DISTILLATION_CHOICES}. Received: "
                         f"{distillation!r}")
    for name, value in (("--epochs", epochs), ("--batch-size", batch_size),
                        ("--image-size", image_size)):
        if value is not None and value < 1:
            raise ValueError(f"{name} must be at least 1. Received: {value}")
    if lora is not None and lora < 1:
        raise ValueError(f"--lora must be a rank of at least 1. Received: {lora}")
    if not str(output).endswith(".keras"):
        raise ValueError(f"the output must be a .keras file. Received: {output}")
    folder = os.path.dirname(os.path.abspath(output))
    if not os.path.isdir(folder):
        raise ValueError(f"cannot write {output}: the folder {folder} does not exist.")


def train_folder(data_dir, output, model="deit-digits", teacher=None, distillation="hard",
                 epochs=None, batch_size=None, image_size=None, lora=None, recipe=None,
                 resume=False, from_scratch=False, validation_split=0.1, ema_decay=None,
                 learning_rate=None, base_learning_rate=None, warmup_epochs=None, seed=0,
                 verbose=1, print_fn=print, cluster=None):
    """Trains `model` (a `keras-deit predict` source) on the class folders of `data_dir` and
    writes the student to `output` (.keras) with `preprocessor_config.json` beside it.

    Args:
        recipe: "deit" (`keras_deit.training.augmentation.deit_train_dataset`, drop path 0.1) or
            "light" (the checkpoint's own preprocessing only; integer labels); None: light for
            a fine-tune, deit `from_scratch` (`keras_deit.training.recipe.training_plan`).
        epochs, batch_size, warmup_epochs: None for the defaults of `training_plan`.
        teacher: None or a source of a classifier with the same classes; with
            `distillation` "hard" or "soft" the student must have a distillation head.
        ema_decay: None, or the decay of Keras' optimizer EMA (deit: 0.99996); Keras writes
            the averaged weights into the model at the end, which needs ~1 / (1 - decay) steps
            to move away from the start.
        from_scratch: the source's architecture with freshly initialized weights.
        learning_rate: the peak rate as it is; base_learning_rate: the rate for a batch of
            512, scaled linearly (deit's rule: 5e-4, the default `from_scratch`).
        batch_size: the global batch (all devices of all processes); the learning-rate rule
            follows it.
        cluster: a `keras_deit.training.distribution.Cluster` (default `configure()`: every visible
            device of this process, or the JAX job of the KERAS_DISTRIBUTION_* variables).
            Only its chief (process 0) writes files and prints.
        Everything else as `keras-deit train --help` says.

    Returns:
        A dict: `accuracy` ({head: validation accuracy}), `epochs`, `skipped`
        ({"unreadable": reads, "too_large": reads} of this process's streams), `output`.
    """
    options = dict(locals())
    from keras_deit.training.distribution import configure

    options["cluster"] = options["cluster"] or configure(seed=seed)
    return _train(**options)


def _train(data_dir, output, model, teacher, distillation, epochs, batch_size, image_size, lora,
           recipe, resume, from_scratch, validation_split, ema_decay, learning_rate,
           base_learning_rate, warmup_epochs, seed, verbose, print_fn, cluster):
    """`train_folder` with its cluster. The model, optimizer and fit are in `cluster.scope()`
    (MirroredStrategy / DataParallel); the streams outside it (their counters are plain
    `tf.Variable`s, no strategy's)."""
    from keras_deit.atomic import replacing
    from keras_deit.training.distillation import DeiTDistiller
    from keras_deit.training.image_folder import deit_stream, processor_stream
    from keras_deit.models import DeiTForImageClassificationWithTeacher
    from keras_deit.training.recipe import DEIT_MAIN_DEFAULTS, training_plan
    from keras_deit.training.fine_tuning import deit_adamw

    output = os.fspath(output)
    _check_choices(recipe, distillation, epochs, batch_size, image_size, lora, output)
    plan = training_plan(from_scratch, recipe, batch_size, epochs, learning_rate,
                         base_learning_rate, warmup_epochs)
    recipe, batch_size, epochs = plan.recipe, plan.batch_size, plan.epochs
    paths = _paths(output)
    if resume and not os.path.isfile(paths["checkpoint"]):
        raise ValueError(f"--resume: there is no checkpoint {paths['checkpoint']} (a finished "
                         "run removes it): run without --resume to start training.")
    folder = list_image_folder(data_dir, validation_split, seed)
    num_classes = len(folder.class_names)
    if not folder.val_paths:
        raise ValueError(f"{data_dir} leaves no validation image: add images, or a val/ folder.")
    _check_readable(folder, data_dir)
    local_batch = cluster.local_batch_size(batch_size)
    if not cluster.is_chief:
        print_fn = _silent
    drop_path = DEIT_MAIN_DEFAULTS["drop_path"] if recipe == "deit" else None
    with cluster.scope():
        student, processor = build_student(model, folder.class_names, image_size, from_scratch,
                                           drop_path, seed)
        distilled = teacher is not None and distillation != "none"
        if distilled and not isinstance(student, DeiTForImageClassificationWithTeacher):
            raise ValueError(f"--teacher with --distillation {distillation} needs a student with "
                             f"a distillation head; {model} is a {type(student).__name__}: use a "
                             "distilled DeiT, or --distillation none.")
        teacher_model = teacher_processor = None
        if distilled:
            teacher_model, teacher_processor = load_teacher(teacher, num_classes)
    size = student.config.image_hw[0]
    existing = paths["preprocessor"]
    if os.path.isfile(existing):
        with open(existing, encoding="utf-8") as f:
            if json.load(f) != json.loads(processor.to_json_string()):
                raise ValueError(f"{existing} holds another preprocessing: write {output} into "
                                 "another folder (predict reads the preprocessor_config.json "
                                 "beside the model).")

    # ---- data: streamed from the files, this process's shard of every epoch --------------
    shard = dict(num_replicas=cluster.num_processes, rank=cluster.process_index)
    if recipe == "deit":
        # Augmented with seed + rank (the stream's rule): each process draws its own crops.
        train = deit_stream(folder.train_paths, folder.train_labels, num_classes, local_batch,
                            size, processor.image_mean, processor.image_std, seed=seed, **shard)
        targets, metric = num_classes, "categorical_accuracy"
    else:
        train = processor_stream(folder.train_paths, folder.train_labels, processor,
                                 local_batch, shuffle=True, drop_remainder=True, seed=seed,
                                 **shard)
        targets, metric = None, "sparse_categorical_accuracy"
    # deit's RASampler keeps the epoch's length: ceil(images / processes) per process.
    steps = train.length // local_batch
    if steps < 1:
        raise ValueError(f"{len(folder.train_paths)} training images make no full batch of "
                         f"{batch_size}: lower --batch-size.")
    # Several devices split every batch evenly: the fit-time validation keeps full batches
    # only (the summary below scores every image).
    several = cluster.num_devices > 1
    val = processor_stream(folder.val_paths, folder.val_labels, processor, local_batch,
                           drop_remainder=several, targets=targets)
    val_ds = None if several and len(folder.val_paths) < local_batch else val.dataset
    score = (processor_stream(folder.val_paths, folder.val_labels, processor, local_batch,
                              targets=targets) if several else val)

    # ---- model, optimizer, state (in the cluster's scope) ---------------------------------
    with cluster.scope():
        if lora:
            student.enable_lora(lora)
        optimizer = deit_adamw(
            plan.schedule(steps), DEIT_MAIN_DEFAULTS["weight_decay"],
            **(dict(use_ema=True, ema_momentum=ema_decay) if ema_decay else {}))
        trainer = student
        if distilled:
            trainer = DeiTDistiller(student, teacher_model, distillation,
                                    teacher_preprocessing=_teacher_preprocessing(
                                        processor, teacher_processor,
                                        teacher_model.config.image_hw[0]))
        trainer.compile(optimizer=optimizer, metrics=[metric])
        initial_epoch = 0
        if resume:
            initial_epoch = restore_checkpoint(paths["checkpoint"], student, trainer)
            if initial_epoch >= epochs:
                raise ValueError(f"--resume: the checkpoint has {initial_epoch} epochs done; ask "
                                 f"for more than {initial_epoch} with --epochs.")
        elif os.path.isfile(paths["checkpoint"]):
            print_fn(f"starting over: {paths['checkpoint']} (an interrupted run) will be "
                     "replaced; pass --resume to continue it instead")
        # Built on a batch of zeros (metrics and loss too): otherwise `fit` builds them from a
        # first batch of an iteration of the stream that it then drops (JAX, PyTorch), which
        # would count its reads in flight as skipped.
        targets_shape = (local_batch,) if targets is None else (local_batch, targets)
        trainer.test_on_batch(np.zeros((local_batch, size, size, 3), "float32"),
                              np.zeros(targets_shape, "int32" if targets is None else "float32"))
        trainer.reset_metrics()

        # ---- train ------------------------------------------------------------------------
        # First: the speed is in the logs before Keras prints and CSVLogger writes them.
        repeated = cluster.num_processes > 1
        callbacks = [ctrl_c := CtrlC(), StreamEpoch(train, initial_epoch, repeated),
                     EpochSpeed(batch_size)]
        if cluster.is_chief:  # The other processes write nothing.
            with replacing(paths["preprocessor"]) as tmp:
                processor.to_json_file(tmp)
            # The log first: an epoch's row is written before its checkpoint, so a run
            # interrupted after a checkpoint has logged every epoch it holds.
            callbacks += [keras.callbacks.CSVLogger(paths["log"], append=resume),
                          EpochCheckpoint(student, paths["checkpoint"], output)]
        if cluster.is_chief and importlib.util.find_spec("tensorboard") is not None:
            callbacks.append(keras.callbacks.TensorBoard(paths["tensorboard"], write_graph=False,
                                                         profile_batch=0))
        print_fn(f"training {type(student).__name__} on {len(folder.train_paths)} images of "
                 f"{num_classes} classes ({len(folder.val_paths)} for validation), recipe {recipe}"
                 f"{f', teacher {teacher} ({distillation})' if distilled else ''}, "
                 f"{cluster.describe()}")
        print_fn(plan.describe(steps))
        # One process: each fit epoch iterates the stream once, so it is the stream's epoch
        # (its permutation, exact skip counts, as many full batches as readable images make).
        # Several: `steps` per epoch over the repeated stream, so every process takes the
        # same steps whatever files it skips (a short epoch borrows from the next).
        data, steps_per_epoch = train.dataset, None
        if repeated:
            data, steps_per_epoch = train.dataset.repeat(), steps
        # The stream shuffles itself (fit's `shuffle` only applies to arrays, and warns).
        with ctrl_c, warnings.catch_warnings():
            # Keras warns at the end of every dataset of unknown length (the streams'
            # length depends on the files skipped).
            warnings.filterwarnings("ignore", message="Your input ran out of data")
            trainer.fit(data, steps_per_epoch=steps_per_epoch, validation_data=val_ds,
                        epochs=epochs, initial_epoch=initial_epoch, callbacks=callbacks,
                        verbose=verbose, shuffle=False)
        if lora:
            from keras_deit.keras_native import merge_lora

            student = merge_lora(student)
            if cluster.is_chief:
                with outside_distribution():
                    student.save(output)
        if cluster.is_chief:
            os.remove(paths["checkpoint"])

    # ---- summary ------------------------------------------------------------------------------
    scorer, scope = student, cluster.scope()
    if cluster.num_processes > 1:
        # Outputs spread over several processes cannot be fetched by one: each scores a
        # copy of its own, outside the cluster.
        scorer, scope = type(student).from_config(student.get_config()), contextlib.nullcontext()
        for mine, trained in zip(scorer.weights, student.weights):
            mine.assign(ops.convert_to_numpy(trained.value))
    with scope:
        accuracy, scored = head_accuracies(scorer, score.dataset, local_batch)
    print_fn(f"wrote {output} ({epochs} epoch{'s' * (epochs != 1)}); validation accuracy on "
             f"{scored} images: "
             + ", ".join(f"{name} {value:.4f}" for name, value in accuracy.items()))
    streams = {id(stream): stream for stream in (train, val, score)}.values()
    skipped = {kind: sum(stream.skipped[kind] for stream in streams)
               for kind in ("unreadable", "too_large")}
    if sum(skipped.values()):
        print_fn(f"skipped {skipped['unreadable']} unreadable image read(s) and "
                 f"{skipped['too_large']} over Pillow's pixel limit ({MAX_IMAGE_PIXELS} "
                 "pixels) in training and validation (each read counts: a file read every "
                 "epoch counts every time)")
    return dict(accuracy=accuracy, epochs=epochs, skipped=skipped, output=output)


# ---- command line (`keras-deit train`) ---------------------------------------------------------
def train_command(args, out=None):
    """Runs `keras-deit train` for parsed `args`; returns the exit code (130 on Ctrl-C)."""
    import sys

    out = out or sys.stdout

    def say(line):
        print(line, file=out, flush=True)

    try:
        from keras_deit.training.distribution import configure

        cluster = configure(args.coordinator, args.num_processes, args.process_id,
                            seed=args.seed, initialization_timeout=args.join_timeout)
        train_folder(args.data_dir, args.output, model=args.model, teacher=args.teacher,
                     distillation=args.distillation, epochs=args.epochs,
                     batch_size=args.batch_size, image_size=args.image_size, lora=args.lora,
                     recipe=args.recipe, resume=args.resume, from_scratch=args.from_scratch,
                     validation_split=args.validation_split, ema_decay=args.ema_decay,
                     learning_rate=args.lr, base_learning_rate=args.base_lr,
                     warmup_epochs=args.warmup_epochs, seed=args.seed,
                     # A progress bar in a terminal; one line per epoch in a log file.
                     verbose=1 if out.isatty() else 2, print_fn=say, cluster=cluster)
    except KeyboardInterrupt:
        done = os.path.isfile(_paths(args.output)["checkpoint"])
        print(f"keras-deit: interrupted; {args.output} and its checkpoint hold the last "
              "complete epoch: continue with --resume" if done else
              "keras-deit: interrupted before the first epoch ended; nothing was written",
              file=sys.stderr)
        return 130
    return 0
