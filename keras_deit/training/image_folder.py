"""A folder of images as a stream: an index of paths and labels (never the pixels), deit's
`RASampler` order per epoch, and `tf.data` reading, checking, decoding and augmenting in
parallel, on every backend.

    FOLDER/<class>/**/<image>       (torchvision's `ImageFolder` layout; ImageNet's train/
                                     and val/ are two such folders)

Unreadable files (corrupt, truncated, an unsupported format) and images declaring more
pixels than Pillow's limit (`PIL.Image.MAX_IMAGE_PIXELS`, ~89.5M: TensorFlow's decoders have
none, so a small file declaring 30000 x 30000 would allocate gigabytes) are skipped and
counted (`ImageStream.skipped`); the epoch goes on.
"""

import math
import os
import warnings

import numpy as np

from keras_deit.training.augmentation import DeiTImageTransform, mixed_batches
from keras_deit.training.recipe import DEIT_MAIN_DEFAULTS

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif")
# Pillow's default `Image.MAX_IMAGE_PIXELS` (1024 * 1024 * 1024 // 4 // 3): above it Pillow
# warns of a decompression bomb.
MAX_IMAGE_PIXELS = 1024 * 1024 * 1024 // 4 // 3
# The formats `declared_shape` reads and the stream decodes, as Pillow names them.
STREAM_FORMATS = ("JPEG", "PNG", "GIF", "BMP")


def first_readable(paths):
    """The first of `paths` whose header the stream accepts (a JPEG, PNG, GIF or BMP within
    `MAX_IMAGE_PIXELS`), or None. Reads headers only, and stops at the first that passes."""
    from PIL import Image

    for path in paths:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                with Image.open(path) as image:
                    if (image.format in STREAM_FORMATS
                            and image.width * image.height <= MAX_IMAGE_PIXELS):
                        return path
        except (OSError, ValueError, Image.DecompressionBombError):
            continue
    return None


def find_classes(folder):
    """The class folder names of `folder`, sorted as torchvision's `ImageFolder` sorts them
    (by code point); hidden folders (".name") are left out."""
    classes = sorted(entry.name for entry in os.scandir(folder)
                     if entry.is_dir() and not entry.name.startswith("."))
    if not classes:
        raise ValueError(f"{folder} holds no class folders: put the images of each class in a "
                         f"sub-folder named after it ({os.path.join(folder, 'CLASS', 'IMAGE.jpg')}).")
    return classes


def find_images(folder):
    """The image paths (`IMAGE_EXTENSIONS`) under `folder`, found recursively, sorted as
    torchvision walks; hidden files and folders are left out."""
    walked = []
    for root, dirs, files in os.walk(folder, followlinks=True):
        dirs[:] = [d for d in dirs if not d.startswith(".")]  # pruned while walking
        walked.append((root, files))
    paths = []
    for root, files in sorted(walked):  # torchvision sorts the walk's (root, ...) tuples
        paths += [os.path.join(root, f) for f in sorted(files)
                  if f.lower().endswith(IMAGE_EXTENSIONS) and not f.startswith(".")]
    return paths


def class_images(folder, name):
    """The image paths under `folder/name`, found recursively, sorted as torchvision walks."""
    return find_images(os.path.join(folder, name))


def index_image_folder(folder):
    """(paths, labels, class_names) of an `ImageFolder` layout; label i is class_names[i].
    Reads directory entries only."""
    if not os.path.isdir(folder):
        raise ValueError(f"{folder} is not a folder: pass a folder with one sub-folder of "
                         "images per class.")
    names = find_classes(folder)
    paths, labels = [], []
    for i, name in enumerate(names):
        found = class_images(folder, name)
        if not found:
            raise ValueError(f"the class folder {os.path.join(folder, name)} holds no images "
                             f"({', '.join(IMAGE_EXTENSIONS)}): add images or remove it.")
        paths += found
        labels += [i] * len(found)
    return paths, labels, names


