"""COCO instance and panoptic data sets: JSON (+ panoptic PNGs) in, one :class:`Sample` per image.

Three layouts are read, chosen by which files are given to :class:`CocoDataset`:

* instances only (``instances_json``): boxes, labels and masks; ``semantic`` is None;
* instances + panoptic (``instances_json`` and ``panoptic_json``): instance targets from the
  instances file, ``semantic`` from the panoptic PNGs;
* panoptic only (``panoptic_json``): thing instances are the panoptic thing segments, and
  ``semantic`` comes from the same PNGs.

COCO rules applied: crowd regions (``iscrowd`` 1) are never instance targets and are ignored (255)
in ``semantic``; void pixels (panoptic id 0) are 255 too; every thing pixel is semantic label 0,
the merged "things" class of a panoptic-separated semantic head. A broken annotation is skipped
with a ``logging`` warning that names the image and annotation ids; it never stops the data set.
The JSON files are read when the data set is built; images, masks and PNGs are decoded lazily,
one ``__getitem__`` at a time. Nothing here imports torch, yet the class works as a map-style
``torch.utils.data.Dataset`` (``__len__`` + ``__getitem__``).
"""

from __future__ import annotations

import json
import logging
import math
import os
from numbers import Real
from pathlib import Path

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

from segfpn.categories import CategorySet
from segfpn.data.sample import IGNORE_LABEL, Sample
from segfpn.export import rgb_to_id

logger = logging.getLogger(__name__)

#: Semantic label of every thing pixel (index 0 of a panoptic-separated ``CategorySet.stuff``).
THINGS_SEMANTIC_LABEL = 0


