"""CVAT for images 1.1 XML: every instance as ``<polygon>`` elements, one per part.

One part's holes are joined to it along zero-width bridges
(:func:`~segfpn.formats.polygons.join_rings`: CVAT polygons have no holes, and an even-odd or
non-zero fill keeps a bridged hole open); an instance of several parts has one polygon per
part, sharing a ``group_id`` (CVAT's grouping). Each polygon carries the score as an attribute
declared on its label. Vertices are pixel centres (:mod:`segfpn.formats.polygons`); readers that
take vertices as pixel corners (pycocotools, which datumaro uses) draw such a polygon about
half a pixel thinner at its edges.
"""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np

from segfpn.atomic_files import write_atomic
from segfpn.formats.polygons import TOLERANCE, at_least_three, bounding_window, fill_even_odd, join_rings, mask_parts
from segfpn.structures import InstanceMasks, Instances


def _points(ring: np.ndarray) -> str:
    return ";".join(f"{x:.2f},{y:.2f}" for x, y in at_least_three(ring).astype(float).tolist())


def cvat_document(instances: Instances, keep: np.ndarray, *, image_name: str,
                  tolerance: float = TOLERANCE) -> ET.ElementTree:
    """The CVAT document of one image with detections ``keep`` (indices into ``instances``)."""
    if instances.masks is None:
        raise ValueError("this model predicts boxes only: CVAT polygons need masks")
    h, w = instances.masks.image_size
    root = ET.Element("annotations")
    ET.SubElement(root, "version").text = "1.1"
    task = ET.SubElement(ET.SubElement(root, "meta"), "task")
    ET.SubElement(task, "name").text = "segfpn"
    ET.SubElement(task, "size").text = "1"
    ET.SubElement(task, "mode").text = "annotation"
    labels = ET.SubElement(task, "labels")
    for name in instances.class_names:
        label = ET.SubElement(labels, "label")
        ET.SubElement(label, "name").text = name
        ET.SubElement(label, "type").text = "polygon"
        attribute = ET.SubElement(ET.SubElement(label, "attributes"), "attribute")
        for key, value in (("name", "score"), ("mutable", "False"), ("input_type", "number"),
                           ("default_value", "0"), ("values", "0;1;0.001")):
            ET.SubElement(attribute, key).text = value
    image = ET.SubElement(root, "image", id="0", name=image_name, width=str(w), height=str(h))
    for group_id, i in enumerate(np.asarray(keep).tolist(), start=1):
        y0, _, x0, _ = (int(v) for v in instances.masks.regions[i])
        parts = mask_parts(instances.masks.crops[i], offset=(x0, y0), tolerance=tolerance)
        for part in parts:
            attributes = {"label": instances.class_names[int(instances.labels[i])], "source": "auto",
                          "occluded": "0", "points": _points(join_rings([part.outer, *part.holes])),
                          "z_order": "0"}
            if len(parts) > 1:
                attributes["group_id"] = str(group_id)
            polygon = ET.SubElement(image, "polygon", attributes)
            ET.SubElement(polygon, "attribute", name="score").text = f"{float(instances.scores[i]):.4f}"
    ET.indent(root)
    return ET.ElementTree(root)


def write_cvat(path: str | os.PathLike, instances: Instances, keep: np.ndarray, *, image_name: str,
               tolerance: float = TOLERANCE) -> Path:
    document = cvat_document(instances, keep, image_name=image_name, tolerance=tolerance)
    return write_atomic(path, lambda f: document.write(f, encoding="utf-8", xml_declaration=True))


def read_cvat(source: str | os.PathLike) -> tuple[list[str], InstanceMasks]:
    """A CVAT for images file of one image -> (class name per instance, their masks): polygons
    with the same ``group_id`` are one instance, each filled with ``cv2.fillPoly``."""
    image = ET.parse(source).getroot().find("image")
    if image is None:
        raise ValueError(f"{source} has no <image> element")
    size = (int(image.get("height")), int(image.get("width")))
    groups: dict[object, list[ET.Element]] = {}
    for k, polygon in enumerate(image.iter("polygon")):
        groups.setdefault(polygon.get("group_id") or ("alone", k), []).append(polygon)
    names, crops, regions = [], [], []
    for polygons in groups.values():
        rings = [np.round(np.asarray([[float(v) for v in point.split(",")] for point in p.get("points").split(";")]))
                 .astype(np.int32) for p in polygons]
        window = bounding_window(rings, size)
        names.append(polygons[0].get("label"))
        crops.append(fill_even_odd(rings, size, window=window))
        regions.append(window)
    return names, InstanceMasks(crops=crops, regions=np.asarray(regions, np.int64).reshape(-1, 4), image_size=size)
