"""One image's result -> its files: what ``segfpn predict`` writes and what the app offers for
download, the same names and the same contents from both.

For an image whose name has the stem ``S`` (:func:`file_stem`: letters, digits and ``._-``)::

    S.overlay.png      the panoptic segments, or the instances (masks, boxes, labels; filled boxes
                       for a box-only model), over the image
    S.instances.json   COCO detection results: a list, one dict per detection, compressed RLE masks
                       (no ``segmentation`` for a box-only model: Faster R-CNN, RetinaNet)
    S.panoptic.png     COCO panoptic PNG (id = R + 256 G + 256² B)      } models with a semantic
    S.panoptic.json    COCO panoptic document: images, annotations,    } head only
                       categories

and, when asked for (``formats=``, see :mod:`segfpn.formats`), with the detections at or above
``score_threshold`` of the classes in ``classes``::

    S.labelme.json  S.yolo.txt (+ yolo_data.yaml, the class names)  S.cvat.xml
    S.cutouts.zip  S.detections.csv  S.detections.parquet

(polygons for a model with masks; for a box-only model LabelMe rectangles, YOLO detection labels,
CVAT boxes and opaque box cut-outs: :mod:`segfpn.formats`)

Coordinates are those of the image as given. The instances JSON is written last: its presence
marks the image as done (``segfpn predict`` resumes from there). Every file appears whole or not
at all (:mod:`segfpn.atomic_files`).
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from segfpn.atomic_files import write_atomic, write_json, write_png
from segfpn.export import instances_to_coco_results, panoptic_to_coco, write_panoptic_png
from segfpn.formats import check_classes, check_formats, select_instances, select_segments
from segfpn.formats.polygons import TOLERANCE
from segfpn.structures import Result

Overlay = Literal["panoptic", "instances"]
#: What the overlay shows by default: the panoptic segments when the model has them.
DEFAULT_OVERLAY: Overlay = "panoptic"


@dataclass(frozen=True)
class ResultFiles:
    """The paths of one image's files; the panoptic ones are None for a model without them.
    ``exports``: the files of the extra formats written, by format name (``"yolo_names"``: the
    YOLO class names file shared by a folder's images)."""

    overlay: Path
    instances: Path
    panoptic_png: Path | None
    panoptic_json: Path | None
    exports: dict[str, Path] = field(default_factory=dict)

    def all(self) -> list[Path]:
        return [p for p in (self.overlay, self.instances, self.panoptic_png, self.panoptic_json) if p is not None] + \
            list(self.exports.values())


def file_stem(name: str | os.PathLike) -> str:
    """A safe file-name stem from an image's name: letters, digits and "._-" only, at most 60."""
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(str(name)).stem).strip("._-")[:60]
    return stem or "image"


def result_files(out_dir: str | os.PathLike, image_name: str | os.PathLike, *, panoptic: bool) -> ResultFiles:
    """Where the files of the image called ``image_name`` go in ``out_dir``."""
    base = Path(out_dir) / file_stem(image_name)
    return ResultFiles(overlay=base.with_name(base.name + ".overlay.png"),
                       instances=base.with_name(base.name + ".instances.json"),
                       panoptic_png=base.with_name(base.name + ".panoptic.png") if panoptic else None,
                       panoptic_json=base.with_name(base.name + ".panoptic.json") if panoptic else None)


def draw_overlay(image: np.ndarray, result: Result, *, overlay: Overlay = DEFAULT_OVERLAY) -> np.ndarray:
    """uint8 [H, W, 3]: the panoptic segments (``overlay="panoptic"``, when the result has them)
    or the instances with a score of at least 0.5 (the app's Instances view as it opens)."""
    from segfpn.viz import draw_instances, draw_panoptic

    if overlay == "panoptic" and result.panoptic is not None:
        return draw_panoptic(image, result.panoptic)
    if overlay not in ("panoptic", "instances"):
        raise ValueError(f"overlay must be 'panoptic' or 'instances', got {overlay!r}")
    return draw_instances(image, result.instances)


def panoptic_document(result: Result, *, image_id: int, image_name: str, png_name: str) -> tuple[np.ndarray, dict]:
    """(panoptic PNG uint8 [H, W, 3], COCO panoptic document) of ``result``: ``images`` (one),
    ``annotations`` (one, with segments_info) and ``categories`` (the model's things and stuff,
    with COCO ids; the merged "things" class of the semantic head, id 0, is not one)."""
    rgb, annotation = panoptic_to_coco(result.panoptic, image_id=image_id, file_name=png_name)
    h, w = result.image_size
    document = {"images": [{"id": int(image_id), "file_name": image_name, "height": int(h), "width": int(w)}],
                "annotations": [annotation], "categories": result_categories(result)}
    return rgb, document


def result_categories(result: Result) -> list[dict]:
    """COCO categories of the model behind ``result``: its things, then its stuff (without the
    merged "things" class of the semantic head, id 0): ``{"id", "name", "isthing"}``."""
    things = result.instances
    categories = [{"id": int(i), "name": n, "isthing": 1} for i, n in zip(things.category_ids, things.class_names)]
    if result.semantic is not None:
        categories += [{"id": int(i), "name": n, "isthing": 0}
                       for i, n in zip(result.semantic.category_ids, result.semantic.class_names) if i != 0]
    return categories


