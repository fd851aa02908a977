"""YOLO segmentation labels (Ultralytics): one line per instance,
``class x1 y1 x2 y2 ...`` with the vertices divided by the image's width and height.

YOLO has one polygon per instance, so an instance's parts and holes are joined into one ring
along zero-width bridges (:func:`~segfpn.formats.polygons.join_rings`, as Ultralytics' own COCO
converter joins a many-part object); drawn with ``cv2.fillPoly`` the holes stay holes, and the
bridges between separate parts cover the pixels they cross. ``class`` is the model's thing label
(index into ``instances.class_names``); :func:`data_yaml` gives the ``names`` of a data set YAML.

Ultralytics draws labels back with ``cv2.fillPoly`` after truncating the coordinates to whole
pixels; the vertices are written :data:`BIAS` px past the pixel centre with 7 decimals, so that
truncating and rounding readers land on the same pixel.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from segfpn.atomic_files import write_atomic
from segfpn.formats.polygons import TOLERANCE, at_least_three, bounding_window, fill_even_odd, join_rings, mask_parts
from segfpn.structures import InstanceMasks, Instances

#: Offset added to every coordinate, in pixels (see the module docstring).
BIAS = 0.005


def yolo_lines(instances: Instances, keep: np.ndarray, *, tolerance: float = TOLERANCE) -> list[str]:
    """One label line per detection of ``keep`` (indices into ``instances``, which need masks)."""
    if instances.masks is None:
        raise ValueError("this model predicts boxes only: YOLO segmentation labels need masks")
    h, w = instances.masks.image_size
    lines = []
    for i in np.asarray(keep).tolist():
        y0, _, x0, _ = (int(v) for v in instances.masks.regions[i])
        parts = mask_parts(instances.masks.crops[i], offset=(x0, y0), tolerance=tolerance)
        if not parts:
            continue  # an empty mask has no polygon
        polygon = at_least_three(join_rings([r for p in parts for r in (p.outer, *p.holes)]))
        xy = (polygon.astype(np.float64) + BIAS) / np.asarray([w, h], dtype=np.float64)
        lines.append(" ".join([str(int(instances.labels[i]))] + [f"{v:.7f}" for v in xy.ravel()]))
    return lines


def write_yolo(path: str | os.PathLike, instances: Instances, keep: np.ndarray, *,
               tolerance: float = TOLERANCE) -> Path:
    text = "".join(line + "\n" for line in yolo_lines(instances, keep, tolerance=tolerance))
    return write_atomic(path, lambda f: f.write(text.encode("ascii")))


def data_yaml(class_names: list[str]) -> str:
    """The ``names:`` block of an Ultralytics data set YAML for these labels."""
    return "names:\n" + "".join(f"  {i}: {_yaml_string(n)}\n" for i, n in enumerate(class_names))


def _yaml_string(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def read_yolo(source: str | os.PathLike | str, image_size: tuple[int, int]) -> tuple[list[int], InstanceMasks]:
    """YOLO segmentation labels (a file, or its text when it contains a newline or is empty)
    -> (class index per instance, their masks at ``image_size`` (H, W)), drawn as Ultralytics
    does: coordinates times the size, truncated, ``cv2.fillPoly``."""
    text = source if isinstance(source, str) and ("\n" in source or not source) else Path(source).read_text()
    h, w = image_size
    labels, crops, regions = [], [], []
    for number, line in enumerate(text.splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        values = np.asarray([float(v) for v in fields[1:]], dtype=np.float64)
        if len(values) < 6 or len(values) % 2:
            raise ValueError(f"line {number}: a polygon needs an even number of at least 6 coordinates, got {len(values)}")
        polygon = (values.reshape(-1, 2) * np.asarray([w, h])).astype(np.int32)
        window = bounding_window([polygon], image_size)
        labels.append(int(fields[0]))
        crops.append(fill_even_odd([polygon], image_size, window=window))
        regions.append(window)
    return labels, InstanceMasks(crops=crops, regions=np.asarray(regions, np.int64).reshape(-1, 4), image_size=image_size)
