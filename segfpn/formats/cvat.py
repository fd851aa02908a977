"""CVAT for images 1.1 XML: every instance as ``<polygon>`` elements, one per part; or, for a
box-only model (Faster R-CNN, RetinaNet), as one ``<box>``.

One part's holes are joined to it along zero-width bridges
(:func:`~segfpn.formats.polygons.join_rings`: CVAT polygons have no holes, and an even-odd or
non-zero fill keeps a bridged hole open); an instance of several parts has one polygon per
part, sharing a ``group_id`` (CVAT's grouping). Vertices are pixel centres
(:mod:`segfpn.formats.polygons`); readers that take vertices as pixel corners (pycocotools, which
datumaro uses) draw such a polygon about half a pixel thinner at its edges.

A box is ``<box xtl ytl xbr ybr>``: its corners in continuous pixel coordinates (as in the COCO
results), clipped to the image, with 2 decimals as CVAT writes them (read back within 0.005 px),
its label declared with type ``rectangle``. Every shape carries the score as an attribute
declared on its label. :func:`read_cvat` reads polygons back as masks, :func:`read_cvat_boxes`
boxes as boxes.
"""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np

from segfpn.atomic_files import write_atomic
from segfpn.formats import boxes_in_image, check_masks_fit
from segfpn.formats.polygons import TOLERANCE, at_least_three, bounding_window, fill_even_odd, join_rings, mask_parts
from segfpn.structures import InstanceMasks, Instances


def _points(ring: np.ndarray) -> str:
    return ";".join(f"{x:.2f},{y:.2f}" for x, y in at_least_three(ring).astype(float).tolist())


def _score(element: ET.Element, score: float) -> None:
    ET.SubElement(element, "attribute", name="score").text = f"{float(score):.4f}"


def _add_boxes(image: ET.Element, instances: Instances, keep: np.ndarray, image_size: tuple[int, int]) -> None:
    boxes = boxes_in_image(np.asarray(instances.boxes)[keep], image_size)
    for i, corners in zip(keep.tolist(), boxes.tolist()):
        attributes = {"label": instances.class_names[int(instances.labels[i])], "source": "auto", "occluded": "0",
                      **{k: f"{v:.2f}" for k, v in zip(("xtl", "ytl", "xbr", "ybr"), corners)}, "z_order": "0"}
        _score(ET.SubElement(image, "box", attributes), instances.scores[i])


def _add_polygons(image: ET.Element, instances: Instances, keep: np.ndarray, tolerance: float) -> None:
    for group_id, i in enumerate(keep.tolist(), start=1):
        y0, _, x0, _ = (int(v) for v in instances.masks.regions[i])
        parts = mask_parts(instances.masks.crops[i], offset=(x0, y0), tolerance=tolerance)
        for part in parts:
            attributes = {"label": instances.class_names[int(instances.labels[i])], "source": "auto",
                          "occluded": "0", "points": _points(join_rings([part.outer, *part.holes])),
                          "z_order": "0"}
            if len(parts) > 1:
                attributes["group_id"] = str(group_id)
            _score(ET.SubElement(image, "polygon", attributes), instances.scores[i])


def cvat_document(instances: Instances, keep: np.ndarray, *, image_name: str, image_size: tuple[int, int],
                  tolerance: float = TOLERANCE) -> ET.ElementTree:
    """The CVAT document of one image of ``image_size`` (H, W) with detections ``keep`` (indices
    into ``instances``): polygons when ``instances`` have masks, else boxes."""
    check_masks_fit(instances, image_size)
    h, w = image_size
    boxes_only = instances.masks is None
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
        ET.SubElement(label, "type").text = "rectangle" if boxes_only else "polygon"
        attribute = ET.SubElement(ET.SubElement(label, "attributes"), "attribute")
        for key, value in (("name", "score"), ("mutable", "False"), ("input_type", "number"),
                           ("default_value", "0"), ("values", "0;1;0.001")):
            ET.SubElement(attribute, key).text = value
    image = ET.SubElement(root, "image", id="0", name=image_name, width=str(w), height=str(h))
    keep = np.asarray(keep, dtype=np.int64)
    if boxes_only:
        _add_boxes(image, instances, keep, image_size)
    else:
        _add_polygons(image, instances, keep, tolerance)
    ET.indent(root)
    return ET.ElementTree(root)


def write_cvat(path: str | os.PathLike, instances: Instances, keep: np.ndarray, *, image_name: str,
               image_size: tuple[int, int], tolerance: float = TOLERANCE) -> Path:
    """:func:`cvat_document` written to ``path`` (atomically)."""
    document = cvat_document(instances, keep, image_name=image_name, image_size=image_size, tolerance=tolerance)
    return write_atomic(path, lambda f: document.write(f, encoding="utf-8", xml_declaration=True))


def _image_element(source: str | os.PathLike) -> ET.Element:
    image = ET.parse(source).getroot().find("image")
    if image is None:
        raise ValueError(f"{source} has no <image> element")
    return image


def read_cvat(source: str | os.PathLike) -> tuple[list[str], InstanceMasks]:
    """A CVAT for images file of one image -> (class name per instance, their masks): polygons
    with the same ``group_id`` are one instance, each filled with ``cv2.fillPoly``. Boxes:
    :func:`read_cvat_boxes`."""
    image = _image_element(source)
    if image.find("box") is not None:
        raise ValueError(f"{source} holds <box> elements: read boxes with read_cvat_boxes")
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


def read_cvat_boxes(source: str | os.PathLike) -> tuple[list[str], np.ndarray]:
    """A CVAT for images file of one image -> (class name per ``<box>``, float64 [N, 4] xyxy
    boxes), in file order."""
    image = _image_element(source)
    if image.find("polygon") is not None:
        raise ValueError(f"{source} holds <polygon> elements: read polygons with read_cvat")
    names, boxes = [], []
    for box in image.iter("box"):
        names.append(box.get("label"))
        boxes.append([float(box.get(k)) for k in ("xtl", "ytl", "xbr", "ybr")])
    return names, np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
