"""detectron2's arithmetic at each discrete decision point, written out as facts for the tests.

detectron2 cannot be installed here; these functions transcribe its code at commit
02b5c4e295e990042a714712c21dc79b731e8833 (the one tests/data/d2_mini was made with), each with
the function it comes from. They are the reference the property and parity tests compare to.
"""

from __future__ import annotations

import math

import torch


def output_shape(old_h: int, old_w: int, short_edge_length: int, max_size: int) -> tuple[int, int]:
    """detectron2 ``ResizeShortestEdge.get_output_shape`` (data/transforms/augmentation_impl.py)."""
    h, w = old_h, old_w
    size = short_edge_length * 1.0
    scale = size / min(h, w)
    if h < w:
        newh, neww = size, scale * w
    else:
        newh, neww = scale * h, size
    if max(newh, neww) > max_size:
        scale = max_size * 1.0 / max(newh, neww)
        newh = newh * scale
        neww = neww * scale
    neww = int(neww + 0.5)
    newh = int(newh + 0.5)
    return newh, neww


def cell_anchors(size: float, aspect_ratios: tuple[float, ...]) -> torch.Tensor:
    """detectron2 ``DefaultAnchorGenerator.generate_cell_anchors`` (modeling/anchor_generator.py)."""
    anchors = []
    area = size**2.0
    for aspect_ratio in aspect_ratios:
        w = math.sqrt(area / aspect_ratio)
        h = aspect_ratio * w
        anchors.append([-w / 2.0, -h / 2.0, w / 2.0, h / 2.0])
    return torch.tensor(anchors)


def grid_anchors(grid: tuple[int, int], stride: int, offset: float, cell: torch.Tensor) -> torch.Tensor:
    """detectron2 ``_create_grid_offsets`` + ``DefaultAnchorGenerator._grid_anchors``."""
    shifts_x = torch.arange(offset * stride, grid[1] * stride, step=stride, dtype=torch.float32)
    shifts_y = torch.arange(offset * stride, grid[0] * stride, step=stride, dtype=torch.float32)
    shift_y, shift_x = torch.meshgrid(shifts_y, shifts_x, indexing="ij")
    shift_x, shift_y = shift_x.reshape(-1), shift_y.reshape(-1)
    shifts = torch.stack((shift_x, shift_y, shift_x, shift_y), dim=1)
    return (shifts.view(-1, 1, 4) + cell.view(1, -1, 4)).reshape(-1, 4)


def assign_levels(boxes: torch.Tensor, min_level: int, max_level: int, canonical_box_size: float,
                  canonical_level: int) -> torch.Tensor:
    """detectron2 ``assign_boxes_to_levels`` (modeling/poolers.py), levels 2..5 (not 0..3)."""
    box_sizes = torch.sqrt((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]))
    level_assignments = torch.floor(canonical_level + torch.log2(box_sizes / canonical_box_size + 1e-8))
    return torch.clamp(level_assignments, min=min_level, max=max_level).to(torch.int64)