class CocoDataset:
    """Images of a COCO instance and/or panoptic annotation set, as :class:`Sample` objects.

    image_dir: folder holding the images (``file_name`` of each image entry is relative to it).
    categories: the model's classes; thing COCO ids map to ``labels`` through
        ``categories.thing_label`` and stuff ids to ``semantic`` through
        ``categories.semantic_label``. With panoptic labels, ``categories.stuff[0]`` must be the
        merged "things" class (id 0), as in :func:`segfpn.categories.coco_panoptic_category_set`.
    instances_json: COCO instances file (``images``, ``annotations`` with polygon, compressed or
        uncompressed RLE ``segmentation``, ``bbox`` [x, y, w, h], ``iscrowd``).
    panoptic_json: COCO panoptic file (``images``, ``annotations`` with ``file_name`` and
        ``segments_info``). panoptic_dir: the folder of its PNGs; by default the JSON path
        without ``.json`` (COCO's ``annotations/panoptic_val2017/`` layout).
    skip_empty: leave out images with no instance target. Decided from the JSON alone when the
        data set is built (annotations that are crowd, of an unknown category, or have no
        segmentation or a degenerate box do not count); an image whose remaining annotations
        only fail when their masks are decoded is still returned, with G = 0.

    The image order is the order of the ``images`` list of the instances file (of the panoptic
    file when there is none). In the instances + panoptic layout, images without a panoptic
    annotation are left out with one warning.
    """

    def __init__(self, image_dir: str | os.PathLike, *, categories: CategorySet,
                 instances_json: str | os.PathLike | None = None,
                 panoptic_json: str | os.PathLike | None = None,
                 panoptic_dir: str | os.PathLike | None = None,
                 skip_empty: bool = False):
        if instances_json is None and panoptic_json is None:
            raise ValueError("CocoDataset needs instances_json, panoptic_json or both")
        if panoptic_json is None and panoptic_dir is not None:
            raise ValueError("panoptic_dir was given without panoptic_json")
        self.image_dir = Path(image_dir)
        self.categories = categories
        self.instances_json = None if instances_json is None else Path(instances_json)
        self.panoptic_json = None if panoptic_json is None else Path(panoptic_json)
        self.panoptic_dir = None
        self._thing_ids = {c.id for c in categories.things}
        self._stuff_labels: dict[int, int] = {}
        self._annotations: dict[int, list[dict]] = {}
        self._panoptic: dict[int, dict] = {}
        self._warned: set[tuple[int, str, str]] = set()

        images = None
        if self.instances_json is not None:
            data = _load_json(self.instances_json, kind="instances", required=("images", "annotations"))
            images = data["images"]
            for ann in data["annotations"]:
                self._annotations.setdefault(ann.get("image_id"), []).append(ann)
            _report_unknown_categories(self.instances_json, data.get("categories", []), categories)
        if self.panoptic_json is not None:
            self.panoptic_dir = (self.panoptic_json.with_suffix("") if panoptic_dir is None
                                 else Path(panoptic_dir))
            if not self.panoptic_dir.is_dir():
                raise FileNotFoundError(f"panoptic PNG folder {self.panoptic_dir} does not exist; "
                                        "pass panoptic_dir= to point at the PNGs of "
                                        f"{self.panoptic_json}")
            self._stuff_labels = _stuff_labels(categories)
            data = _load_json(self.panoptic_json, kind="panoptic", required=("images", "annotations"))
            self._panoptic = {ann.get("image_id"): ann for ann in data["annotations"]}
            if images is None:
                images = data["images"]
                _report_unknown_categories(self.panoptic_json, data.get("categories", []), categories)
            missing = [img["id"] for img in images if img["id"] not in self._panoptic]
            if missing:
                logger.warning("%s: %d image(s) have no panoptic annotation and are left out "
                               "(first ids: %s)", self.panoptic_json, len(missing), missing[:5])
                images = [img for img in images if img["id"] in self._panoptic]

        for img in images:
            for key in ("id", "file_name", "height", "width"):
                if key not in img:
                    raise ValueError(f"an image entry of {self.instances_json or self.panoptic_json} "
                                     f"has no '{key}': {img}")
        if skip_empty:
            kept = [img for img in images if self._has_candidate_instance(img)]
            if len(kept) < len(images):
                logger.info("skip_empty: left out %d of %d images with no instance target",
                            len(images) - len(kept), len(images))
            images = kept
        self._images = [dict(img) for img in images]

    # -- the Dataset protocol --------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._images)

    def __getitem__(self, index: int) -> Sample:
        if not isinstance(index, (int, np.integer)):
            raise TypeError(f"CocoDataset index must be an int, got {type(index).__name__}")
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} is out of range for a data set of {len(self)} images")
        info = self._images[int(index)]
        image_id, height, width = info["id"], int(info["height"]), int(info["width"])
        image = _read_rgb(self.image_dir / info["file_name"], image_id=image_id,
                          expected_size=(height, width))
        semantic = None
        segment_ids = None
        if self.panoptic_json is not None:
            segment_ids = self._read_segment_ids(image_id, height, width)
            semantic = self._semantic(image_id, segment_ids)
        if self.instances_json is not None:
            boxes, labels, masks = self._instances_from_annotations(image_id, height, width)
        else:
            boxes, labels, masks = self._instances_from_segments(image_id, segment_ids)
        return Sample(image=image, boxes=boxes, labels=labels, masks=masks, semantic=semantic,
                      image_id=image_id, file_name=info["file_name"])

    @property
    def image_ids(self) -> list[int]:
        """COCO image ids in data set order."""
        return [img["id"] for img in self._images]

    def __repr__(self) -> str:
        sources = [str(p) for p in (self.instances_json, self.panoptic_json) if p is not None]
        return f"CocoDataset({len(self)} images from {', '.join(sources)})"

    # -- instances -------------------------------------------------------------------------------

    def _instances_from_annotations(self, image_id: int, height: int, width: int):
        boxes, labels, masks = [], [], []
        for ann in self._annotations.get(image_id, []):
            if ann.get("iscrowd", 0):
                continue  # crowd regions are not targets (COCO rule)
            problem = _annotation_problem(ann, self._thing_ids, height, width)
            box = None
            if problem is None:
                box = _clipped_xyxy(ann["bbox"], height, width)
                if box is None:
                    problem = f"box {ann['bbox']} lies outside the {width}x{height} image"
            mask = None
            if problem is None:
                try:
                    mask = decode_segmentation(ann["segmentation"], height=height, width=width)
                except (ValueError, TypeError, OverflowError) as exc:
                    problem = f"segmentation cannot be decoded: {exc}"
            if problem is None and not mask.any():
                problem = "segmentation decodes to an empty mask"
            if problem is not None:
                self._warn(image_id, f"annotation {ann.get('id')}", f"{problem}; skipped")
                continue
            boxes.append(box)
            labels.append(self.categories.thing_label(ann["category_id"]))
            masks.append(mask)
        return _stack_instances(boxes, labels, masks, height, width)

    def _instances_from_segments(self, image_id: int, segment_ids: np.ndarray):
        height, width = segment_ids.shape
        boxes, labels, masks = [], [], []
        for seg in self._panoptic[image_id].get("segments_info", []):
            if seg.get("category_id") not in self._thing_ids or seg.get("iscrowd", 0):
                continue  # stuff, crowd or unknown (the semantic map reports unknown ones)
            mask = segment_ids == seg.get("id")
            if not mask.any():
                self._warn(image_id, f"segment {seg.get('id')}",
                           "panoptic segment has no pixel in its PNG; skipped")
                continue
            boxes.append(_mask_box(mask))
            labels.append(self.categories.thing_label(seg["category_id"]))
            masks.append(mask)
        return _stack_instances(boxes, labels, masks, height, width)

    def _has_candidate_instance(self, img: dict) -> bool:
        height, width = int(img["height"]), int(img["width"])
        if self.instances_json is not None:
            return any(not ann.get("iscrowd", 0)
                       and _annotation_problem(ann, self._thing_ids, height, width) is None
                       and _clipped_xyxy(ann["bbox"], height, width) is not None
                       for ann in self._annotations.get(img["id"], []))
        return any(seg.get("category_id") in self._thing_ids and not seg.get("iscrowd", 0)
                   and seg.get("area", 1) > 0
                   for seg in self._panoptic[img["id"]].get("segments_info", []))

    # -- panoptic --------------------------------------------------------------------------------

    def _read_segment_ids(self, image_id: int, height: int, width: int) -> np.ndarray:
        """uint32 [H, W] segment ids of the image's panoptic PNG (0 = void)."""
        ann = self._panoptic[image_id]
        if "file_name" not in ann:
            raise ValueError(f"{self.panoptic_json}: the panoptic annotation of image {image_id} "
                             "has no 'file_name'")
        rgb = _read_rgb(self.panoptic_dir / ann["file_name"], image_id=image_id,
                        expected_size=(height, width))
        return rgb_to_id(rgb)

    def _semantic(self, image_id: int, segment_ids: np.ndarray) -> np.ndarray:
        """int64 [H, W]: stuff -> semantic index, things -> 0, void/crowd/unknown -> 255."""
        value_of = {}
        for seg in self._panoptic[image_id].get("segments_info", []):
            category_id = seg.get("category_id")
            if seg.get("iscrowd", 0):
                value_of[seg.get("id")] = IGNORE_LABEL
            elif category_id in self._thing_ids:
                value_of[seg.get("id")] = THINGS_SEMANTIC_LABEL
            elif category_id in self._stuff_labels:
                value_of[seg.get("id")] = self._stuff_labels[category_id]
            else:
                self._warn(image_id, f"segment {seg.get('id')}", f"category id {category_id} is "
                           "not one of the model's classes; its pixels are ignored (255)")
                value_of[seg.get("id")] = IGNORE_LABEL
        ids, inverse = np.unique(segment_ids, return_inverse=True)
        lookup = np.full(len(ids), IGNORE_LABEL, dtype=np.int64)
        for i, seg_id in enumerate(ids.tolist()):
            if seg_id == 0:
                continue  # void
            if seg_id not in value_of:
                self._warn(image_id, f"segment {seg_id}", "the id is in the panoptic PNG but not "
                           "in segments_info; its pixels are ignored (255)")
                continue
            lookup[i] = value_of[seg_id]
        return lookup[inverse.reshape(segment_ids.shape)]

    def _warn(self, image_id, subject: str, message: str) -> None:
        """Log ``image <id>, <subject>: <message>`` once per data set (and worker process)."""
        key = (image_id, subject, message)
        if key in self._warned:
            return
        self._warned.add(key)
        logger.warning("image %s, %s: %s", image_id, subject, message)


