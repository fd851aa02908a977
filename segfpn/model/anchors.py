"""Anchors: one set of cell anchors per pyramid level, shifted over the level's grid."""

from __future__ import annotations

import math

import torch
from torch import nn


def cell_anchors(size: float, aspect_ratios: tuple[float, ...], *, round_corners: bool,
                 arithmetic: str = "float64") -> torch.Tensor:
    """[A, 4] xyxy anchors centred at 0 with area ``size**2`` and h/w = each aspect ratio.

    ``arithmetic`` says how the sides are computed, which decides the last bit of a corner and
    so, where a corner ends in exactly .5, which way ``round_corners`` rounds it:
    "float32" (torchvision): h = size * sqrt(ratio), w = size / sqrt(ratio) in float32;
    "float64" (detectron2): w = sqrt(size**2 / ratio), h = ratio * w in Python floats, then
    float32. ``round_corners`` rounds the corners half to even (torchvision); detectron2 keeps them.
    """
    if arithmetic == "float32":
        ratios = torch.tensor(aspect_ratios, dtype=torch.float32)
        h_ratios = torch.sqrt(ratios)
        w_ratios = 1 / h_ratios
        scale = torch.tensor(float(size), dtype=torch.float32)
        ws, hs = w_ratios * scale, h_ratios * scale
        out = torch.stack((-ws, -hs, ws, hs), dim=1) / 2
    elif arithmetic == "float64":
        corners = []
        for ratio in aspect_ratios:
            w = math.sqrt(size * size / ratio)
            h = ratio * w
            corners.append([-w / 2, -h / 2, w / 2, h / 2])
        out = torch.tensor(corners, dtype=torch.float32)
    else:
        raise ValueError(f"unknown anchor arithmetic {arithmetic!r}; expected float32 or float64")
    return out.round() if round_corners else out


def level_cell_anchors(sizes: tuple[float, ...], aspect_ratios: tuple[float, ...], *, round_corners: bool,
                       arithmetic: str = "float64", order: str = "size_major") -> torch.Tensor:
    """[S * R, 4] cell anchors of one level with several sizes (RetinaNet's three per octave):
    :func:`cell_anchors` of each size, numbered "size_major" (a = size * R + ratio, detectron2's
    ``generate_cell_anchors`` loop) or "ratio_major" (a = ratio * S + size, torchvision's
    ``generate_anchors`` outer product)."""
    per_size = torch.stack([cell_anchors(size, aspect_ratios, round_corners=round_corners, arithmetic=arithmetic)
                            for size in sizes])  # [S, R, 4]
    if order == "ratio_major":
        per_size = per_size.transpose(0, 1)
    elif order != "size_major":
        raise ValueError(f"unknown anchor order {order!r}; expected size_major or ratio_major")
    return per_size.reshape(-1, 4).contiguous()


class AnchorGenerator(nn.Module):
    """Anchors for levels of the given strides; anchor index = (y * W + x) * A + a.

    ``sizes``: one entry per level, a size or a tuple of sizes (numbered by ``order``, see
    :func:`level_cell_anchors`); every level has the same number A of anchors per position.
    ``strides_from_grid``: torchvision derives each level's stride as padded_size // grid_size,
    which for p6 of an 800 px input is 61, not 64; detectron2 uses the nominal stride.
    """

    def __init__(self, *, strides: tuple[int, ...], sizes: tuple[float | tuple[float, ...], ...],
                 aspect_ratios: tuple[float, ...], round_corners: bool, arithmetic: str = "float64",
                 offset: float = 0.0, strides_from_grid: bool = False, order: str = "size_major"):
        super().__init__()
        self.strides_from_grid = strides_from_grid
        if len(strides) != len(sizes):
            raise ValueError(f"need one anchor size per level: {len(strides)} levels, {len(sizes)} sizes")
        self.strides = strides
        self.offset = offset
        counts = set()
        for i, size in enumerate(sizes):
            level_sizes = tuple(size) if isinstance(size, (tuple, list)) else (size,)
            anchors = level_cell_anchors(level_sizes, aspect_ratios, round_corners=round_corners,
                                         arithmetic=arithmetic, order=order)
            self.register_buffer(f"cell_anchors_{i}", anchors, persistent=False)
            counts.add(len(anchors))
        if len(counts) != 1:
            raise ValueError(f"every level needs the same number of anchors per position, got {sorted(counts)}")
        self.num_anchors = counts.pop()

    def forward(self, grid_sizes: list[tuple[int, int]], padded_size: tuple[int, int]) -> list[torch.Tensor]:
        """``grid_sizes``: (h, w) per level; returns per level [h * w * A, 4] xyxy in input pixels."""
        out = []
        for i, ((h, w), stride) in enumerate(zip(grid_sizes, self.strides)):
            base = getattr(self, f"cell_anchors_{i}")
            if self.strides_from_grid:
                stride_y, stride_x = padded_size[0] // h, padded_size[1] // w
            else:
                stride_y, stride_x = stride, stride
            shift_x = (torch.arange(w, dtype=torch.float32, device=base.device) + self.offset) * stride_x
            shift_y = (torch.arange(h, dtype=torch.float32, device=base.device) + self.offset) * stride_y
            yy, xx = torch.meshgrid(shift_y, shift_x, indexing="ij")
            xx, yy = xx.reshape(-1), yy.reshape(-1)
            shifts = torch.stack((xx, yy, xx, yy), dim=1)
            out.append((shifts[:, None, :] + base[None, :, :]).reshape(-1, 4))
        return out
