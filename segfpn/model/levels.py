"""Pyramid levels are named by their stride: level l (``c<l>`` bottom-up, ``p<l>`` FPN) has stride
2**l in network-input pixels. The one place that says so."""

from __future__ import annotations

from collections.abc import Iterable


def level_number(name: str) -> int:
    """l of level ``name`` ("c2".."c5", "p2".."p7"), e.g. 3 for "p3"."""
    if len(name) < 2 or name[0] not in "cp" or not name[1:].isdigit():
        raise ValueError(f"a level is named c<l> or p<l> (c2, p3, ...), got {name!r}")
    return int(name[1:])


def level_stride(name: str) -> int:
    """The stride in network-input pixels of level ``name`` ("c2".."c5", "p2".."p7"): 2**l."""
    return 2 ** level_number(name)


def level_strides(names: Iterable[str]) -> dict[str, int]:
    """``{name: stride}`` for the level names given, in their order."""
    return {name: level_stride(name) for name in names}
