"""The preprocessing parameters both image pipelines share (`DeiTImageProcessor` on numpy/PIL
and the `DeiTPreprocessing` layer): the ImageNet statistics, size dicts, mean/std values and the
resize arithmetic. It imports nothing of keras_deit, so both (and the presets) may use it."""

import numbers

import numpy as np

# ImageNet statistics: "default" is timm's and DeiT's (presets, timm recipes); "standard"
# (0.5) is the transformers processor's default.
IMAGENET_DEFAULT_MEAN = (0.485, 0.456, 0.406)
IMAGENET_DEFAULT_STD = (0.229, 0.224, 0.225)
IMAGENET_STANDARD_MEAN = (0.5, 0.5, 0.5)
IMAGENET_STANDARD_STD = (0.5, 0.5, 0.5)


def _positive_int(value, what):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value <= 0:
        raise ValueError(f"{what} must be a positive integer, got {value!r}.")
    return int(value)


def _size_dict(size, name="size", allow_shortest_edge=True, default_to_square=True):
    """Returns `{"height", "width"}` or `{"shortest_edge"}` from a size argument.

    Accepts such a dict, an int (a square, or the shortest edge when
    `default_to_square=False`, as in old hub configs) or a `(height, width)` pair.
    """
    if isinstance(size, dict):
        keys = set(size)
        if keys == {"height", "width"}:
            return {
                "height": _positive_int(size["height"], f"{name}['height']"),
                "width": _positive_int(size["width"], f"{name}['width']"),
            }
        if keys == {"shortest_edge"} and allow_shortest_edge:
            edge = _positive_int(size["shortest_edge"], f"{name}['shortest_edge']")
            return {"shortest_edge": edge}
        allowed = "{'height', 'width'}" + (" or {'shortest_edge'}" if allow_shortest_edge else "")
        raise ValueError(f"{name} must be a dict with keys {allowed}, got {size!r}.")
    if isinstance(size, numbers.Integral) and not isinstance(size, bool):
        if default_to_square or not allow_shortest_edge:
            side = _positive_int(size, name)
            return {"height": side, "width": side}
        return {"shortest_edge": _positive_int(size, name)}
    if isinstance(size, (tuple, list)) and len(size) == 2:
        return {
            "height": _positive_int(size[0], f"{name}[0]"),
            "width": _positive_int(size[1], f"{name}[1]"),
        }
    raise ValueError(
        f"{name} must be a dict, an int or a (height, width) pair, got {size!r}."
    )


def _mean_or_std(value, name):
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, (tuple, list, np.ndarray)) and len(value) > 0:
        return [float(v) for v in value]
    raise ValueError(f"{name} must be a float or a sequence of floats, got {value!r}.")


def _resize_output_size(height, width, size):
    """(height, width) after resizing to `size` ({"height","width"} or {"shortest_edge"})."""
    if "shortest_edge" not in size:
        return size["height"], size["width"]
    short, long = (width, height) if width <= height else (height, width)
    new_short = size["shortest_edge"]
    # torchvision's rule (also transformers'): truncate the long side, never round it.
    new_long = int(new_short * long / short)
    return (new_long, new_short) if width <= height else (new_short, new_long)
