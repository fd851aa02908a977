"""The instance view: detections drawn as coloured masks, outlines, boxes and "name 0.93" labels;
for a box-only model (Faster R-CNN, RetinaNet: ``instances.masks`` is None) each box is filled
instead of a mask."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np

from segfpn.structures import Instances
from segfpn.viz.colors import RGB, instance_colors
from segfpn.viz.primitives import (as_rgb_image, check_alpha, check_masks, dim_, draw_box_,
                                   draw_label_, fill_mask_, label_rect_for_box, line_thickness,
                                   outline_mask_, text_style)


def visible_indices(instances: Instances, *, score_threshold: float = 0.5,
                    classes: Iterable[str] | None = None) -> np.ndarray:
    """int64 [K] indices (in score order) of the detections with ``score >= score_threshold``
    whose class name is in ``classes`` (None keeps every class, an empty list none).

    Raises ValueError for a class name the model does not have.
    """
    keep = np.asarray(instances.scores) >= score_threshold
    if classes is not None:
        wanted = set(classes)
        unknown = sorted(wanted - set(instances.class_names))
        if unknown:
            raise ValueError(f"unknown class name(s) {unknown}; this model's classes are "
                             f"{instances.class_names}")
        wanted_labels = [i for i, n in enumerate(instances.class_names) if n in wanted]
        keep &= np.isin(instances.labels, wanted_labels)
    return np.flatnonzero(keep).astype(np.int64)


def box_region(box: np.ndarray, image_size: tuple[int, int]) -> tuple[slice, slice] | None:
    """(rows, cols) of the whole pixels an xyxy box covers (corners rounded), clipped to an image
    of ``image_size`` (H, W); None when nothing is left."""
    h, w = image_size
    x0, y0, x1, y1 = np.round(np.asarray(box, dtype=np.float64)).astype(np.int64)
    x0, x1 = min(max(int(x0), 0), w), min(max(int(x1), 0), w)
    y0, y1 = min(max(int(y0), 0), h), min(max(int(y1), 0), h)
    return (slice(y0, y1), slice(x0, x1)) if y1 > y0 and x1 > x0 else None


def instance_label(instances: Instances, index: int, *, show_score: bool = True) -> str:
    """The label text of detection ``index``: "person 0.93" (or "person")."""
    name = instances.class_names[int(instances.labels[index])]
    return f"{name} {float(instances.scores[index]):.2f}" if show_score else name


def draw_instances(image_rgb: np.ndarray, instances: Instances, *, score_threshold: float = 0.5,
                   classes: Iterable[str] | None = None, alpha: float = 0.5,
                   show_boxes: bool = True, show_labels: bool = True, show_masks: bool = True,
                   show_contours: bool = True, show_scores: bool = True,
                   color_by: str = "instance", colors: Mapping[int, RGB] | None = None,
                   highlight: int | None = None, font_scale: float | None = None) -> np.ndarray:
    """Draw detections over an image.

    image_rgb: uint8 [H, W, 3]; ``instances.masks`` must be masks of an image of the same size,
    or None (a box-only model), and then each detection's box is filled where its mask would
    be (``show_masks``, ``alpha``) and outlined (``show_contours``).
    Returns a new uint8 [H, W, 3] image; the input is not modified.

    Detections with ``score < score_threshold`` or a class not in ``classes`` are left out.
    ``alpha`` is the opacity of the mask fill (0: image unchanged, 1: the exact mask colour);
    ``show_contours`` adds a solid outline just inside each mask (pixels outside every mask
    stay untouched). Lower scores are drawn first so the best detections end on top.
    Colours: ``color_by="instance"`` varies the class colour per detection, "class" uses it
    as is; ``colors`` maps COCO category ids to RGB to override the COCO colours.
    ``highlight``: index into ``instances`` of a detection to emphasise (drawn even below the
    threshold); everything else is dimmed.
    """
    image = as_rgb_image(image_rgb)
    alpha = check_alpha(alpha)
    h, w = image.shape[:2]
    n = len(instances)
    has_masks = instances.masks is not None
    if show_masks and n and has_masks:
        check_masks(instances.masks, (h, w))
    if highlight is not None and not 0 <= int(highlight) < n:
        raise ValueError(f"highlight={highlight} is not a detection index (0..{n - 1})")

    order = visible_indices(instances, score_threshold=score_threshold, classes=classes)
    if highlight is not None:
        order = order[order != int(highlight)]
    order = order[::-1]  # lowest score first: the best detections are drawn last, on top
    palette = instance_colors(instances, by=color_by, colors=colors)
    style = text_style((h, w), font_scale=font_scale)
    thickness = line_thickness((h, w))
    out = image.copy()

    def draw(indices: np.ndarray, *, emphasis: bool) -> None:
        width = thickness * 2 if emphasis else thickness
        if show_masks and not has_masks:
            for i in indices:
                bounds = box_region(instances.boxes[i], (h, w))
                if bounds is None:
                    continue
                color = tuple(int(v) for v in palette[i])
                region = out[bounds]
                whole = np.ones(region.shape[:2], dtype=bool)
                fill_mask_(region, whole, color, alpha, source=image[bounds] if emphasis else None,
                           bounds=(slice(None), slice(None)))
                if show_contours:
                    draw_box_(out, instances.boxes[i], color, width)
        elif show_masks:
            for i in indices:
                # Each mask drawn within its region only: no full frame per mask.
                bounds = instances.masks.bounds(i)
                if bounds is None:
                    continue
                crop = instances.masks.crops[i]
                color = tuple(int(v) for v in palette[i])
                fill_mask_(out[bounds], crop, color, alpha, source=image[bounds] if emphasis else None)
                if show_contours:
                    outline_mask_(out[bounds], crop, color, width)
        if show_boxes:
            for i in indices:
                draw_box_(out, instances.boxes[i], tuple(int(v) for v in palette[i]), width)
        if show_labels:
            for i in indices:
                text = instance_label(instances, i, show_score=show_scores)
                rect = label_rect_for_box(instances.boxes[i], style.label_size(text), (h, w))
                draw_label_(out, text, rect, background=tuple(int(v) for v in palette[i]),
                            style=style)

    draw(order, emphasis=False)
    if highlight is not None:
        i = int(highlight)
        if show_masks and has_masks:
            keep = instances.masks[i]
        else:
            keep = np.zeros((h, w), dtype=bool)
            bounds = box_region(instances.boxes[i], (h, w))
            if bounds is not None:
                keep[bounds] = True
            out[keep] = image[keep]
        dim_(out, keep)
        draw(np.array([i]), emphasis=True)
    return out
