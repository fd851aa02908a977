"""YOLO labels (Ultralytics): one line per instance, coordinates divided by the image's width
and height.

Models with masks get segmentation labels, ``class x1 y1 x2 y2 ...``: YOLO has one polygon per
instance, so an instance's parts and holes are joined into one ring along zero-width bridges
(:func:`~segfpn.formats.polygons.join_rings`, as Ultralytics' own COCO converter joins a many-part
object); drawn with ``cv2.fillPoly`` the holes stay holes, and the bridges between separate parts
cover the pixels they cross. Ultralytics draws labels back with ``cv2.fillPoly`` after truncating
the coordinates to whole pixels; the vertices are written :data:`BIAS` px past the pixel centre
with 7 decimals, so that truncating and rounding readers land on the same pixel.

Box-only models (Faster R-CNN, RetinaNet) get detection labels, ``class cx cy w h``: the box's
centre and size (continuous pixel coordinates, clipped to the image), 7 decimals, so a box read
back is within 1e-7 of the image's width or height of the box written (under 0.001 px below
10000 px).

``class`` is the model's thing label (index into ``instances.class_names``); :func:`data_yaml`
gives the ``names`` of a data set YAML. :func:`read_yolo` reads segmentation labels back as
masks, :func:`read_yolo_boxes` detection labels as boxes.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from segfpn.atomic_files import write_atomic
from segfpn.formats import boxes_in_image, check_masks_fit
from segfpn.formats.polygons import TOLERANCE, at_least_three, bounding_window, fill_even_odd, join_rings, mask_parts
from segfpn.structures import InstanceMasks, Instances

#: Offset added to every coordinate, in pixels (see the module docstring).
BIAS = 0.005


def yolo_lines(instances: Instances, keep: np.ndarray, *, image_size: tuple[int, int],
               tolerance: float = TOLERANCE) -> list[str]:
    """One label line per detection of ``keep`` (indices into ``instances``) of an image of
    ``image_size`` (H, W): a polygon when ``instances`` have masks, else the box."""
    check_masks_fit(instances, image_size)
    h, w = image_size
    keep = np.asarray(keep, dtype=np.int64)
    if instances.masks is None:
        boxes = boxes_in_image(np.asarray(instances.boxes)[keep], image_size)
        centres, sizes = (boxes[:, :2] + boxes[:, 2:]) / 2, boxes[:, 2:] - boxes[:, :2]
        normalised = np.concatenate([centres, sizes], axis=1) / np.asarray([w, h, w, h], dtype=np.float64)
        return [" ".join([str(int(instances.labels[i]))] + [f"{v:.7f}" for v in row])
                for i, row in zip(keep.tolist(), normalised.tolist())]
    lines = []
    for i in keep.tolist():
        y0, _, x0, _ = (int(v) for v in instances.masks.regions[i])
        parts = mask_parts(instances.masks.crops[i], offset=(x0, y0), tolerance=tolerance)
        if not parts:
            continue  # an empty mask has no polygon
        polygon = at_least_three(join_rings([r for p in parts for r in (p.outer, *p.holes)]))
        xy = (polygon.astype(np.float64) + BIAS) / np.asarray([w, h], dtype=np.float64)
        lines.append(" ".join([str(int(instances.labels[i]))] + [f"{v:.7f}" for v in xy.ravel()]))
    return lines


def write_yolo(path: str | os.PathLike, instances: Instances, keep: np.ndarray, *, image_size: tuple[int, int],
               tolerance: float = TOLERANCE) -> Path:
    """:func:`yolo_lines` written to ``path`` (atomically)."""
    text = "".join(line + "\n" for line in yolo_lines(instances, keep, image_size=image_size, tolerance=tolerance))
    return write_atomic(path, lambda f: f.write(text.encode("ascii")))


def data_yaml(class_names: list[str]) -> str:
    """The ``names:`` block of an Ultralytics data set YAML for these labels."""
    return "names:\n" + "".join(f"  {i}: {_yaml_string(n)}\n" for i, n in enumerate(class_names))


def _yaml_string(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _label_lines(source: str | os.PathLike) -> list[tuple[int, int, np.ndarray]]:
    """(line number, class, float64 coordinates) of every non-empty line of a label file (or of
    its text, when ``source`` contains a newline or is empty)."""
    text = source if isinstance(source, str) and ("\n" in source or not source) else Path(source).read_text()
    lines = []
    for number, line in enumerate(text.splitlines(), start=1):
        fields = line.split()
        if fields:
            lines.append((number, int(fields[0]), np.asarray([float(v) for v in fields[1:]], dtype=np.float64)))
    return lines


def read_yolo(source: str | os.PathLike, image_size: tuple[int, int]) -> tuple[list[int], InstanceMasks]:
    """YOLO segmentation labels (a file, or its text when it contains a newline or is empty)
    -> (class index per instance, their masks at ``image_size`` (H, W)), drawn as Ultralytics
    does: coordinates times the size, truncated, ``cv2.fillPoly``. Detection labels (boxes):
    :func:`read_yolo_boxes`."""
    h, w = image_size
    labels, crops, regions = [], [], []
    for number, label, values in _label_lines(source):
        if len(values) == 4:
            raise ValueError(f"line {number} is a box (class cx cy w h), not a polygon: read detection labels "
                             "with read_yolo_boxes")
        if len(values) < 6 or len(values) % 2:
            raise ValueError(f"line {number}: a polygon needs an even number of at least 6 coordinates, "
                             f"got {len(values)}")
        polygon = (values.reshape(-1, 2) * np.asarray([w, h])).astype(np.int32)
        window = bounding_window([polygon], image_size)
        labels.append(label)
        crops.append(fill_even_odd([polygon], image_size, window=window))
        regions.append(window)
    regions = np.asarray(regions, np.int64).reshape(-1, 4)
    return labels, InstanceMasks(crops=crops, regions=regions, image_size=image_size)


def read_yolo_boxes(source: str | os.PathLike, image_size: tuple[int, int]) -> tuple[list[int], np.ndarray]:
    """YOLO detection labels (``class cx cy w h``, normalised; a file or its text as for
    :func:`read_yolo`) -> (class index per box, float64 [N, 4] xyxy boxes in pixels of an image
    of ``image_size`` (H, W))."""
    h, w = image_size
    labels, boxes = [], []
    for number, label, values in _label_lines(source):
        if len(values) != 4:
            raise ValueError(f"line {number}: a detection label is class cx cy w h, got {len(values)} coordinates"
                             + ("; segmentation labels (polygons) are read with read_yolo" if len(values) > 4 else ""))
        (cx, cy, bw, bh) = values * np.asarray([w, h, w, h], dtype=np.float64)
        labels.append(label)
        boxes.append([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2])
    return labels, np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