# -- annotations ----------------------------------------------------------------------------------

def decode_segmentation(segmentation, *, height: int, width: int) -> np.ndarray:
    """A COCO ``segmentation`` as bool [height, width].

    Accepts polygons (a list of flat ``[x0, y0, x1, y1, ...]`` lists, in pixel coordinates),
    uncompressed RLE (``{"size": [H, W], "counts": [int, ...]}``) and compressed RLE (``counts``
    a str or bytes). Polygons with fewer than 3 points are dropped. Raises ValueError saying what
    is wrong for anything else (an RLE of another size, counts that do not add up to H * W, ...).
    """
    if isinstance(segmentation, dict):
        size = segmentation.get("size")
        counts = segmentation.get("counts")
        if not isinstance(size, (list, tuple)) or list(size) != [height, width]:
            raise ValueError(f"RLE size {size} is not the image size [{height}, {width}]")
        if isinstance(counts, list):
            if not all(isinstance(c, (int, np.integer)) and c >= 0 for c in counts):
                raise ValueError("uncompressed RLE counts must be non-negative integers")
            _check_run_total(sum(counts), height, width)
            rle = mask_utils.frPyObjects({"size": [height, width], "counts": counts}, height, width)
        elif isinstance(counts, (str, bytes)):
            counts = counts.encode("ascii") if isinstance(counts, str) else counts
            _check_run_total(_compressed_run_total(counts), height, width)
            rle = {"size": [height, width], "counts": counts}
        else:
            raise ValueError(f"RLE counts must be a list or a string, got {type(counts).__name__}")
    elif isinstance(segmentation, list):
        if segmentation and all(isinstance(v, Real) for v in segmentation):
            segmentation = [segmentation]  # a single flat polygon
        polygons = [[float(v) for v in poly] for poly in segmentation
                    if isinstance(poly, (list, tuple)) and len(poly) >= 6 and len(poly) % 2 == 0
                    and all(isinstance(v, Real) and math.isfinite(v) for v in poly)]
        if not polygons:
            raise ValueError("no polygon with at least 3 points")
        rle = mask_utils.merge(mask_utils.frPyObjects(polygons, height, width))
    else:
        raise ValueError(f"unknown segmentation type {type(segmentation).__name__}")
    try:
        return mask_utils.decode(rle).astype(bool)
    except (ValueError, TypeError) as exc:
        raise ValueError(str(exc)) from exc


