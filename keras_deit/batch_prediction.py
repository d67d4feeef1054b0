"""`keras-deit predict` over many files: image files, folders (searched recursively) and list
files (.txt/.lst, one image path a line) streamed through the training reader
(`training.image_folder`: tf.data, header checks) in batches, written as they go.

Every input file gets one row, in input order: its top-k labels and probabilities, or, for a
file the reader skipped (unreadable, or declaring more than `MAX_IMAGE_PIXELS` pixels), an
error. Rows go to stdout (the human-readable listing) or to `--output` FILE.csv / FILE.jsonl,
flushed after each batch so that an interrupted run keeps every completed batch:

    csv     path,label_1,prob_1,...,label_k,prob_k,error   (a header; error empty if classified)
    jsonl   {"path": ..., "labels": [...], "probabilities": [...]}  or  {"path": ..., "error": ...}

This module imports no Keras at import time: the command checks `--output` before a backend.
"""

import contextlib
import csv
import json
import math
import os
import sys
import time

import numpy as np

LIST_EXTENSIONS = (".txt", ".lst")
OUTPUT_EXTENSIONS = (".csv", ".jsonl")
SKIPPED = "unreadable, or over the pixel limit"


def check_output(path, overwrite=False):
    """Raises a one-line ValueError for an `--output` that is neither .csv nor .jsonl, or that
    exists without `overwrite`; returns `path`."""
    if not path.lower().endswith(OUTPUT_EXTENSIONS):
        raise ValueError(f"--output must end in .csv or .jsonl. Received: --output {path}")
    if os.path.exists(path) and not overwrite:
        raise ValueError(f"{path} exists: pass --overwrite to replace it, or another --output.")
    return path


def read_list(path):
    """The image paths a list file names, one a line; relative paths are taken from the list's
    folder, blank lines and `#` comments are ignored. A missing file raises naming the line."""
    folder = os.path.dirname(os.path.abspath(path))
    paths = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            name = line.strip()
            if not name or name.startswith("#"):
                continue
            image = os.path.join(folder, name)  # an absolute `name` stays as it is
            if not os.path.isfile(image):
                raise ValueError(f"{path} line {number} names {name}, which is not a file: fix "
                                 "or remove the line.")
            paths.append(image)
    return paths


def expand_inputs(inputs):
    """The image paths of `inputs` (image files, folders, list files), in order."""
    from keras_deit.training.image_folder import IMAGE_EXTENSIONS, find_images

    paths = []
    for item in inputs:
        if os.path.isdir(item):
            found = find_images(item)
            if not found:
                raise ValueError(f"the folder {item} holds no images "
                                 f"({', '.join(IMAGE_EXTENSIONS)}): pass a folder of images.")
            paths += found
        elif not os.path.exists(item):
            raise ValueError(f"no such image: {item} (pass image files, folders or "
                             f"{'/'.join(LIST_EXTENSIONS)} lists of image paths)")
        elif item.lower().endswith(LIST_EXTENSIONS):
            paths += read_list(item)
        else:
            paths.append(item)
    return paths


class _Rows:
    """Where the rows go: stdout's listing, or a .csv / .jsonl file; `flush` after each batch."""

    def __init__(self, out, output, top_k, overwrite):
        self.out, self.k = out, top_k
        self.format = os.path.splitext(output)[1].lower() if output else None
        self.file = open(output, "w" if overwrite else "x", encoding="utf-8", newline="") \
            if output else None
        if self.format == ".csv":
            self.csv = csv.writer(self.file)
            ranks = range(1, top_k + 1)
            self.csv.writerow(["path", *[f"{name}_{i}" for i in ranks for name in
                                         ("label", "prob")], "error"])

    def write(self, path, labels=(), probabilities=(), error=""):
        if self.format == ".csv":
            pairs = [value for pair in zip(labels, probabilities) for value in
                     (pair[0], f"{pair[1]:.6g}")]
            pairs += [""] * (2 * self.k - len(pairs))
            self.csv.writerow([path, *pairs, error])
        elif self.format == ".jsonl":
            row = {"path": path, "error": error} if error else {
                "path": path, "labels": list(labels),
                "probabilities": [float(p) for p in probabilities]}
            self.file.write(json.dumps(row) + "\n")
        else:
            print(path, file=self.out)
            if error:
                print(f"  skipped: {error}", file=self.out)
            for rank, (label, p) in enumerate(zip(labels, probabilities), start=1):
                print(f"  {rank}. {label}  {p:.4f}", file=self.out)

    def flush(self):
        (self.file or self.out).flush()

    def close(self):
        if self.file:
            self.file.close()