def repeated_sample_indices(length, epoch, seed=0, repeats=DEIT_MAIN_DEFAULTS[
        "repeated_aug_repeats"], num_replicas=1, rank=0, shuffle=True):
    """deit's `RASampler` order for one process: a permutation seeded by `seed + epoch`, each
    index repeated `repeats` times in a row, padded to a multiple of `num_replicas` from its
    start, every `num_replicas`-th from `rank` (so the copies of an image go to different
    replicas), the first ceil(length / num_replicas) (the epoch keeps its length; deit also
    rounds it down to a multiple of 256).

    Returns:
        (ceil(length / num_replicas),) int64 indices into the dataset.
    """
    if not isinstance(num_replicas, int) or num_replicas < 1:
        raise ValueError(f"`num_replicas` must be an int >= 1. Received: "
                         f"num_replicas={num_replicas!r}")
    if not isinstance(rank, int) or not 0 <= rank < num_replicas:
        raise ValueError(f"`rank` must be an int in [0, num_replicas). Received: rank={rank!r}, "
                         f"num_replicas={num_replicas}")
    order = (np.random.default_rng(seed + epoch).permutation(length) if shuffle
             else np.arange(length))
    order = np.repeat(order, repeats)
    per_replica = math.ceil(len(order) / num_replicas)
    order = np.concatenate([order, order[:per_replica * num_replicas - len(order)]])
    return order[rank::num_replicas][:math.ceil(length / num_replicas)].astype("int64")


def _little_endian(raw, start, count):
    import tensorflow as tf

    data = tf.cast(tf.io.decode_raw(tf.strings.substr(raw, start, count), tf.uint8), tf.int64)
    return tf.reduce_sum(data * tf.constant([256**i for i in range(count)], tf.int64))


def _big_endian(raw, start, count):
    import tensorflow as tf

    data = tf.cast(tf.io.decode_raw(tf.strings.substr(raw, start, count), tf.uint8), tf.int64)
    return tf.reduce_sum(data * tf.constant([256**i for i in reversed(range(count))], tf.int64))


def declared_shape(raw):
    """(format, height, width) a file's header declares, before any decoding: format 0 JPEG
    (its SOF, `tf.image.extract_jpeg_shape`), 1 PNG (IHDR), 2 GIF (logical screen), 3 BMP
    (DIB header), -1 anything else (height and width 0). int64 scalars; a JPEG without a
    readable SOF raises (the caller skips the file)."""
    import tensorflow as tf

    magic = tf.strings.substr(raw, 0, 4)
    is_jpeg = tf.strings.substr(raw, 0, 2) == b"\xff\xd8"
    is_png = magic == b"\x89PNG"
    is_gif = tf.strings.substr(raw, 0, 3) == b"GIF"
    is_bmp = tf.strings.substr(raw, 0, 2) == b"BM"
    long_enough = tf.strings.length(raw) >= 26

    def jpeg():
        shape = tf.cast(tf.image.extract_jpeg_shape(raw), tf.int64)
        return tf.constant(0, tf.int64), shape[0], shape[1]

    def other():
        fmt = tf.where(is_png, 1, tf.where(is_gif, 2, tf.where(is_bmp, 3, -1)))
        fmt = tf.where(long_enough, tf.cast(fmt, tf.int64), tf.constant(-1, tf.int64))
        # BMP heights are signed: negative for top-down rows.
        bmp_h = _little_endian(raw, 22, 4)
        bmp_h = tf.abs(tf.where(bmp_h >= 2**31, bmp_h - 2**32, bmp_h))
        sides = {1: (_big_endian(raw, 20, 4), _big_endian(raw, 16, 4)),
                 2: (_little_endian(raw, 8, 2), _little_endian(raw, 6, 2)),
                 3: (bmp_h, _little_endian(raw, 18, 4))}
        height = width = tf.constant(0, tf.int64)
        for code, (h, w) in sides.items():
            height, width = tf.where(fmt == code, h, height), tf.where(fmt == code, w, width)
        return fmt, height, width

    return tf.cond(is_jpeg, jpeg, other)


