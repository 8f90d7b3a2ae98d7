"""The one check of model metadata read from a file: every reader calls :func:`validate_meta`.

Metadata arrives from files a user may have edited or been handed: ``model.json``, a training
checkpoint's ``meta``, an ONNX file's ``resnetlab.meta`` (or its ``.onnx.json`` sidecar) and
``finetune --from`` sources. Each value is used later in a way that fails far from the file when it
is wrong (issue 21, item 6): a ``classes`` list shorter than the class count is an IndexError inside
``predict``; ``std`` 0 divides by zero (NaN probabilities, invalid JSON); ``input_size`` 6000x6000
makes ``predict`` allocate gigabytes for a 32x32 picture; a string ``classes`` is split into
letters. So the values are checked here, once, against the bounds below, and a bad one is a
one-line :class:`CheckpointError` naming the file and the field.
"""

from __future__ import annotations

import math
import os

from resnetlab.errors import CheckpointError
from resnetlab.models.registry import ModelMeta

# The largest class count accepted: ImageNet-21k has 21,841; a file claiming more is damaged, and
# each class costs a row of the classifier (checked against the weights, but not before this).
MAX_CLASSES = 100_000
# The largest input side in pixels. Every image is resized to input_size before the model runs, so
# this bounds what predict and serve allocate per picture (4096x4096x3 float32 is 200 MB).
MAX_INPUT_SIDE = 4096
# Smallest std: the one resnetlab.data.splits.channel_stats writes for a constant channel; below it
# normalization divides by (nearly) zero and every probability becomes NaN.
MIN_STD = 1e-6
# Temperature bounds (the same the calibration fit searches in): outside them softmax(logits / T) is a
# one-hot or a uniform distribution for any real logits, and 0 or a tiny T overflows to NaN.
MIN_TEMPERATURE = 0.01
MAX_TEMPERATURE = 100.0


class _Bad(Exception):
    """One field is wrong; the message says which and why."""


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _triple(data: dict, key: str, default) -> tuple:
    value = data.get(key, default)
    if not isinstance(value, (list, tuple)) or len(value) != 3:
        raise _Bad(f"{key} must be a list of 3 values, got {value!r}")
    return tuple(value)


def _check(data) -> ModelMeta:
    if not isinstance(data, dict):
        raise _Bad(f"expected an object of fields, got {type(data).__name__}")
    defaults = ModelMeta(name="", num_classes=1)
    name = data.get("name")
    if not isinstance(name, str) or not name:
        raise _Bad(f"name must be the model's name (a non-empty string), got {name!r}")

    num_classes = data.get("num_classes")
    if not _is_int(num_classes) or not 1 <= num_classes <= MAX_CLASSES:
        raise _Bad(f"num_classes must be a whole number from 1 to {MAX_CLASSES:,}, got {num_classes!r}")

    classes = data.get("classes")
    if classes is not None:
        if not isinstance(classes, list) or not all(isinstance(c, str) for c in classes):
            raise _Bad(f"classes must be a list of class names (strings), got {_short(classes)}")
        if len(classes) != num_classes:
            raise _Bad(f"classes lists {len(classes)} names but num_classes is {num_classes}")
        if len(set(classes)) != len(classes):
            seen: set[str] = set()
            twice = next(c for c in classes if c in seen or seen.add(c))
            raise _Bad(f"classes names {twice!r} more than once")

    input_size = _triple(data, "input_size", defaults.input_size)
    if not all(_is_int(v) for v in input_size):
        raise _Bad(f"input_size must be 3 whole numbers [3, height, width], got {list(input_size)!r}")
    channels, height, width = input_size
    if channels != 3:
        raise _Bad(f"input_size {list(input_size)} has {channels} channels; resnetlab models take 3 (RGB)")
    if not (1 <= height <= MAX_INPUT_SIDE and 1 <= width <= MAX_INPUT_SIDE):
        raise _Bad(f"input_size {list(input_size)}: height and width must be from 1 to {MAX_INPUT_SIDE} pixels")

    mean = _triple(data, "mean", defaults.mean)
    if not all(_is_number(v) and 0.0 <= v <= 1.0 for v in mean):
        raise _Bad(f"mean must be 3 numbers in [0, 1] (pixel values scaled to 0..1), got {list(mean)!r}")
    std = _triple(data, "std", defaults.std)
    if not all(_is_number(v) and math.isfinite(v) and v >= MIN_STD for v in std):
        raise _Bad(f"std must be 3 finite numbers of at least {MIN_STD:g} (normalization divides by them), got {list(std)!r}")

    classifier = data.get("classifier", defaults.classifier)
    if not isinstance(classifier, str) or not classifier:
        raise _Bad(f"classifier must be the attribute name of the final layer (a string), got {classifier!r}")
    options = data.get("options", {})
    if not isinstance(options, dict) or not all(isinstance(k, str) for k in options):
        raise _Bad(f"options must be an object of model options, got {_short(options)}")

    interpolation = data.get("interpolation", defaults.interpolation)
    if interpolation != defaults.interpolation:  # the only resize resnetlab.imaging performs
        raise _Bad(f"interpolation must be {defaults.interpolation!r}, got {_short(interpolation)}")

    crop_pct = data.get("crop_pct", defaults.crop_pct)
    if not (_is_number(crop_pct) and 0.0 < crop_pct <= 1.0):  # 0 divides by zero; > 1 crops outside the picture
        raise _Bad(f"crop_pct must be a number in (0, 1] (the centre crop's share of the resized image), got {_short(crop_pct)}")

    temperature = data.get("temperature", defaults.temperature)
    if temperature is None:  # written by hand as null: the same as absent (uncalibrated)
        temperature = defaults.temperature
    if not (_is_number(temperature) and math.isfinite(temperature) and MIN_TEMPERATURE <= temperature <= MAX_TEMPERATURE):
        raise _Bad(f"temperature must be a finite number from {MIN_TEMPERATURE:g} to {MAX_TEMPERATURE:g} "
                   f"(probabilities are softmax(logits / temperature)), got {_short(temperature)}")

    return ModelMeta(
        name=name, num_classes=num_classes, input_size=(3, height, width),
        mean=tuple(float(v) for v in mean), std=tuple(float(v) for v in std),
        classifier=classifier, options=dict(options), classes=list(classes) if classes is not None else None,
        temperature=float(temperature), crop_pct=float(crop_pct),
    )


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def validate_meta(data, where: str | os.PathLike) -> ModelMeta:
    """A :class:`ModelMeta` from metadata read out of ``where`` (a file, or a description of the field).

    Raises a one-line :class:`CheckpointError` naming ``where`` and the wrong field.
    """
    try:
        return _check(data)
    except _Bad as exc:
        raise CheckpointError(f"{where}: malformed model metadata ({exc})") from None
