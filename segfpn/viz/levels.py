"""Which pyramid level each detection came from: the RoI a two-stage model pooled (the rule
k = floor(4 + log2(sqrt(wh) / 224))), or the anchor level of a RetinaNet; counts, and a drawing."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import cv2
import numpy as np

from segfpn.structures import Instances
from segfpn.viz.colors import RGB
from segfpn.viz.instances import box_region, visible_indices
from segfpn.viz.primitives import (as_rgb_image, check_alpha, check_masks, draw_box_,
                                   draw_label_, fill_mask_, label_rect_for_box, line_thickness,
                                   text_style)

#: One colour per RoI level (Okabe-Ito, readable by colour-blind people): p2 sky blue,
#: p3 bluish green, p4 orange, p5 reddish purple.
LEVEL_COLORS: dict[int, RGB] = {2: (86, 180, 233), 3: (0, 158, 115), 4: (230, 159, 0),
                                5: (204, 121, 167)}
#: Every pyramid level's colour: the RoI levels', and RetinaNet's p6 blue and p7 vermillion.
PYRAMID_LEVEL_COLORS: dict[int, RGB] = {**LEVEL_COLORS, 6: (0, 114, 178), 7: (213, 94, 0)}
#: Colour of a level outside 2..7 (should not happen with the standard rules).
OTHER_LEVEL_COLOR: RGB = (200, 200, 200)
#: The levels a RetinaNet's detections come from (its pyramid p3-p7).
RETINANET_LEVELS = (3, 7)

_LEVEL_RULE = ("Each RoI of w×h pixels (in the resized input) is pooled from level "
               "k = ⌊4 + log2(√(wh)/224)⌋, clamped to 2…5: "
               "small boxes read the fine p2 map, large boxes the coarse p5.")


_ANCHOR_LEVEL_RULE = ("RetinaNet has no RoIs: every level p3…p7 predicts a score per class and a box for 9 "
                      "anchors at each of its cells, of sizes 4·2^k × (1, 2^⅓, 2^⅔) on level k "
                      "(32–50 px on p3, 512–812 px on p7), and each detection keeps the level of its anchor.")


def level_rule_text() -> str:
    """One line explaining how an RoI's pyramid level is chosen."""
    return _LEVEL_RULE


def anchor_level_rule_text() -> str:
    """One line explaining where a RetinaNet detection's level comes from."""
    return _ANCHOR_LEVEL_RULE


def level_for_box(w, h, *, canonical_size: float = 224.0, canonical_level: int = 4,
                  min_level: int = 2, max_level: int = 5, eps: float = 1e-6) -> np.ndarray:
    """int64 array (the broadcast shape of ``w`` and ``h``): the FPN level of RoIs of w x h
    pixels in the resized input, k = floor(canonical_level + log2(sqrt(w*h) / canonical_size)
    + eps) clamped to [min_level, max_level] (the model's ``assign_levels``; empty boxes get
    ``min_level``)."""
    w = np.asarray(w, dtype=np.float64)
    h = np.asarray(h, dtype=np.float64)
    area = np.clip(w, 0, None) * np.clip(h, 0, None)
    with np.errstate(divide="ignore"):
        k = np.floor(canonical_level + np.log2(np.sqrt(area) / canonical_size) + eps)
    return np.clip(k, min_level, max_level).astype(np.int64)


def level_counts(levels, *, min_level: int = 2, max_level: int = 5) -> dict[int, int]:
    """``{level: count}`` for every level min_level..max_level (zeros included), plus any other
    level that occurs, in ascending order."""
    values, counts = np.unique(np.asarray(levels, dtype=np.int64).ravel(), return_counts=True)
    out = {k: 0 for k in range(min_level, max_level + 1)}
    out.update({int(v): int(c) for v, c in zip(values, counts)})
    return dict(sorted(out.items()))


def level_color(level: int, colors: Mapping[int, RGB] | None = None) -> RGB:
    table = PYRAMID_LEVEL_COLORS if colors is None else colors
    return tuple(int(v) for v in table.get(int(level), OTHER_LEVEL_COLOR))


def _legend_lines(counts: dict[int, int]) -> list[str]:
    return [f"p{k} (stride {2 ** k}): {n}" for k, n in counts.items()]


def _legend_corner(image_size: tuple[int, int], panel: tuple[int, int],
                   boxes: np.ndarray) -> tuple[int, int]:
    """Top-left (x, y) of the legend panel: the image corner whose panel covers the least box
    area (top-left on ties)."""
    h, w = image_size
    pw, ph = panel
    corners = [(0, 0), (w - pw, 0), (0, h - ph), (w - pw, h - ph)]

    def covered(corner: tuple[int, int]) -> float:
        x0, y0 = corner
        ix = np.clip(np.minimum(boxes[:, 2], x0 + pw) - np.maximum(boxes[:, 0], x0), 0, None)
        iy = np.clip(np.minimum(boxes[:, 3], y0 + ph) - np.maximum(boxes[:, 1], y0), 0, None)
        return float((ix * iy).sum())

    return min(corners, key=covered) if len(boxes) else corners[0]