def decode_window(raw, fmt, window):
    """The (h, w, 3) uint8 pixels of `window` = (top, left, height, width) of an image file
    of format `fmt` (`declared_shape`): a JPEG decodes only the window.

    JPEGs decode with the accurate integer DCT, Pillow's (libjpeg's "islow"): the whole image
    is Pillow's to the bit; a window differs from Pillow's crop on its border pixels only
    (chroma upsampling at the cut: a few levels on ~1% of a window's pixels)."""
    import tensorflow as tf

    def jpeg():
        return tf.image.decode_and_crop_jpeg(raw, tf.stack(window), channels=3,
                                             dct_method="INTEGER_ACCURATE")

    def other():
        image = tf.io.decode_image(raw, channels=3, expand_animations=False)
        top, left, height, width = window
        return image[top:top + height, left:left + width]

    return tf.cond(tf.equal(fmt, 0), jpeg, other)


class ImageStream:
    """Images read from files by `tf.data`, never all in memory: each epoch a
    `repeated_sample_indices` order (or, with `repeats=1` and no shuffle, the files in
    order), `load(raw, fmt, height, width, seed)` -> image per file in parallel, batched
    (drop remainder) by `batch` and prefetched.

    Files that are unreadable, or declare more than `MAX_IMAGE_PIXELS` pixels, are skipped
    and counted in `skipped` (read it after an epoch); the epoch is shorter by them.

    Args:
        paths, labels: the files (`index_image_folder`) and their int labels.
        load: the per-file transform (see `deit_stream`, `processor_stream`).
        batch: `dataset -> dataset` batching the (image, label) elements.
        seed: int; the order of epoch e comes from seed + e, the per-image draws from
            seed + rank.
        repeats, num_replicas, rank, shuffle: as `repeated_sample_indices`.
        initial_epoch: the first epoch the dataset produces (for a resumed run).

    Attributes:
        dataset: the `tf.data.Dataset`; each iteration is the next epoch.
        length: the images per epoch of this process, before skips.
    """

    def __init__(self, paths, labels, load, batch, seed=0, repeats=1, num_replicas=1, rank=0,
                 shuffle=True, initial_epoch=0):
        import tensorflow as tf

        self.paths = tf.constant(list(paths), tf.string)
        self.labels = tf.constant(np.asarray(labels, "int32"))
        self.size, self.seed = len(paths), seed
        self.sampling = dict(repeats=repeats, num_replicas=num_replicas, rank=rank,
                             shuffle=shuffle)
        self.length = len(repeated_sample_indices(self.size, 0, seed, **self.sampling))
        self.epoch = initial_epoch
        self.rank = rank
        self._started = tf.Variable(0, dtype=tf.int64, trainable=False)
        self._too_large = tf.Variable(0, dtype=tf.int64, trainable=False)
        self._decoded = tf.Variable(0, dtype=tf.int64, trainable=False)
        self.dataset = self._dataset(load, batch)

    def _epoch_indices(self):
        order = repeated_sample_indices(self.size, self.epoch, self.seed, **self.sampling)
        keys = self.epoch * self.length + np.arange(len(order), dtype="int64")
        self.epoch += 1
        yield np.stack([order, keys], axis=1)

    def _dataset(self, load, batch):
        import tensorflow as tf

        indices = tf.data.Dataset.from_generator(
            self._epoch_indices, output_signature=tf.TensorSpec((None, 2), tf.int64)).unbatch()
        rank_seed = self.seed + self.rank

        def read(element):
            index, key = element[0], element[1]
            # Counted before anything can fail: started - decoded - too large = unreadable.
            with tf.control_dependencies([self._started.assign_add(1)]):
                raw = tf.io.read_file(tf.gather(self.paths, index))
            fmt, height, width = declared_shape(raw)
            # An unknown format fails here, so it is counted as unreadable.
            with tf.control_dependencies([tf.debugging.assert_non_negative(fmt)]):
                too_large = height * width > MAX_IMAGE_PIXELS
            return raw, fmt, height, width, too_large, tf.gather(self.labels, index), key

        def keep(raw, fmt, height, width, too_large, label, key):
            counted = self._too_large.assign_add(tf.cast(too_large, tf.int64))
            with tf.control_dependencies([counted]):
                return tf.logical_not(too_large)

        def decode(raw, fmt, height, width, too_large, label, key):
            seed = tf.stack([tf.constant(rank_seed, tf.int64), key])
            image = load(raw, fmt, tf.cast(height, tf.int32), tf.cast(width, tf.int32), seed)
            with tf.control_dependencies([image]):
                done = self._decoded.assign_add(1)
            with tf.control_dependencies([done]):
                return tf.identity(image), label

        parallel = tf.data.AUTOTUNE
        dataset = (indices.map(read, num_parallel_calls=parallel).ignore_errors()
                   .filter(keep).map(decode, num_parallel_calls=parallel).ignore_errors())
        return batch(dataset)

    @property
    def skipped(self):
        """{"unreadable": samples whose file failed to read or decode (or is not JPEG, PNG,
        GIF or BMP), "too_large": samples whose file declares more than `MAX_IMAGE_PIXELS`},
        over the epochs iterated so far (a repeated sample counts each time)."""
        too_large = int(self._too_large.numpy())
        return {"unreadable": int(self._started.numpy()) - int(self._decoded.numpy()) - too_large,
                "too_large": too_large}


