"""Cut-outs: every instance, and every panoptic segment, as an RGBA PNG cropped to its box
(alpha 255 on the mask, 0 elsewhere), in one ZIP::

    instances/001_person_0.93.png     detections in score order: number, class, score
    segments/001_sky.png              panoptic segments (models with a semantic head): id, class

The crop of an instance is its box's whole pixels (corners rounded) joined with its mask's
pixels; of a segment, the box of its pixels. Masks are used as crops: no full-image mask is made.
A box-only model (Faster R-CNN, RetinaNet) has no masks: each cut-out is its box's pixels (corners
rounded, clipped to the image, at least one pixel), fully opaque, and there are no segments.
"""

from __future__ import annotations

import io
import os
import re
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image

from segfpn.atomic_files import write_atomic
from segfpn.export import segment_bboxes_and_areas
from segfpn.formats import boxes_in_image
from segfpn.structures import Instances, PanopticSegmentation, Segment


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("._-") or "class"


def _png(rgba: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(rgba, mode="RGBA").save(buffer, format="PNG", compress_level=3)
    return buffer.getvalue()


def instance_cutout(image: np.ndarray, instances: Instances, index: int) -> tuple[np.ndarray, tuple[int, int]]:
    """(RGBA uint8 [h, w, 4], (x0, y0) of its corner in the image) of detection ``index``."""
    h, w = image.shape[:2]
    x0, y0, x1, y1 = np.round(boxes_in_image(instances.boxes[index], (h, w))[0]).astype(np.int64).tolist()
    bounds = instances.masks.bounds(index) if instances.masks is not None else None
    if bounds is not None:  # a mask pasted past its rounded box still comes out whole
        y0, y1 = min(y0, bounds[0].start), max(y1, bounds[0].stop)
        x0, x1 = min(x0, bounds[1].start), max(x1, bounds[1].stop)
    # At least one pixel, inside the image: a flat box, or one on the far edge, keeps its edge pixel.
    x0, y0 = min(x0, w - 1), min(y0, h - 1)
    x1, y1 = max(x1, x0 + 1), max(y1, y0 + 1)
    rgba = np.zeros((y1 - y0, x1 - x0, 4), np.uint8)
    rgba[..., :3] = image[y0:y1, x0:x1]
    if instances.masks is None:
        rgba[..., 3] = 255  # a box-only model: the box is the cut-out
    elif bounds is not None:
        rows, cols = bounds
        alpha = instances.masks.crops[index] * np.uint8(255)
        rgba[rows.start - y0:rows.stop - y0, cols.start - x0:cols.stop - x0, 3] = alpha
    return rgba, (x0, y0)


def write_cutouts(path: str | os.PathLike, image: np.ndarray, instances: Instances, keep: np.ndarray, *,
                  panoptic: PanopticSegmentation | None = None, segments: list[Segment] = ()) -> Path:
    """The ZIP of the cut-outs of detections ``keep`` and of ``segments`` of ``panoptic``."""
    boxes = segment_bboxes_and_areas(panoptic.segment_ids) if panoptic is not None and segments else {}

    def write(file) -> None:
        with zipfile.ZipFile(file, "w", compression=zipfile.ZIP_STORED) as archive:  # PNGs are compressed already
            for number, i in enumerate(np.asarray(keep).tolist(), start=1):
                rgba, _ = instance_cutout(image, instances, i)
                name = instances.class_names[int(instances.labels[i])]
                score = float(instances.scores[i])
                archive.writestr(f"instances/{number:03d}_{_safe(name)}_{score:.2f}.png", _png(rgba))
            for segment in segments:
                if segment.id not in boxes:
                    continue  # no pixel left
                _, (x, y, bw, bh) = boxes[segment.id]
                ids = panoptic.segment_ids[y:y + bh, x:x + bw]
                alpha = (ids == segment.id)[..., None] * np.uint8(255)
                rgba = np.concatenate([image[y:y + bh, x:x + bw], alpha], axis=2)
                archive.writestr(f"segments/{segment.id:03d}_{_safe(segment.class_name)}.png", _png(rgba))

    return write_atomic(path, write)


def read_cutouts(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Every PNG of a cut-outs ZIP: its name -> RGBA uint8 [h, w, 4]."""
    with zipfile.ZipFile(path) as archive:
        return {name: np.asarray(Image.open(io.BytesIO(archive.read(name))).convert("RGBA"))
                for name in archive.namelist()}