def _check_run_total(total: int, height: int, width: int) -> None:
    if total != height * width:
        raise ValueError(f"RLE runs cover {total} pixels, the {width}x{height} image has "
                         f"{height * width}")


def _compressed_run_total(counts: bytes) -> int:
    """Sum of the runs of a COCO compressed RLE string (raises ValueError on a malformed one).

    Format (pycocotools ``maskApi.c``): each run is a little-endian sequence of 5-bit groups
    stored as ``chr(48 + group)``, bit 0x20 meaning "more groups follow" and bit 0x10 of the last
    group the sign; from the third run on, the stored value is the difference to the run two
    places before.
    """
    runs: list[int] = []
    pos = 0
    while pos < len(counts):
        value = shift = 0
        while True:
            if pos >= len(counts):
                raise ValueError("compressed RLE string ends inside a run")
            group = counts[pos] - 48
            if not 0 <= group < 64:
                raise ValueError(f"compressed RLE has an invalid character {chr(counts[pos])!r}")
            pos += 1
            value |= (group & 0x1F) << shift
            shift += 5
            if not group & 0x20:
                if group & 0x10:
                    value -= 1 << shift
                break
        if len(runs) > 2:
            value += runs[-2]
        if value < 0:
            raise ValueError("compressed RLE has a negative run length")
        runs.append(value)
    return sum(runs)


