"""Binary masks <-> polygons, for the annotation formats that store polygons (LabelMe, YOLO, CVAT).

Coordinates: a vertex ``(x, y)`` is the centre of the pixel in column x, row y, and a polygon
covers the pixels inside it and on its edges. This is how OpenCV traces contours and how the
tools that read these files draw polygons back into masks: LabelMe's ``shape_to_mask`` (PIL's
``ImageDraw.polygon`` with an outline) and Ultralytics' ``polygon2mask`` (``cv2.fillPoly``).

Tracing: ``cv2.findContours`` on the mask's crop (8-connected parts, their holes as 4-connected
background regions), so every part and every hole gets a ring; drawn back unsimplified the
rings give the mask exactly.

Simplification: Douglas-Peucker (``cv2.approxPolyDP``) with a tolerance of :data:`TOLERANCE`
pixels (every traced boundary pixel stays within that distance of the polygon). For a small
or thin mask that can change many of its pixels, so the simplified rings are kept only when,
drawn back, they agree with the mask to an IoU of at least :data:`MIN_IOU`; otherwise the
traced rings are written as they are.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

#: Douglas-Peucker tolerance in pixels: 0.5 px keeps every pixel centre of a straight staircase
#: edge on the same side and cuts the vertices of the model's masks about 4.5-fold.
TOLERANCE = 0.5
#: Simplified rings are used only when they draw back to at least this IoU with the mask.
MIN_IOU = 0.98


@dataclass(frozen=True)
class Part:
    """One 8-connected part of a mask.

    outer: int32 [K, 2] xy (pixel centres, image coordinates), along the part's own boundary pixels.
    holes: its holes, each int32 [K, 2] along the part's pixels that border the hole (the hole is
        what lies strictly inside): the rings an even-odd fill (``cv2.fillPoly`` of the outer ring
        and its holes together) needs.
    hole_pixels: the same holes, each along the hole's own boundary pixels: the rings to erase
        with a fill that covers edges (LabelMe's ``_background_`` shapes).
    """

    outer: np.ndarray
    holes: list[np.ndarray]
    hole_pixels: list[np.ndarray]


def _ring(contour: np.ndarray, offset: tuple[int, int]) -> np.ndarray:
    return (contour.reshape(-1, 2) + np.asarray(offset)).astype(np.int32)


def trace(crop: np.ndarray, *, offset: tuple[int, int] = (0, 0)) -> list[Part]:
    """The parts of a bool mask ``crop`` [h, w], largest first, with every vertex shifted by
    ``offset`` (x0, y0): where the crop lies in the image. Unsimplified."""
    crop = np.asarray(crop, dtype=bool)
    if crop.ndim != 2:
        raise ValueError(f"a mask crop is [h, w], got shape {crop.shape}")
    if not crop.any():
        return []
    padded = np.pad(crop, 1).astype(np.uint8)  # a part touching the crop's edge still has a closed ring
    shift = (offset[0] - 1, offset[1] - 1)
    contours, hierarchy = cv2.findContours(padded, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE)
    parents = hierarchy[0][:, 3]
    # The holes' own pixels: background not connected (4-connectivity, the dual of the parts'
    # 8-connectivity) to the padding; each traced as a shape, then given to the part around it.
    _, regions = cv2.connectedComponents((padded == 0).astype(np.uint8), connectivity=4)
    hole_mask = ((regions != regions[0, 0]) & (padded == 0)).astype(np.uint8)
    hole_rings = cv2.findContours(hole_mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)[0] if hole_mask.any() else ()
    outers = np.flatnonzero(parents < 0)
    areas = [ring_area(contours[i].reshape(-1, 2)) for i in outers]
    hole_pixels: dict[int, list[np.ndarray]] = {int(i): [] for i in outers}
    for hole in hole_rings:  # to the smallest part around it (a part may lie in another's hole)
        point = tuple(float(v) for v in hole[0, 0])
        around = [k for k, i in enumerate(outers) if cv2.pointPolygonTest(contours[i], point, False) > 0]
        if around:
            hole_pixels[int(outers[min(around, key=lambda k: areas[k])])].append(_ring(hole, shift))
    parts = [Part(outer=_ring(contours[i], shift),
                  holes=[_ring(contours[j], shift) for j in np.flatnonzero(parents == i)],
                  hole_pixels=hole_pixels[int(i)]) for i in outers]
    parts.sort(key=lambda p: -ring_area(p.outer))
    return parts


def ring_area(ring: np.ndarray) -> float:
    """The area a ring encloses (shoelace), in px^2; 0 for fewer than 3 vertices."""
    return abs(float(cv2.contourArea(np.asarray(ring, dtype=np.float32).reshape(-1, 1, 2)))) if len(ring) >= 3 else 0.0


def simplify_ring(ring: np.ndarray, tolerance: float) -> np.ndarray:
    """Douglas-Peucker with ``tolerance`` px; a ring of 4 vertices or fewer is kept as is."""
    if tolerance <= 0 or len(ring) <= 4:
        return ring
    simplified = cv2.approxPolyDP(ring.reshape(-1, 1, 2), tolerance, True).reshape(-1, 2)
    return simplified if len(simplified) >= 3 else ring


def simplify_part(part: Part, tolerance: float) -> Part:
    return Part(outer=simplify_ring(part.outer, tolerance),
                holes=[simplify_ring(h, tolerance) for h in part.holes],
                hole_pixels=[simplify_ring(h, tolerance) for h in part.hole_pixels])


def painting_order(parts: list[Part]) -> list[tuple[np.ndarray, bool]]:
    """``(ring, filled)`` to draw one after the other (``filled``: paint the ring's pixels, else
    erase them): parts and holes by decreasing area, so that a hole is erased after the part
    around it and a part inside a hole is painted after the hole."""
    rings = [(p.outer, True) for p in parts] + [(h, False) for p in parts for h in p.hole_pixels]
    return sorted(rings, key=lambda r: -ring_area(r[0]))


def paint(rings: list[tuple[np.ndarray, bool]], image_size: tuple[int, int], *,
          window: tuple[int, int, int, int] | None = None) -> np.ndarray:
    """Draw ``(ring, filled)`` in order (edges included, as LabelMe draws) -> bool [H, W], or
    only the ``window`` (y0, y1, x0, x1) of it."""
    y0, y1, x0, x1 = window if window is not None else (0, image_size[0], 0, image_size[1])
    canvas = np.zeros((y1 - y0, x1 - x0), np.uint8)
    for ring, filled in rings:
        points = np.asarray(ring, dtype=np.int32).reshape(-1, 2) - np.asarray([x0, y0], dtype=np.int32)
        cv2.fillPoly(canvas, [points], 1 if filled else 0)
    return canvas.astype(bool)


def fill_even_odd(polygons: list[np.ndarray], image_size: tuple[int, int], *,
                  window: tuple[int, int, int, int] | None = None) -> np.ndarray:
    """Each polygon filled with ``cv2.fillPoly`` (as Ultralytics' ``polygon2mask`` and CVAT
    readers do), their union -> bool [H, W] (or the ``window`` of it)."""
    y0, y1, x0, x1 = window if window is not None else (0, image_size[0], 0, image_size[1])
    out = np.zeros((y1 - y0, x1 - x0), bool)
    for polygon in polygons:
        canvas = np.zeros_like(out, dtype=np.uint8)
        cv2.fillPoly(canvas, [np.asarray(polygon, dtype=np.int32).reshape(-1, 2) - np.asarray([x0, y0], np.int32)], 1)
        out |= canvas.astype(bool)
    return out


def join_rings(rings: list[np.ndarray]) -> np.ndarray:
    """One polygon through all ``rings``: each next ring (the nearest to what is joined so far)
    is entered from the nearest vertex and left back there, along a zero-width bridge. Filled
    with the even-odd rule, holes stay holes; bridges between separate parts cover the pixels
    they cross (how Ultralytics stores a many-part object as one YOLO polygon)."""
    rings = [np.asarray(r, dtype=np.int32).reshape(-1, 2) for r in rings if len(r)]
    if not rings:
        return np.zeros((0, 2), np.int32)
    polygon, rest = rings[0], rings[1:]
    while rest:
        distances = [((polygon[:, None, :].astype(np.int64) - r[None, :, :]) ** 2).sum(-1) for r in rest]
        k = int(np.argmin([d.min() for d in distances]))
        i, j = np.unravel_index(int(np.argmin(distances[k])), distances[k].shape)
        ring = np.roll(rest.pop(k), -int(j), axis=0)
        polygon = np.concatenate([polygon[:i + 1], ring, ring[:1], polygon[i:]])
    return polygon


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = int(np.count_nonzero(a | b))
    return int(np.count_nonzero(a & b)) / union if union else 1.0


def mask_parts(crop: np.ndarray, *, offset: tuple[int, int] = (0, 0), tolerance: float = TOLERANCE,
               min_iou: float = MIN_IOU) -> list[Part]:
    """The parts of a mask crop, simplified with ``tolerance`` px when the simplified rings still
    draw back to ``min_iou`` of the mask (see the module docstring), else as traced."""
    parts = trace(crop, offset=offset)
    if not parts or tolerance <= 0:
        return parts
    simplified = [simplify_part(p, tolerance) for p in parts]
    x0, y0 = offset
    window = (y0, y0 + crop.shape[0], x0, x0 + crop.shape[1])
    drawn = paint(painting_order(simplified), (y0 + crop.shape[0], x0 + crop.shape[1]), window=window)
    return simplified if iou(drawn, np.asarray(crop, bool)) >= min_iou else parts


def bounding_window(rings: list[np.ndarray], image_size: tuple[int, int]) -> tuple[int, int, int, int]:
    """(y0, y1, x0, x1) of the pixels ``rings`` can cover, clipped to the image."""
    points = np.concatenate([np.asarray(r).reshape(-1, 2) for r in rings]) if rings else np.zeros((0, 2))
    if not len(points):
        return (0, 0, 0, 0)
    h, w = image_size
    x0, y0 = np.floor(points.min(0)).astype(int)
    x1, y1 = np.ceil(points.max(0)).astype(int) + 1
    return (min(max(int(y0), 0), h), min(max(int(y1), 0), h), min(max(int(x0), 0), w), min(max(int(x1), 0), w))


def at_least_three(ring: np.ndarray) -> np.ndarray:
    """A ring of a 1- or 2-pixel part with its last vertex repeated up to 3 vertices, which the
    tools ask of a polygon (drawn back, it covers the same pixels)."""
    ring = np.asarray(ring).reshape(-1, 2)
    return np.concatenate([ring, np.repeat(ring[-1:], 3 - len(ring), axis=0)]) if 0 < len(ring) < 3 else ring