#: File name suffix of each export format (after the image's stem).
EXPORT_SUFFIXES = {"labelme": ".labelme.json", "yolo": ".yolo.txt", "cvat": ".cvat.xml",
                   "cutouts": ".cutouts.zip", "csv": ".detections.csv", "parquet": ".detections.parquet"}
#: The class names of the YOLO labels, one file per output folder.
YOLO_NAMES = "yolo_data.yaml"


def export_path(out_dir: str | os.PathLike, image_name: str | os.PathLike, format: str) -> Path:
    """Where format ``format``'s file of the image called ``image_name`` goes in ``out_dir``."""
    return Path(out_dir) / (file_stem(image_name) + EXPORT_SUFFIXES[format])


def write_exports(result: Result, image: np.ndarray, out_dir: str | os.PathLike, *, image_name: str,
                  formats: Iterable[str], score_threshold: float = 0.0, classes: Iterable[str] | None = None,
                  tolerance: float = TOLERANCE, frame: int | None = None) -> dict[str, Path]:
    """Write the files of ``formats`` (:data:`segfpn.formats.EXPORT_FORMATS`; "coco" is ignored:
    :func:`write_result` always writes it) for the detections with ``score >= score_threshold``
    of the classes in ``classes`` (None: every class; ValueError for a name the model lacks).
    ``tolerance``: polygon simplification in px (:mod:`segfpn.formats.polygons`). ``frame``:
    the video frame index for the table. Returns {format: path}.

    image: uint8 [H, W, 3], the image the result refers to; its size is the one the files give
    (a box-only model's result has no masks to tell it). A model with masks gets polygons, a
    box-only model boxes (see :mod:`segfpn.formats`)."""
    from segfpn.formats import cutouts, cvat, labelme, table, yolo

    formats = check_formats(formats)
    wanted = check_classes(result, classes)
    image_size = tuple(int(v) for v in np.asarray(image).shape[:2])
    if image_size != tuple(int(v) for v in result.image_size):
        raise ValueError(f"the image is {image_size[1]}x{image_size[0]} but the result is of a "
                         f"{result.image_size[1]}x{result.image_size[0]} image")
    keep = select_instances(result.instances, score_threshold=score_threshold, classes=wanted)
    paths = {f: export_path(out_dir, image_name, f) for f in formats}
    name = str(Path(str(image_name)).name)
    shapes = {"image_size": image_size, "tolerance": tolerance}
    if "labelme" in formats:
        labelme.write_labelme(paths["labelme"], result.instances, keep, image_name=name, **shapes)
    if "yolo" in formats:
        yolo.write_yolo(paths["yolo"], result.instances, keep, **shapes)
        names = yolo.data_yaml(result.instances.class_names).encode("utf-8")
        paths["yolo_names"] = write_atomic(Path(out_dir) / YOLO_NAMES, lambda f: f.write(names))
    if "cvat" in formats:
        cvat.write_cvat(paths["cvat"], result.instances, keep, image_name=name, **shapes)
    if "cutouts" in formats:
        cutouts.write_cutouts(paths["cutouts"], image, result.instances, keep, panoptic=result.panoptic,
                              segments=select_segments(result, score_threshold=score_threshold, classes=wanted))
    if "csv" in formats or "parquet" in formats:
        rows = table.detection_rows(result.instances, keep, image_name=name, frame=frame)
        if "csv" in formats:
            table.write_csv(paths["csv"], rows)
        if "parquet" in formats:
            table.write_parquet(paths["parquet"], rows)
    return paths


def write_result(result: Result, image: np.ndarray, out_dir: str | os.PathLike, *, image_name: str,
                 image_id: int = 1, overlay: Overlay = DEFAULT_OVERLAY,
                 overlay_image: np.ndarray | None = None, formats: Iterable[str] = ("coco",),
                 score_threshold: float = 0.0, classes: Iterable[str] | None = None,
                 tolerance: float = TOLERANCE) -> ResultFiles:
    """Write one image's files (see the module docstring) into ``out_dir``, which must exist.

    image: uint8 [H, W, 3], the image the result refers to. ``overlay_image``: a drawing to write
    as the overlay instead of :func:`draw_overlay`'s (the app's view with the user's settings).
    ``formats``, ``score_threshold``, ``classes``, ``tolerance``: the extra files
    (:func:`write_exports`); the COCO files always hold every detection.
    """
    files = result_files(out_dir, image_name, panoptic=result.panoptic is not None)
    exports = write_exports(result, image, out_dir, image_name=image_name, formats=formats,
                            score_threshold=score_threshold, classes=classes, tolerance=tolerance)
    files = dataclasses.replace(files, exports=exports)
    if result.panoptic is not None:
        rgb, document = panoptic_document(result, image_id=image_id, image_name=str(image_name),
                                          png_name=files.panoptic_png.name)
        write_panoptic_png(files.panoptic_png, rgb)
        write_json(files.panoptic_json, document)
    if overlay_image is None:
        overlay_image = draw_overlay(image, result, overlay=overlay)
    write_png(files.overlay, overlay_image)
    write_json(files.instances, instances_to_coco_results(result.instances, image_id=image_id))
    return files
