"""LabelMe JSON: every instance as polygons, one per part, its holes kept; or, for a box-only
model (Faster R-CNN, RetinaNet), as a ``rectangle`` shape.

A LabelMe file lists shapes; shapes with the same ``group_id`` are one instance (LabelMe's
convention). An instance's parts are ``polygon`` shapes labelled with its class; each hole is
a ``polygon`` labelled ``_background_`` with the same ``group_id``, listed after the part around
it, the way LabelMe's author advises to draw holes (labelme issue #245): its own
``labelme2voc``/``labelme2coco`` draw shapes in file order, so a ``_background_`` shape erases
what it covers. Coordinates as in :mod:`segfpn.formats.polygons`.

A box is one ``rectangle`` shape, ``points`` ``[[x1, y1], [x2, y2]]``: its corners in continuous
pixel coordinates (as in the COCO results), clipped to the image. ``description`` holds the score.
:func:`read_labelme` reads polygons back as masks, :func:`read_labelme_boxes` rectangles as boxes.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from segfpn.atomic_files import write_json
from segfpn.formats import boxes_in_image, check_masks_fit
from segfpn.formats.polygons import TOLERANCE, at_least_three, bounding_window, mask_parts, paint, painting_order
from segfpn.structures import InstanceMasks, Instances

#: The label of a hole (LabelMe's background class).
HOLE_LABEL = "_background_"
#: The LabelMe version whose file layout this follows (5.x: ``description``, ``mask``).
LABELME_VERSION = "5.5.0"


def _shape(label: str, points: list, group_id: int, description: str, shape_type: str = "polygon") -> dict:
    return {"label": label, "points": points, "group_id": group_id, "description": description,
            "shape_type": shape_type, "flags": {}, "mask": None}


def labelme_document(instances: Instances, keep: np.ndarray, *, image_name: str, image_size: tuple[int, int],
                     tolerance: float = TOLERANCE) -> dict:
    """The LabelMe document of detections ``keep`` (indices into ``instances``) of an image of
    ``image_size`` (H, W), group ids 1, 2, ... in that order: polygons when ``instances`` have
    masks, else rectangles."""
    check_masks_fit(instances, image_size)
    h, w = image_size
    keep = np.asarray(keep, dtype=np.int64)
    shapes = []
    if instances.masks is None:
        boxes = boxes_in_image(np.asarray(instances.boxes)[keep], image_size)
        for group_id, (i, (x1, y1, x2, y2)) in enumerate(zip(keep.tolist(), boxes.tolist()), start=1):
            shapes.append(_shape(instances.class_names[int(instances.labels[i])], [[x1, y1], [x2, y2]], group_id,
                                 f"score {float(instances.scores[i]):.3f}", shape_type="rectangle"))
    else:
        for group_id, i in enumerate(keep.tolist(), start=1):
            y0, _, x0, _ = (int(v) for v in instances.masks.regions[i])
            parts = mask_parts(instances.masks.crops[i], offset=(x0, y0), tolerance=tolerance)
            name = instances.class_names[int(instances.labels[i])]
            description = f"score {float(instances.scores[i]):.3f}"
            shapes += [_shape(name if filled else HOLE_LABEL, at_least_three(ring).astype(float).tolist(), group_id,
                              description) for ring, filled in painting_order(parts)]
    return {"version": LABELME_VERSION, "flags": {}, "shapes": shapes, "imagePath": image_name,
            "imageData": None, "imageHeight": int(h), "imageWidth": int(w)}


def write_labelme(path: str | os.PathLike, instances: Instances, keep: np.ndarray, *, image_name: str,
                  image_size: tuple[int, int], tolerance: float = TOLERANCE) -> Path:
    """:func:`labelme_document` written to ``path`` (atomically, indented like LabelMe's own)."""
    document = labelme_document(instances, keep, image_name=image_name, image_size=image_size, tolerance=tolerance)
    return write_json(path, document, indent=2)


def _document(source: str | os.PathLike | dict) -> dict:
    return source if isinstance(source, dict) else json.loads(Path(source).read_text())


def read_labelme(source: str | os.PathLike | dict) -> tuple[list[str], InstanceMasks]:
    """A LabelMe file (or its parsed document) -> (class name per instance, their masks).

    Shapes are grouped by ``group_id`` (a shape without one is an instance of its own) and drawn
    in file order, ``_background_`` shapes erasing; polygons only (rectangles:
    :func:`read_labelme_boxes`)."""
    doc = _document(source)
    size = (int(doc["imageHeight"]), int(doc["imageWidth"]))
    groups: dict[object, list[dict]] = {}
    for k, shape in enumerate(doc["shapes"]):
        kind = shape.get("shape_type", "polygon")
        if kind != "polygon":
            hint = "; read rectangles with read_labelme_boxes" if kind == "rectangle" else ""
            raise ValueError(f"shape {k} is a {kind!r}; this reader takes polygons{hint}")
        key = shape["group_id"] if shape.get("group_id") is not None else ("alone", k)
        groups.setdefault(key, []).append(shape)
    names, crops, regions = [], [], []
    for shapes in groups.values():
        rings = [(np.round(np.asarray(s["points"], dtype=np.float64)).astype(np.int32), s["label"] != HOLE_LABEL)
                 for s in shapes]
        window = bounding_window([r for r, _ in rings], size)
        crops.append(paint(rings, size, window=window))
        regions.append(window)
        names.append(next(s["label"] for s in shapes if s["label"] != HOLE_LABEL))
    return names, InstanceMasks(crops=crops, regions=np.asarray(regions, np.int64).reshape(-1, 4), image_size=size)


def read_labelme_boxes(source: str | os.PathLike | dict) -> tuple[list[str], np.ndarray]:
    """A LabelMe file of ``rectangle`` shapes (or its parsed document) -> (class name per box,
    float64 [N, 4] xyxy boxes). A rectangle may be drawn from any corner, as LabelMe allows."""
    names, boxes = [], []
    for k, shape in enumerate(_document(source)["shapes"]):
        if shape.get("shape_type") != "rectangle":
            raise ValueError(f"shape {k} is a {shape.get('shape_type', 'polygon')!r}; this reader takes rectangles "
                             "(polygons: read_labelme)")
        points = np.asarray(shape["points"], dtype=np.float64)
        if points.shape != (2, 2):
            raise ValueError(f"shape {k}: a rectangle has 2 points [[x1, y1], [x2, y2]], got {points.tolist()}")
        names.append(shape["label"])
        boxes.append([*points.min(axis=0), *points.max(axis=0)])
    return names, np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
