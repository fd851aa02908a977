"""One image's result -> its files: what ``segfpn predict`` writes and what the app offers for
download, the same names and the same contents from both.

For an image whose name has the stem ``S`` (:func:`file_stem`: letters, digits and ``._-``)::

    S.overlay.png      the panoptic segments, or the instances (masks, boxes, labels), over the image
    S.instances.json   COCO detection results: a list, one dict per detection, compressed RLE masks
    S.panoptic.png     COCO panoptic PNG (id = R + 256 G + 256² B)      } models with a semantic
    S.panoptic.json    COCO panoptic document: images, annotations,    } head only
                       categories

Coordinates are those of the image as given. The instances JSON is written last: its presence
marks the image as done (``segfpn predict`` resumes from there). Every file appears whole or not
at all (:mod:`segfpn.atomic_files`).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from segfpn.atomic_files import write_json, write_png
from segfpn.export import instances_to_coco_results, panoptic_to_coco, write_panoptic_png
from segfpn.structures import Result

Overlay = Literal["panoptic", "instances"]
#: What the overlay shows by default: the panoptic segments when the model has them.
DEFAULT_OVERLAY: Overlay = "panoptic"


@dataclass(frozen=True)
class ResultFiles:
    """The paths of one image's files; the panoptic ones are None for a model without them."""

    overlay: Path
    instances: Path
    panoptic_png: Path | None
    panoptic_json: Path | None

    def all(self) -> list[Path]:
        return [p for p in (self.overlay, self.instances, self.panoptic_png, self.panoptic_json) if p is not None]


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
    things = result.instances
    categories = [{"id": int(i), "name": n, "isthing": 1} for i, n in zip(things.category_ids, things.class_names)]
    if result.semantic is not None:
        categories += [{"id": int(i), "name": n, "isthing": 0}
                       for i, n in zip(result.semantic.category_ids, result.semantic.class_names) if i != 0]
    document = {"images": [{"id": int(image_id), "file_name": image_name, "height": int(h), "width": int(w)}],
                "annotations": [annotation], "categories": categories}
    return rgb, document


def write_result(result: Result, image: np.ndarray, out_dir: str | os.PathLike, *, image_name: str,
                 image_id: int = 1, overlay: Overlay = DEFAULT_OVERLAY,
                 overlay_image: np.ndarray | None = None) -> ResultFiles:
    """Write one image's files (see the module docstring) into ``out_dir``, which must exist.

    image: uint8 [H, W, 3], the image the result refers to. ``overlay_image``: a drawing to write
    as the overlay instead of :func:`draw_overlay`'s (the app's view with the user's settings).
    """
    files = result_files(out_dir, image_name, panoptic=result.panoptic is not None)
    if result.panoptic is not None:
        rgb, document = panoptic_document(result, image_id=image_id, image_name=str(image_name),
                                          png_name=files.panoptic_png.name)
        write_panoptic_png(files.panoptic_png, rgb)
        write_json(files.panoptic_json, document)
    write_png(files.overlay, overlay_image if overlay_image is not None else draw_overlay(image, result, overlay=overlay))
    write_json(files.instances, instances_to_coco_results(result.instances, image_id=image_id))
    return files