class _Progress:
    """"done/total images, N images/s" rewritten on stderr when it is a terminal."""

    def __init__(self, total, err):
        self.total, self.err, self.start = total, err, time.monotonic()
        self.shown = err.isatty()

    def rate(self, done):
        return done / max(time.monotonic() - self.start, 1e-9)

    def update(self, done):
        if self.shown:
            self.err.write(f"\r{done}/{self.total} images, {self.rate(done):.1f} images/s")
            self.err.flush()

    def end(self, done, skipped, output, devices=1):
        if self.shown:
            self.err.write("\n")
        elapsed = time.monotonic() - self.start
        where = f" on {devices} devices" if devices > 1 else ""
        words = (f"keras-deit predict: {done} image{'s' * (done != 1)} classified in "
                 f"{elapsed:.1f} s ({self.rate(done):.1f} images/s{where})")
        if sum(skipped.values()):
            words += (f", {sum(skipped.values())} skipped ({skipped['unreadable']} unreadable, "
                      f"{skipped['too_large']} over the pixel limit)")
        print(words + (f"; rows in {output}" if output else ""), file=self.err)


def _stream(model, processor, paths, batch_size):
    """The `ImageStream` of `paths`; its labels are the file indices, so rows find their file.
    A model holding its preprocessing takes raw images, which differ in size: one at a time."""
    from keras_deit.training.image_folder import ImageStream, decode_window, processor_stream

    indices = np.arange(len(paths))
    if not getattr(model, "include_preprocessing", None):
        return processor_stream(paths, indices, processor, batch_size)

    def load(raw, fmt, height, width, seed):
        return decode_window(raw, fmt, (0, 0, height, width))

    return ImageStream(paths, indices, load, lambda dataset: dataset.batch(1), repeats=1,
                       shuffle=False)


def batch_probabilities(model, pixel_values, rows):
    """Class probabilities float64 (batch, num_labels) of a batch (batch, ...) padded to `rows`
    (a multiple of the devices: every step one compiled shape that splits evenly)."""
    from keras_deit.inference import eager_logits, softmax

    if getattr(model, "include_preprocessing", None):
        return softmax(eager_logits(model, pixel_values))
    count = len(pixel_values)
    padding = np.zeros((rows - count, *pixel_values.shape[1:]), pixel_values.dtype)
    padded = np.concatenate([pixel_values, padding]) if rows > count else pixel_values
    logits = model.predict(padded, batch_size=len(padded), verbose=0)["logits"]
    return softmax(np.asarray(logits, "float64")[:count])


def predict_files(inputs, source, top_k=5, batch_size=32, output=None, overwrite=False,
                  out=None, err=None):
    """Classifies the images of `inputs` (files, folders, list files) with the model from
    `source`, `batch_size` at a time; writes one row per file to `output` (.csv/.jsonl) or
    `out`, and the summary line to `err`. Raises ValueError if no image could be read."""
    import keras

    from keras_deit.inference import class_names, load_classifier, top_k as best
    from keras_deit.training.distribution import configure

    out, err = out or sys.stdout, err or sys.stderr
    if output:
        check_output(output, overwrite)
    paths = expand_inputs(inputs)
    # JAX: data parallel over every visible device, as training; one device elsewhere.
    cluster = configure(num_processes=1) if keras.backend.backend() == "jax" else None
    scope = cluster.scope if cluster else contextlib.nullcontext
    with scope():
        model, processor = load_classifier(source)
    devices = cluster.num_devices if cluster else 1
    rows = math.ceil(batch_size / devices) * devices
    labels = class_names(model.config)
    stream = _stream(model, processor, paths, batch_size)
    writer, progress = _Rows(out, output, top_k, overwrite), _Progress(len(paths), err)
    done = position = 0
    try:
        for pixel_values, indices in stream.dataset:
            with scope():
                probabilities = batch_probabilities(model, np.asarray(pixel_values), rows)
            for index, row in zip(np.asarray(indices), probabilities):
                for skipped in paths[position:index]:  # the reader keeps the files' order
                    writer.write(skipped, error=SKIPPED)
                order = best(row, top_k)
                writer.write(paths[index], [labels[i] for i in order], row[order])
                position = index + 1
            done += len(probabilities)
            writer.flush()
            progress.update(position)
        for skipped in paths[position:]:
            writer.write(skipped, error=SKIPPED)
        writer.flush()
    finally:
        writer.close()
    if not done:
        raise ValueError(f"cannot read any of the {len(paths)} images ({', '.join(paths[:3])}"
                         f"{', ...' if len(paths) > 3 else ''}): they are unreadable or over "
                         "the pixel limit; pass JPEG, PNG, GIF or BMP files.")
    progress.end(done, stream.skipped, output, devices)
    return 0

