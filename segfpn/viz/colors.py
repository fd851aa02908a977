"""Colours: stable per-class colours, per-instance variations and readable text colours.

Every colour is an RGB tuple of three ints in 0..255 (or a uint8 [N, 3] array for many).
Nothing here is random: the same class gets the same colour in every run and every process.
"""

from __future__ import annotations

import colorsys
import zlib
from collections.abc import Iterable, Mapping
from functools import lru_cache

import numpy as np

from segfpn.categories import THINGS_CLASS_NAME, Category, coco_panoptic_categories
from segfpn.structures import Instances

RGB = tuple[int, int, int]

#: Colour of the semantic head's merged "things" class: a neutral grey.
THINGS_COLOR: RGB = (128, 128, 128)
#: Text colours picked by :func:`text_color_for`.
DARK_TEXT: RGB = (0, 0, 0)
LIGHT_TEXT: RGB = (255, 255, 255)

_GOLDEN_ANGLE = np.pi * (3.0 - np.sqrt(5.0))


@lru_cache(maxsize=1)
def _coco_colors() -> dict[int, tuple[str, RGB]]:
    return {c.id: (c.name, tuple(int(v) for v in c.color)) for c in coco_panoptic_categories()}


def _hashed_color(key: str) -> RGB:
    """A fairly saturated colour drawn from a CRC32 of ``key`` (the same in every run): hue from
    the low 16 bits, saturation and brightness from the next bytes."""
    digest = zlib.crc32(key.encode("utf-8"))
    hue = (digest & 0xFFFF) / 65536.0
    saturation = 0.5 + 0.4 * ((digest >> 16) & 0xFF) / 255.0
    value = 0.7 + 0.25 * ((digest >> 24) & 0xFF) / 255.0
    r, g, b = colorsys.hsv_to_rgb(hue, saturation, value)
    return (round(r * 255), round(g * 255), round(b * 255))


def class_color(category_id: int, name: str = "") -> RGB:
    """The colour of one class.

    The COCO panoptic colour of ``category_id`` when that id is a COCO category (and ``name``,
    if given, is that category's name); the merged semantic "things" class is grey; any other
    class gets a colour hashed from its name (or its id when it has no name), so it is still the
    same in every run.
    """
    known = _coco_colors().get(int(category_id))
    if known is not None and (not name or name == known[0]):
        return known[1]
    if name == THINGS_CLASS_NAME and int(category_id) == 0:
        return THINGS_COLOR
    return _hashed_color(name or f"category-{int(category_id)}")


def colors_from_categories(categories: Iterable[Category]) -> dict[int, RGB]:
    """``{category_id: color}`` from ``Category.color``, for the ``colors=`` option of the
    drawing functions (e.g. ``colors_from_categories(category_set.stuff)``)."""
    return {c.id: tuple(int(v) for v in c.color) for c in categories}


def resolve_color(category_id: int, name: str, colors: Mapping[int, RGB] | None) -> RGB:
    """``colors[category_id]`` when given there, else :func:`class_color`."""
    if colors is not None and int(category_id) in colors:
        return tuple(int(v) for v in colors[int(category_id)])
    return class_color(category_id, name)


def jitter_color(color: RGB, index: int, *, amount: float = 56.0) -> RGB:
    """A variation of ``color`` for the ``index``-th object of the same class.

    Index 0 returns ``color`` itself. Index k > 0 first pulls the colour towards mid-grey (so no
    channel can clip), then shifts its hue by k golden angles with a constant strength
    ``amount``: consecutive indices land far apart, and the colour stays recognisably the class's.
    """
    if index == 0:
        return tuple(int(v) for v in color)
    c = np.asarray(color, dtype=np.float64)
    shrunk = 128.0 + (c - 128.0) * (128.0 - amount) / 128.0
    theta = index * _GOLDEN_ANGLE
    # A direction in the plane orthogonal to grey (1, 1, 1): changes hue, not brightness.
    direction = np.cos(theta + np.array([0.0, 2.0, 4.0]) * np.pi / 3.0)
    out = np.clip(np.rint(shrunk + amount * direction), 0, 255)
    return tuple(int(v) for v in out)


def instance_colors(instances: Instances, *, by: str = "instance",
                    colors: Mapping[int, RGB] | None = None) -> np.ndarray:
    """uint8 [N, 3] colour of every detection of ``instances``.

    by="class": the class colour. by="instance": the k-th detection of a class (in the given,
    score-sorted order) gets ``jitter_color(class colour, k)``, so two people are told apart while
    both stay reddish. The colours depend on the whole list, not on any filtering, so they do not
    change while a score threshold moves.
    """
    if by not in ("class", "instance"):
        raise ValueError(f"by must be 'class' or 'instance', got {by!r}")
    out = np.zeros((len(instances), 3), dtype=np.uint8)
    seen: dict[int, int] = {}
    for i, label in enumerate(instances.labels.tolist()):
        base = resolve_color(instances.category_ids[label], instances.class_names[label], colors)
        rank = seen.get(label, 0) if by == "instance" else 0
        seen[label] = seen.get(label, 0) + 1
        out[i] = jitter_color(base, rank)
    return out


def relative_luminance(color: RGB) -> float:
    """WCAG relative luminance of an sRGB colour, 0 (black) .. 1 (white)."""
    c = np.asarray(color, dtype=np.float64) / 255.0
    linear = np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)
    return float(linear @ np.array([0.2126, 0.7152, 0.0722]))


def contrast_ratio(a: RGB, b: RGB) -> float:
    """WCAG contrast ratio between two colours, 1 (same) .. 21 (black on white)."""
    la, lb = relative_luminance(a), relative_luminance(b)
    return (max(la, lb) + 0.05) / (min(la, lb) + 0.05)


def text_color_for(background: RGB) -> RGB:
    """Black or white, whichever contrasts more with ``background`` (always at least 4.5:1)."""
    background = tuple(int(v) for v in background)
    if contrast_ratio(DARK_TEXT, background) >= contrast_ratio(LIGHT_TEXT, background):
        return DARK_TEXT
    return LIGHT_TEXT
