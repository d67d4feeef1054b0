"""DeiTImageProcessor's per-image methods (`resize`, `center_crop`, `rescale`, `normalize`)
against transformers' methods of the same names on the same arrays."""

import numpy as np
import pytest

from keras_deit.image_processing import DeiTImageProcessor

LAYOUTS = ("channels_last", "channels_first")


def _image(layout, dtype="uint8", height=21, width=34, seed=0):
    """A random RGB image, (H, W, 3) or (3, H, W); floats lie in [0, 1]."""
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, (height, width, 3)).astype(np.uint8)
    if dtype != "uint8":
        image = (image / 255).astype(dtype)
    return np.moveaxis(image, -1, 0) if layout == "channels_first" else image


@pytest.fixture(scope="module")
def theirs():
    """transformers' DeiT processor of the PIL backend, and its base class (whose numpy
    `rescale` / `normalize` / `center_crop` take `data_format` / `input_data_format`)."""
    transformers = pytest.importorskip("transformers")
    from transformers.image_processing_utils import BaseImageProcessor
    from transformers.models.deit.image_processing_pil_deit import DeiTImageProcessorPil

    return transformers, DeiTImageProcessorPil(), BaseImageProcessor


def _same(ours, reference, atol=0.0):
    reference = np.asarray(reference)
    assert ours.shape == reference.shape and ours.dtype == reference.dtype
    np.testing.assert_allclose(ours, reference, rtol=0, atol=atol)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("out", (None, "channels_last", "channels_first"))
def test_base_methods_match_transformers(theirs, layout, out):
    _, processor, base = theirs
    ours = DeiTImageProcessor()
    for dtype in ("uint8", "float32"):
        image = _image(layout, dtype)
        given = dict(data_format=out, input_data_format=layout)
        _same(ours.rescale(image, 1 / 255, **given),
              base.rescale(processor, image, 1 / 255, **given))
        _same(ours.normalize(image, [0.485, 0.456, 0.406], [0.229, 0.224, 0.225], **given),
              base.normalize(processor, image, [0.485, 0.456, 0.406],
                             [0.229, 0.224, 0.225], **given))
        for size in ({"height": 16, "width": 20}, {"height": 30, "width": 37}, 17):
            # The second crop is larger than the image: zero padding, extra row/column first.
            _same(ours.center_crop(image, size, **given),
                  base.center_crop(processor, image, size, **given))
    # The layout is inferred when not given (transformers' rule).
    image = _image(layout)
    _same(ours.normalize(image, 0.5, 0.5), base.normalize(processor, image, 0.5, 0.5))


@pytest.mark.parametrize("layout", LAYOUTS)
def test_resize_matches_transformers(theirs, layout):
    transformers, processor, _ = theirs
    from transformers.image_transforms import resize
    from transformers.image_utils import SizeDict

    ours = DeiTImageProcessor()
    bilinear = transformers.image_utils.PILImageResampling.BILINEAR
    for dtype in ("uint8", "float32"):
        image = _image(layout, dtype)
        for size, resample in (({"height": 40, "width": 24}, None), ({"height": 9, "width": 13},
                                                                     bilinear)):
            resample_kw = {} if resample is None else {"resample": resample}
            reference = resize(image, (size["height"], size["width"]),
                               resample=resample or 3, input_data_format=layout)  # 3: bicubic
            _same(ours.resize(image, size, input_data_format=layout, **resample_kw), reference)
        # The v5 PIL backend's own method works on (C, H, W) arrays.
        chw = image if layout == "channels_first" else np.moveaxis(image, -1, 0)
        _same(ours.resize(chw, {"shortest_edge": 16}, input_data_format="channels_first"),
              processor.resize(chw, SizeDict(shortest_edge=16), resample=3))


def test_v5_backend_methods_on_channels_first(theirs):
    _, processor, _ = theirs
    from transformers.image_utils import SizeDict

    ours = DeiTImageProcessor()
    image = _image("channels_first")
    _same(ours.center_crop(image, {"height": 8, "width": 30}),
          processor.center_crop(image, SizeDict(height=8, width=30)))
    _same(ours.rescale(image, 1 / 255), processor.rescale(image, 1 / 255))
    scaled = ours.rescale(image, 1 / 255)
    _same(ours.normalize(scaled, [0.5, 0.4, 0.3], [0.2, 0.3, 0.4]),
          processor.normalize(scaled, [0.5, 0.4, 0.3], [0.2, 0.3, 0.4]))


def test_methods_compose_to_preprocess():
    processor = DeiTImageProcessor(size={"height": 24, "width": 24},
                                   crop_size={"height": 16, "width": 16})
    image = _image("channels_last")
    steps = processor.resize(image, processor.size)
    steps = processor.center_crop(steps, processor.crop_size)
    steps = processor.rescale(steps, processor.rescale_factor)
    steps = processor.normalize(steps, processor.image_mean, processor.image_std)
    np.testing.assert_array_equal(steps, processor(image)["pixel_values"][0])


@pytest.mark.parametrize("call, match", [
    (lambda p: p.rescale(np.zeros((2, 5, 5, 3)), 0.5), r"shape=\(2, 5, 5, 3\)"),
    (lambda p: p.normalize(np.zeros((5, 5, 3)), [0.5, 0.5], 0.5), "has 2 values"),
    (lambda p: p.center_crop(np.zeros((5, 5, 3)), {"shortest_edge": 4}), "shortest_edge"),
    (lambda p: p.resize(np.zeros((5, 5, 3)), 8, data_format="NHWC"), "'NHWC'"),
    (lambda p: p.rescale(np.zeros((5, 5, 7)), 0.5), "channels"),
])
def test_bad_arguments_name_the_value(call, match):
    with pytest.raises(ValueError, match=match):
        call(DeiTImageProcessor())