def deit_stream(paths, labels, num_classes, batch_size, image_size, mean, std, seed=0,
                num_replicas=1, rank=0, initial_epoch=0):
    """deit's training data from files: `RASampler` (3 repeats) order, per image
    `DeiTImageTransform` on the JPEG window decoded alone, per batch `MixupCutmix`.

    Returns:
        An `ImageStream` whose dataset yields (pixel_values (batch_size, image_size,
        image_size, 3) float32, targets (batch_size, num_classes) float32).
    """
    transform = DeiTImageTransform(image_size, mean, std, seed=seed + rank)

    def load(raw, fmt, height, width, seed):
        window = transform.window(height, width, seed)
        return transform(decode_window(raw, fmt, window), seed)

    return ImageStream(
        paths, labels, load,
        lambda dataset: mixed_batches(dataset, num_classes, batch_size, seed=seed + rank),
        seed=seed, repeats=DEIT_MAIN_DEFAULTS["repeated_aug_repeats"],
        num_replicas=num_replicas, rank=rank, initial_epoch=initial_epoch)


def processor_stream(paths, labels, processor, batch_size, shuffle=False, drop_remainder=False,
                     seed=0, num_replicas=1, rank=0, targets=None):
    """Files through a `DeiTImageProcessor` (its own resize, centre crop and normalisation,
    Pillow's rules, called per image from tf.data), for validation (in order, every image)
    or the light recipe (`shuffle`, `drop_remainder`).

    Args:
        targets: None for int labels, or `num_classes` for one-hot float32 rows.
    Returns:
        An `ImageStream` yielding (pixel_values (batch, H, W, 3) float32, or (batch, 3, H, W)
        with a channels_first processor, labels).
    """
    import tensorflow as tf

    size = processor.crop_size if processor.do_center_crop else processor.size
    shape = (size.get("height"), size.get("width"), 3)  # no height: {"shortest_edge"}
    if processor.data_format == "channels_first":  # a channels_first model's processor
        shape = (3, *shape[:2])

    def preprocess(pixels):
        return processor(pixels.numpy(), return_tensors="np")["pixel_values"][0]

    def load(raw, fmt, height, width, seed):
        image = decode_window(raw, fmt, (0, 0, height, width))
        pixels = tf.py_function(preprocess, [image], tf.float32)
        return tf.ensure_shape(pixels, shape)

    def batch(dataset):
        if targets is not None:
            dataset = dataset.map(lambda x, y: (x, tf.one_hot(y, targets)))
        return dataset.batch(batch_size, drop_remainder=drop_remainder).prefetch(
            tf.data.AUTOTUNE)

    return ImageStream(paths, labels, load, batch, seed=seed, repeats=1,
                       num_replicas=num_replicas, rank=rank, shuffle=shuffle)
