"""Drawings for the pyramid explained (:mod:`segfpn.explain`): RoIAlign grids, PCA colours and
28x28 mask probabilities as images, numpy in, numpy out (uint8 [H, W, 3] RGB).

Every grid is drawn against a scale it is given, so that the grids of several levels share one.
"""

from __future__ import annotations

import cv2
import numpy as np

from segfpn.viz.primitives import as_rgb_image, draw_box_, draw_label_, label_rect_for_box, line_thickness, text_style

#: OpenCV colour map of the scalar grids (perceptually uniform, readable in grey).
GRID_COLORMAP = cv2.COLORMAP_VIRIDIS


def grid_image(values: np.ndarray, *, value_range: tuple[float, float], cell: int = 16,
               colormap: int = GRID_COLORMAP) -> np.ndarray:
    """A scalar grid float [S, S'] as uint8 [S * cell, S' * cell, 3] RGB: ``value_range`` (lo, hi)
    mapped onto ``colormap`` (values outside clipped; NaN drawn black), each cell a square block."""
    values = np.asarray(values, dtype=np.float64)
    if values.ndim != 2:
        raise ValueError(f"values must be a 2-D grid, got shape {values.shape}")
    lo, hi = (float(v) for v in value_range)
    cell = _check_cell(cell)
    unit = np.clip((values - lo) / (hi - lo), 0.0, 1.0) if hi > lo else np.zeros_like(values)
    missing = ~np.isfinite(unit)
    levels = np.rint(np.nan_to_num(unit) * 255.0).astype(np.uint8)
    rgb = cv2.cvtColor(cv2.applyColorMap(levels, colormap), cv2.COLOR_BGR2RGB)
    rgb[missing] = 0
    return _blocks(rgb, cell)


def pca_image(components: np.ndarray, *, ranges: np.ndarray, cell: int = 16) -> np.ndarray:
    """Three principal components float [S, S', 3] as uint8 RGB [S * cell, S' * cell, 3]: component
    c scaled from ``ranges[c]`` = (min, max) to 0..255, so grids given the same ranges share colours."""
    components = np.asarray(components, dtype=np.float64)
    ranges = np.asarray(ranges, dtype=np.float64)
    if components.ndim != 3 or components.shape[2] != 3:
        raise ValueError(f"components must be [S, S', 3], got shape {components.shape}")
    if ranges.shape != (3, 2):
        raise ValueError(f"ranges must be [3, 2] (min, max per component), got shape {ranges.shape}")
    span = ranges[:, 1] - ranges[:, 0]
    unit = np.where(span > 0, (components - ranges[:, 0]) / np.where(span > 0, span, 1.0), 0.0)
    rgb = np.rint(np.clip(np.nan_to_num(unit), 0.0, 1.0) * 255.0).astype(np.uint8)
    return _blocks(rgb, _check_cell(cell))


def grids_image(grids, *, mode: str = "mean_abs", cell: int = 16, gap: int = 6) -> np.ndarray:
    """Every level of a :class:`~segfpn.explain.RoIGrids` side by side (fine to coarse), on one
    scale: ``mode`` "mean_abs" (colour-mapped over ``grids.value_range``) or "pca" (over
    ``grids.pca_range``), ``gap`` white pixels between them. Returns uint8 RGB."""
    if mode == "mean_abs":
        tiles = [grid_image(g, value_range=grids.value_range, cell=cell) for g in grids.mean_abs]
    elif mode == "pca":
        tiles = [pca_image(g, ranges=grids.pca_range, cell=cell) for g in grids.pca]
    else:
        raise ValueError(f"mode must be 'mean_abs' or 'pca', got {mode!r}")
    if gap < 0:
        raise ValueError(f"gap must be >= 0, got {gap}")
    height = tiles[0].shape[0]
    spacer = np.full((height, gap, 3), 255, dtype=np.uint8)
    parts = []
    for k, tile in enumerate(tiles):
        if k:
            parts.append(spacer)
        parts.append(tile)
    return np.concatenate(parts, axis=1)


def mask_probs_image(probs: np.ndarray, *, cell: int = 8, colormap: int = GRID_COLORMAP) -> np.ndarray:
    """Mask probabilities float [M, M] in 0..1 (before pasting) as uint8 RGB [M * cell, M * cell, 3]."""
    return grid_image(probs, value_range=(0.0, 1.0), cell=cell, colormap=colormap)


def _check_cell(cell: int) -> int:
    if isinstance(cell, bool) or not isinstance(cell, (int, np.integer)) or not 1 <= int(cell) <= 256:
        raise ValueError(f"cell must be a whole number of pixels from 1 to 256, got {cell!r}")
    return int(cell)


def _blocks(rgb: np.ndarray, cell: int) -> np.ndarray:
    return np.ascontiguousarray(np.repeat(np.repeat(rgb, cell, axis=0), cell, axis=1))


#: Colours of the what-if diff: a detection kept, moved (changed), lost, or new.
DIFF_COLORS = {"kept": (46, 160, 67), "moved": (245, 158, 11), "lost": (220, 38, 38), "new": (37, 99, 235)}


def draw_what_if(image_rgb: np.ndarray, whatif, *, shown: np.ndarray | None = None,
                 shown_new: np.ndarray | None = None, thickness: int | None = None) -> np.ndarray:
    """The what-if diff over the image: every original detection's box in the colour of its
    status (:data:`DIFF_COLORS`: kept, moved, lost; a moved one also at its new place, thin), every
    new detection's box, each change tagged with its status. ``whatif``: a
    :class:`~segfpn.explain.WhatIf`; ``shown`` / ``shown_new``: bool masks of the original and
    re-run detections to draw (default all originals and every new one). Returns a new uint8
    [H, W, 3]."""
    out = as_rgb_image(image_rgb).copy()
    size = out.shape[:2]
    width = thickness or line_thickness(size) + 1
    style = text_style(size)
    if shown is None:
        shown = np.ones(len(whatif.status), dtype=bool)
    if shown_new is None:
        shown_new = whatif.new_status == "new"
    tags = []
    for i, status in enumerate(whatif.status.tolist()):
        if not shown[i]:
            continue
        color = DIFF_COLORS[status]
        draw_box_(out, whatif.original.boxes[i], color, width)
        if status == "moved":
            draw_box_(out, whatif.instances.boxes[int(whatif.match[i])], color, max(1, width // 2))
        tags.append((whatif.original.boxes[i], status, color))
    for j in np.flatnonzero(shown_new & (whatif.new_status == "new")).tolist():
        draw_box_(out, whatif.instances.boxes[j], DIFF_COLORS["new"], width)
        tags.append((whatif.instances.boxes[j], "new", DIFF_COLORS["new"]))
    for box, status, color in tags:
        if status != "kept":  # the changes carry a tag; kept ones only their colour
            rect = label_rect_for_box(box, style.label_size(status), size)
            draw_label_(out, status, rect, background=color, style=style)
    return out