def _annotation_problem(ann: dict, thing_ids: set[int], height: int, width: int) -> str | None:
    """Why a non-crowd instance annotation cannot be a target, from the JSON alone; None if it can."""
    category_id = ann.get("category_id")
    if category_id not in thing_ids:
        return f"category id {category_id} is not one of the model's thing classes"
    segmentation = ann.get("segmentation")
    if not segmentation:
        return "annotation has no segmentation"
    bbox = ann.get("bbox")
    if (not isinstance(bbox, (list, tuple)) or len(bbox) != 4
            or not all(isinstance(v, Real) and math.isfinite(v) for v in bbox)):
        return f"bbox {bbox} is not four finite numbers [x, y, w, h]"
    if bbox[2] <= 0 or bbox[3] <= 0:
        return f"bbox {bbox} has zero or negative width or height"
    return None


def _clipped_xyxy(bbox, height: int, width: int) -> np.ndarray | None:
    """COCO [x, y, w, h] -> float32 [4] xyxy clipped to the image, or None if nothing is left."""
    x, y, w, h = (float(v) for v in bbox)
    x1, y1 = min(max(x, 0.0), width), min(max(y, 0.0), height)
    x2, y2 = min(max(x + w, 0.0), width), min(max(y + h, 0.0), height)
    if x2 <= x1 or y2 <= y1:
        return None
    return np.array([x1, y1, x2, y2], dtype=np.float32)


def _mask_box(mask: np.ndarray) -> np.ndarray:
    """float32 [4] xyxy of the pixels of a non-empty bool [H, W] mask (x2 = last column + 1)."""
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    return np.array([cols[0], rows[0], cols[-1] + 1, rows[-1] + 1], dtype=np.float32)


def _stack_instances(boxes, labels, masks, height: int, width: int):
    if not boxes:
        return (np.zeros((0, 4), dtype=np.float32), np.zeros((0,), dtype=np.int64),
                np.zeros((0, height, width), dtype=bool))
    return (np.stack(boxes).astype(np.float32), np.asarray(labels, dtype=np.int64),
            np.stack(masks).astype(bool))


def _stuff_labels(categories: CategorySet) -> dict[int, int]:
    """COCO stuff id -> semantic index, for a panoptic-separated head (index 0 = things)."""
    stuff = categories.stuff
    if not stuff or stuff[0].id != 0:
        raise ValueError("panoptic labels need a CategorySet whose stuff[0] is the merged 'things' "
                         "class (id 0), e.g. coco_panoptic_category_set(); got stuff ids "
                         f"{[c.id for c in stuff][:5]}")
    return {c.id: categories.semantic_label(c.id) for c in stuff[1:]}


# -- files ------------------------------------------------------------------------------------------

def _load_json(path: Path, *, kind: str, required: tuple[str, ...]) -> dict:
    if not path.is_file():
        raise FileNotFoundError(f"COCO {kind} file {path} does not exist")
    with open(path, encoding="utf-8") as f:
        try:
            data = json.load(f)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path} is not valid JSON: {exc}") from exc
    missing = [key for key in required if not isinstance(data.get(key) if isinstance(data, dict)
                                                         else None, list)]
    if missing:
        raise ValueError(f"{path} is not a COCO {kind} file: it has no {missing} list(s)")
    return data


def _report_unknown_categories(path: Path, json_categories: list[dict],
                               categories: CategorySet) -> None:
    known = {c.id for c in categories.things} | {c.id for c in categories.stuff}
    unknown = [c.get("name", c.get("id")) for c in json_categories if c.get("id") not in known]
    if unknown:
        logger.warning("%s: %d categories are not among the model's classes and their "
                       "annotations will be skipped: %s", path, len(unknown), unknown[:10])


def _read_rgb(path: Path, *, image_id, expected_size: tuple[int, int]) -> np.ndarray:
    """uint8 [H, W, 3] RGB of an image file, checked against the (H, W) its JSON entry gives.

    The stored pixels are used as they are (no EXIF rotation), as COCO's annotations are.
    """
    if not path.is_file():
        raise FileNotFoundError(f"image {image_id}: file {path} does not exist")
    with Image.open(path) as img:
        rgb = np.array(img.convert("RGB"))
    if rgb.shape[:2] != tuple(expected_size):
        raise ValueError(f"image {image_id}: {path} is {rgb.shape[1]}x{rgb.shape[0]} but its "
                         f"JSON entry says {expected_size[1]}x{expected_size[0]} (width x height); "
                         "a rotated (EXIF) or replaced file?")
    return rgb