def _draw_legend_(out: np.ndarray, counts: dict[int, int], colors: Mapping[int, RGB] | None,
                  *, title: str, boxes: np.ndarray, font_scale: float | None) -> None:
    """A dark panel in the image corner that hides the fewest boxes: the title, then a swatch
    and "p2 (stride 4): 3" per level."""
    h, w = out.shape[:2]
    style = text_style((h, w), font_scale=font_scale)
    lines = _legend_lines(counts)
    sizes = [style.label_size(t) for t in [title, *lines]]
    row_h = max(s[1] for s in sizes)
    swatch = row_h - 2 * style.pad
    margin = style.pad
    content_w = max(sizes[0][0], max(s[0] for s in sizes[1:]) + swatch + style.pad)
    panel_w = min(w, content_w + 2 * margin)
    panel_h = min(h, row_h * len(sizes) + 2 * margin)
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    px, py = _legend_corner((h, w), (panel_w, panel_h), boxes)
    panel = out[py:py + panel_h, px:px + panel_w]
    panel[...] = cv2.convertScaleAbs(panel, alpha=0.35)
    x0, y0 = px + margin, py + margin
    draw_label_(out, title, (x0, y0, x0 + sizes[0][0], y0 + row_h), background=(0, 0, 0),
                style=style)
    for row, (level, text) in enumerate(zip(counts, lines), start=1):
        ry = y0 + row * row_h
        sx = x0 + style.pad
        cv2.rectangle(out, (sx, ry + style.pad), (sx + swatch - 1, ry + style.pad + swatch - 1),
                      level_color(level, colors), -1)
        tx = sx + swatch
        draw_label_(out, text, (tx, ry, tx + sizes[row][0], ry + row_h), background=(0, 0, 0),
                    style=style)


def draw_levels(image_rgb: np.ndarray, instances: Instances, *, score_threshold: float = 0.5,
                classes: Iterable[str] | None = None, source: str = "mask",
                colors: Mapping[int, RGB] | None = None, mask_alpha: float = 0.0,
                show_labels: bool = True, show_legend: bool = True,
                font_scale: float | None = None, title: str | None = None,
                level_range: tuple[int, int] = (2, 5)) -> np.ndarray:
    """Draw every kept detection's box in the colour of the FPN level its RoI was pooled from.

    image_rgb: uint8 [H, W, 3]. source: "mask" uses ``instances.levels`` (the mask head's RoI,
    from the final box; a RetinaNet's anchor level), "box" uses ``instances.box_levels`` (the
    box head's RoI, from the proposal). colors: level -> RGB (default :data:`PYRAMID_LEVEL_COLORS`).
    mask_alpha > 0 also fills each mask (each box, when ``instances.masks`` is None) in its
    level colour. Each box is tagged "p3" etc.; a legend in the image corner that hides the
    fewest boxes gives the number of drawn detections per level of ``level_range`` (and any
    other level present) under ``title`` (default: "RoI level (mask head)" / "(box head)";
    use :data:`RETINANET_LEVELS` and e.g. "Anchor level" for a RetinaNet).
    Returns a new uint8 [H, W, 3].
    """
    image = as_rgb_image(image_rgb)
    mask_alpha = check_alpha(mask_alpha)
    if source not in ("mask", "box"):
        raise ValueError(f"source must be 'mask' (instances.levels) or 'box' "
                         f"(instances.box_levels), got {source!r}")
    levels = np.asarray(instances.levels if source == "mask" else instances.box_levels)
    h, w = image.shape[:2]
    order = visible_indices(instances, score_threshold=score_threshold, classes=classes)[::-1]
    style = text_style((h, w), font_scale=font_scale)
    thickness = line_thickness((h, w)) + 1
    out = image.copy()
    if mask_alpha > 0 and len(order) and instances.masks is None:
        for i in order:
            bounds = box_region(instances.boxes[i], (h, w))
            if bounds is not None:
                region = out[bounds]
                fill_mask_(region, np.ones(region.shape[:2], dtype=bool), level_color(levels[i], colors), mask_alpha,
                           bounds=(slice(None), slice(None)))
    elif mask_alpha > 0 and len(order):
        check_masks(instances.masks, (h, w))
        for i in order:
            bounds = instances.masks.bounds(i)
            if bounds is not None:
                fill_mask_(out[bounds], instances.masks.crops[i], level_color(levels[i], colors), mask_alpha)
    for i in order:
        draw_box_(out, instances.boxes[i], level_color(levels[i], colors), thickness)
    if show_labels:
        for i in order:
            text = f"p{int(levels[i])}"
            rect = label_rect_for_box(instances.boxes[i], style.label_size(text), (h, w))
            draw_label_(out, text, rect, background=level_color(levels[i], colors), style=style)
    if show_legend:
        if title is None:
            title = "RoI level (mask head)" if source == "mask" else "RoI level (box head)"
        counts = level_counts(levels[order], min_level=level_range[0], max_level=level_range[1])
        _draw_legend_(out, counts, colors, title=title, boxes=instances.boxes[order], font_scale=font_scale)
    return out
