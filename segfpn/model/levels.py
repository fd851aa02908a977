"""Pyramid levels are named by their stride: level l (``c<l>`` bottom-up, ``p<l>`` FPN) has stride
2**l in network-input pixels. The one place that says so."""

from __future__ import annotations


def level_stride(name: str) -> int:
    """The stride in network-input pixels of level ``name`` ("c2".."c5", "p2".."p7"): 2**l."""
    if len(name) < 2 or name[0] not in "cp" or not name[1:].isdigit():
        raise ValueError(f"a level is named c<l> or p<l> (c2, p3, ...), got {name!r}")
    return 2 ** int(name[1:])


def level_strides(names) -> dict[str, int]:
    """``{name: stride}`` for the level names given, in their order."""
    return {name: level_stride(name) for name in names}
