"""LabelMe JSON: every instance as polygons, one per part, its holes kept.

A LabelMe file lists shapes; shapes with the same ``group_id`` are one instance (LabelMe's
convention). An instance's parts are ``polygon`` shapes labelled with its class; each hole is
a ``polygon`` labelled ``_background_`` with the same ``group_id``, listed after the part around
it, the way LabelMe's author advises to draw holes (labelme issue #245): its own
``labelme2voc``/``labelme2coco`` draw shapes in file order, so a ``_background_`` shape erases
what it covers. ``description`` holds the score. Coordinates as in :mod:`segfpn.formats.polygons`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from segfpn.atomic_files import write_json
from segfpn.formats.polygons import TOLERANCE, at_least_three, bounding_window, mask_parts, paint, painting_order
from segfpn.structures import InstanceMasks, Instances

#: The label of a hole (LabelMe's background class).
HOLE_LABEL = "_background_"
#: The LabelMe version whose file layout this follows (5.x: ``description``, ``mask``).
LABELME_VERSION = "5.5.0"


def _shape(label: str, ring: np.ndarray, group_id: int, description: str) -> dict:
    return {"label": label, "points": at_least_three(ring).astype(float).tolist(), "group_id": group_id,
            "description": description, "shape_type": "polygon", "flags": {}, "mask": None}


def labelme_document(instances: Instances, keep: np.ndarray, *, image_name: str,
                     tolerance: float = TOLERANCE) -> dict:
    """The LabelMe document of detections ``keep`` (indices into ``instances``, which must have
    masks), group ids 1, 2, ... in that order."""
    if instances.masks is None:
        raise ValueError("this model predicts boxes only: LabelMe polygons need masks")
    h, w = instances.masks.image_size
    shapes = []
    for group_id, i in enumerate(np.asarray(keep).tolist(), start=1):
        y0, _, x0, _ = (int(v) for v in instances.masks.regions[i])
        parts = mask_parts(instances.masks.crops[i], offset=(x0, y0), tolerance=tolerance)
        name = instances.class_names[int(instances.labels[i])]
        description = f"score {float(instances.scores[i]):.3f}"
        shapes += [_shape(name if filled else HOLE_LABEL, ring, group_id, description)
                   for ring, filled in painting_order(parts)]
    return {"version": LABELME_VERSION, "flags": {}, "shapes": shapes, "imagePath": image_name,
            "imageData": None, "imageHeight": int(h), "imageWidth": int(w)}


def write_labelme(path: str | os.PathLike, instances: Instances, keep: np.ndarray, *, image_name: str,
                  tolerance: float = TOLERANCE) -> Path:
    """:func:`labelme_document` written to ``path`` (atomically, indented like LabelMe's own)."""
    return write_json(path, labelme_document(instances, keep, image_name=image_name, tolerance=tolerance), indent=2)


def read_labelme(source: str | os.PathLike | dict) -> tuple[list[str], InstanceMasks]:
    """A LabelMe file (or its parsed document) -> (class name per instance, their masks).

    Shapes are grouped by ``group_id`` (a shape without one is an instance of its own) and drawn
    in file order, ``_background_`` shapes erasing; polygons only."""
    doc = source if isinstance(source, dict) else json.loads(Path(source).read_text())
    size = (int(doc["imageHeight"]), int(doc["imageWidth"]))
    groups: dict[object, list[dict]] = {}
    for k, shape in enumerate(doc["shapes"]):
        if shape.get("shape_type", "polygon") != "polygon":
            raise ValueError(f"shape {k} is a {shape['shape_type']!r}; this reader takes polygons")
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
