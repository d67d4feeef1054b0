"""`keras_deit.training.image_folder`: the folder index, deit's RASampler order, and the tf.data stream
(skips, pixel limit, memory that does not grow with the folder), on the current backend."""

import os
import subprocess
import sys

import numpy as np
import pytest

from keras_deit.training import image_folder as imf
from helpers import bomb_png


def _jpegs(folder, classes, per_class, size=(12, 16), seed=0):
    from PIL import Image

    rng = np.random.default_rng(seed)
    for c in classes:
        os.makedirs(os.path.join(folder, c), exist_ok=True)
        for i in range(per_class):
            pixels = rng.integers(0, 256, (*size, 3)).astype("uint8")
            Image.fromarray(pixels).save(os.path.join(folder, c, f"{i}.jpg"))


def test_index_sorts_classes_as_torchvision_and_finds_images_recursively(tmp_path):
    _jpegs(tmp_path, ["b", "B", "a", "a/deeper"], 1)
    os.makedirs(tmp_path / ".cache")
    (tmp_path / "a" / "notes.txt").write_text("not an image")
    paths, labels, names = imf.index_image_folder(str(tmp_path))
    assert names == ["B", "a", "b"]  # code point order, hidden folders left out
    assert labels == [0, 1, 1, 2]
    assert [os.path.relpath(p, tmp_path) for p in paths] == [
        os.path.join("B", "0.jpg"), os.path.join("a", "0.jpg"),
        os.path.join("a", "deeper", "0.jpg"), os.path.join("b", "0.jpg")]
    with pytest.raises(ValueError, match="holds no class folders"):
        imf.index_image_folder(str(tmp_path / "a" / "deeper"))


def test_repeated_sample_indices_are_deits_rasampler():
    length, replicas = 10, 3
    shards = [imf.repeated_sample_indices(length, 4, seed=1, num_replicas=replicas, rank=r)
              for r in range(replicas)]
    assert all(len(s) == 4 for s in shards)  # ceil(10 / 3): the epoch keeps its length
    # The 30 copies (3 per image) dealt round-robin: each image's copies on different ranks.
    rasampler = np.repeat(np.random.default_rng(5).permutation(length), 3)
    np.testing.assert_array_equal(shards[1], rasampler[1::3][:4])
    # 3 replicas: each holds one copy of the same images (augmented with its own seed).
    np.testing.assert_array_equal(shards[0], shards[2])
    one = imf.repeated_sample_indices(length, 4, seed=1)
    assert len(one) == length and list(one[:3]) == [one[0]] * 3  # one replica: in a row
    assert not np.array_equal(one, imf.repeated_sample_indices(length, 5, seed=1))
    np.testing.assert_array_equal(one, imf.repeated_sample_indices(length, 3, seed=2))
    plain = imf.repeated_sample_indices(length, 0, repeats=1, shuffle=False, num_replicas=2,
                                        rank=1)
    np.testing.assert_array_equal(plain, [1, 3, 5, 7, 9])
    with pytest.raises(ValueError, match="rank=2"):
        imf.repeated_sample_indices(length, 0, num_replicas=2, rank=2)


def test_the_union_over_ranks_covers_every_image():
    shards = [imf.repeated_sample_indices(40, 0, seed=0, num_replicas=4, rank=r)
              for r in range(4)]
    assert set(np.concatenate(shards)) <= set(range(40)) and sum(map(len, shards)) == 40
    # each copy of an image lands on another rank
    owners = {}
    for rank, shard in enumerate(shards):
        for index in shard:
            owners.setdefault(int(index), []).append(rank)
    assert all(len(set(r)) == len(r) for r in owners.values())


def _without_rand_augment(monkeypatch):
    # Keras' RandAugment is the slow part of the stream and plays no part in these tests.
    from keras_deit.training import augmentation

    monkeypatch.setattr(augmentation, "rand_augment", lambda seed=None: (lambda image: image))


def test_stream_skips_and_counts_corrupt_files_and_bombs(tmp_path, monkeypatch):
    _without_rand_augment(monkeypatch)
    _jpegs(tmp_path, ["a", "b"], 4)
    (tmp_path / "a" / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0" + b"not a jpeg" * 20)
    bomb_png(tmp_path / "b" / "bomb.png")
    assert os.path.getsize(tmp_path / "b" / "bomb.png") < 1_000_000
    paths, labels, names = imf.index_image_folder(str(tmp_path))
    stream = imf.deit_stream(paths, labels, 2, 1, 8, [0.5] * 3, [0.5] * 3, seed=0)
    batches = list(stream.dataset)
    samples = len(batches)  # batches of 1
    skipped = stream.skipped
    assert samples + skipped["unreadable"] + skipped["too_large"] == len(paths)
    order = imf.repeated_sample_indices(len(paths), 0, seed=0)
    assert skipped["unreadable"] == sum(paths[i].endswith("corrupt.jpg") for i in order)
    assert skipped["too_large"] == sum(paths[i].endswith("bomb.png") for i in order)
    x, y = batches[0]
    assert tuple(x.shape) == (1, 8, 8, 3) and tuple(y.shape) == (1, 2)
    list(stream.dataset)  # the next epoch goes on counting
    assert stream.skipped["unreadable"] + stream.skipped["too_large"] >= \
        skipped["unreadable"] + skipped["too_large"]


def test_validation_stream_is_the_processor(tmp_path):
    from PIL import Image

    from keras_deit.image_processing import DeiTImageProcessor

    _jpegs(tmp_path, ["a", "b"], 3, size=(20, 30))
    paths, labels, _ = imf.index_image_folder(str(tmp_path))
    processor = DeiTImageProcessor(size={"height": 12, "width": 12},
                                   crop_size={"height": 8, "width": 8})
    stream = imf.processor_stream(paths, labels, processor, batch_size=4)
    pixels = np.concatenate([np.asarray(x) for x, _ in stream.dataset])
    got_labels = np.concatenate([np.asarray(y) for _, y in stream.dataset])
    expected = processor([Image.open(p).convert("RGB") for p in paths],
                         return_tensors="np")["pixel_values"]
    assert pixels.shape == (6, 8, 8, 3)
    np.testing.assert_allclose(pixels, expected, atol=1e-6)
    np.testing.assert_array_equal(got_labels, labels)


MEMORY_SCRIPT = """
import resource, sys
from keras_deit.training import augmentation, image_folder as imf
augmentation.rand_augment = lambda seed=None: (lambda image: image)  # fast; the same for any N
paths, labels, names = imf.index_image_folder(sys.argv[1])
stream = imf.deit_stream(paths, labels, len(names), 8, 16, [0.5] * 3, [0.5] * 3, seed=0)
count = sum(int(x.shape[0]) for x, _ in stream.dataset)
print(count, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def test_peak_memory_does_not_grow_with_the_number_of_images(tmp_path):
    peaks = []
    for count in (30, 300):
        folder = tmp_path / str(count)
        _jpegs(folder, ["a", "b"], count // 2, size=(48, 64))
        out = subprocess.run([sys.executable, "-c", MEMORY_SCRIPT, str(folder)], check=True,
                             capture_output=True, text=True, env=dict(os.environ)).stdout
        images, peak_kb = (int(v) for v in out.split()[-2:])
        assert images == count // 8 * 8  # full batches of 8
        peaks.append(peak_kb)
    # 270 more decoded 48x64 images would be ~2.5 MB; the decoded-in-memory reader held
    # every one (and its float copies). Allow noise, not growth with the folder.
    assert peaks[1] - peaks[0] < 40_000, peaks
