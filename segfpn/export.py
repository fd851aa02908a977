"""Results in COCO file formats: detection results JSON (RLE masks) and panoptic PNG + JSON.

Used by the app (downloads), ``segfpn predict`` and :mod:`segfpn.evaluation`. Everything here is
numpy in, plain Python / numpy out; no torch.

Formats (https://cocodataset.org/#format-results):

* detection result: ``{"image_id", "category_id", "bbox": [x, y, w, h], "score",
  "segmentation": {"size": [H, W], "counts": str}}`` with the box in continuous pixel coordinates
  and the mask as compressed RLE (no "segmentation" for a box-only model);
* panoptic PNG: RGB uint8, segment id = R + 256 * G + 256**2 * B, id 0 = void; the JSON annotation
  lists ``segments_info`` (``id``, ``category_id``, ``iscrowd``, ``area``, ``bbox`` [x, y, w, h]
  of the pixels, so a one-pixel segment has w = h = 1).
"""

from __future__ import annotations

import logging
import os

import numpy as np
from pycocotools import mask as mask_utils

from segfpn.atomic_files import write_png
from segfpn.structures import InstanceMasks, Instances, PanopticSegmentation

logger = logging.getLogger(__name__)

#: Number of distinct ids an RGB panoptic PNG can hold (ids 0 .. 256**3 - 1).
MAX_PANOPTIC_ID = 256**3 - 1


def encode_masks(masks: InstanceMasks | np.ndarray) -> list[dict]:
    """Compressed RLEs of binary masks, without making a full frame of any of them.

    masks: :class:`~segfpn.structures.InstanceMasks`, or bool [N, H, W]. Returns N dicts
    ``{"size": [H, W], "counts": str}`` (``counts`` decoded from bytes so the dicts are
    JSON-serialisable), equal to pycocotools' ``encode`` of the full frames.
    """
    if not isinstance(masks, InstanceMasks):
        masks = np.asarray(masks)
        if masks.ndim != 3:
            raise ValueError(f"masks must be [N, H, W], got shape {masks.shape}")
        masks = InstanceMasks.from_array(masks.astype(bool, copy=False))
    h, w = masks.image_size
    rles = []
    for crop, region in zip(masks.crops, masks.regions.tolist()):
        rle = mask_utils.frPyObjects({"size": [h, w], "counts": _run_lengths(crop, region, (h, w))}, h, w)
        rle["counts"] = rle["counts"].decode("ascii")
        rles.append(rle)
    return rles


def _run_lengths(crop: np.ndarray, region: list[int], image_size: tuple[int, int]) -> list[int]:
    """COCO's uncompressed RLE counts of a mask held as ``crop`` in ``region`` (y0, y1, x0, x1):
    runs of 0s and 1s, alternating and starting with 0s, over the pixels in column-major order.
    Only the columns the region spans are laid out; those left and right of it are all 0s."""
    h, w = image_size
    y0, y1, x0, x1 = region
    if y1 <= y0 or x1 <= x0 or not crop.any():
        return [h * w]
    columns = np.zeros((x1 - x0, h), dtype=np.uint8)
    columns[:, y0:y1] = crop.T
    flat = columns.ravel()
    changes = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    runs = np.diff(np.concatenate(([0], changes, [flat.size]))).tolist()
    if flat[0]:
        runs.insert(0, 0)
    runs[0] += x0 * h
    trailing = (w - x1) * h
    if flat[-1]:
        if trailing:
            runs.append(trailing)
    else:
        runs[-1] += trailing
    return runs


def instances_to_coco_results(instances: Instances, image_id: int) -> list[dict]:
    """COCO detection results of one image, one dict per detection, in the instances' order.

    ``instances.boxes`` (float32 [N, 4] xyxy, original-image px) become ``bbox`` [x, y, w, h]
    floats; ``category_id`` is the COCO id ``instances.category_ids[label]``; ``segmentation`` is
    the compressed RLE of each of ``instances.masks`` with ``counts`` as str, left out when
    ``instances.masks`` is None (Faster R-CNN, RetinaNet: box results only).
    """
    n = len(instances)
    if n == 0:
        return []
    boxes = np.asarray(instances.boxes, dtype=np.float64).reshape(n, 4)
    masks = instances.masks
    if masks is not None and len(masks) != n:
        raise ValueError(f"instances have {n} scores but {len(masks)} masks")
    num_classes = len(instances.category_ids)
    rles = encode_masks(masks) if masks is not None else [None] * n
    results = []
    for box, score, label, rle in zip(boxes, instances.scores, instances.labels, rles):
        label = int(label)
        if not 0 <= label < num_classes:
            raise ValueError(f"label {label} is outside the model's {num_classes} classes "
                             f"(instances.category_ids has {num_classes} entries)")
        x0, y0, x1, y1 = (float(v) for v in box)
        result = {
            "image_id": int(image_id),
            "category_id": int(instances.category_ids[label]),
            "bbox": [x0, y0, x1 - x0, y1 - y0],
            "score": float(score),
        }
        if rle is not None:
            result["segmentation"] = rle
        results.append(result)
    return results


def rgb_to_id(rgb: np.ndarray) -> np.ndarray:
    """COCO panoptic PNG to segment ids: uint8 RGB [..., 3] -> uint32 [...], R + 256 G + 256² B."""
    rgb = np.asarray(rgb)
    if rgb.shape[-1:] != (3,):
        raise ValueError(f"expected an RGB array [..., 3], got shape {rgb.shape}")
    if rgb.dtype != np.uint8:
        raise ValueError(f"expected uint8 RGB, got dtype {rgb.dtype}")
    rgb = rgb.astype(np.uint32)
    return rgb[..., 0] + 256 * rgb[..., 1] + 256 * 256 * rgb[..., 2]


def id_to_rgb(ids: np.ndarray) -> np.ndarray:
    """Inverse of :func:`rgb_to_id`: integer ids [...] in [0, 256³) -> uint8 [..., 3] RGB.

    The RGB bytes are the low three bytes of each id as a little-endian uint32: read through a
    view, so a 24-megapixel map costs its 72 MB output and no per-channel temporaries.
    """
    ids = np.asarray(ids)
    if not np.issubdtype(ids.dtype, np.integer):
        raise ValueError(f"segment ids must be integers, got dtype {ids.dtype}")
    if ids.size and (ids.min() < 0 or ids.max() > MAX_PANOPTIC_ID):
        raise ValueError(f"segment ids must lie in [0, {MAX_PANOPTIC_ID}] to fit an RGB PNG, "
                         f"got range [{ids.min()}, {ids.max()}]")
    if ids.dtype.itemsize == 4:  # int32 / uint32: no copy on a little-endian machine
        little = np.ascontiguousarray(ids.astype("<i4" if ids.dtype.kind == "i" else "<u4", copy=False))
    else:
        little = ids.astype("<u4")
    return np.ascontiguousarray(little.view(np.uint8).reshape(*ids.shape, 4)[..., :3])


#: Pixels of a segment map read at a time by :func:`segment_bboxes_and_areas`.
_BAND_PIXELS = 1 << 21


def segment_bboxes_and_areas(segment_ids: np.ndarray) -> dict[int, tuple[int, list[int]]]:
    """``{id: (area, [x, y, w, h])}`` for every id > 0 in an integer map [H, W], by ascending id.

    The box is the tight box of the pixels in integer pixel units (w = x_max - x_min + 1). The
    map is read in bands of rows, so the temporaries are a band's, not the whole map's.
    """
    segment_ids = np.asarray(segment_ids)
    if segment_ids.ndim != 2:
        raise ValueError(f"segment ids must be [H, W], got shape {segment_ids.shape}")
    height, width = segment_ids.shape
    stats: dict[int, list[int]] = {}  # id -> [area, x0, y0, x1, y1], inclusive
    band_rows = max(1, _BAND_PIXELS // max(width, 1))
    for top in range(0, height, band_rows):
        band = segment_ids[top:top + band_rows]
        ids, inverse, counts = np.unique(band, return_inverse=True, return_counts=True)
        inverse = inverse.reshape(band.shape)
        in_row = np.zeros((len(ids), band.shape[0]), dtype=bool)
        in_row[inverse, np.arange(band.shape[0])[:, None]] = True
        in_col = np.zeros((len(ids), width), dtype=bool)
        in_col[inverse, np.arange(width)[None, :]] = True
        for k, (segment_id, area) in enumerate(zip(ids.tolist(), counts.tolist())):
            if segment_id == 0:
                continue
            rows, cols = np.flatnonzero(in_row[k]), np.flatnonzero(in_col[k])
            box = [int(cols[0]), top + int(rows[0]), int(cols[-1]), top + int(rows[-1])]
            seen = stats.get(segment_id)
            if seen is None:
                stats[segment_id] = [area, *box]
            else:
                seen[0] += area
                seen[1:3] = [min(seen[1], box[0]), min(seen[2], box[1])]
                seen[3:5] = [max(seen[3], box[2]), max(seen[4], box[3])]
    return {i: (area, [x0, y0, x1 - x0 + 1, y1 - y0 + 1]) for i, (area, x0, y0, x1, y1) in sorted(stats.items())}


def panoptic_to_coco(panoptic: PanopticSegmentation, image_id: int,
                     file_name: str) -> tuple[np.ndarray, dict]:
    """A panoptic prediction as a COCO panoptic PNG array and its annotation.

    panoptic.segment_ids: int32 [H, W], 0 = void. Returns ``(rgb, annotation)``: rgb is uint8
    [H, W, 3] (id = R + 256 G + 256² B, ids kept as they are) and annotation is
    ``{"image_id", "file_name", "segments_info": [{"id", "category_id", "iscrowd": 0, "area",
    "bbox": [x, y, w, h]}]}`` with COCO category ids, areas and boxes measured on the map.

    A segment with category id 0 (the merged "things" class of a panoptic-separated semantic head)
    is not a COCO category: its pixels are written as void and it is left out. Segments that cover
    no pixel are left out too. An id in the map that ``panoptic.segments`` does not list is an
    error.
    """
    segment_ids = np.asarray(panoptic.segment_ids)
    if segment_ids.ndim != 2:
        raise ValueError(f"panoptic.segment_ids must be [H, W], got shape {segment_ids.shape}")
    by_id = {}
    for seg in panoptic.segments:
        if seg.id in by_id:
            raise ValueError(f"image {image_id}: segment id {seg.id} is listed twice")
        by_id[seg.id] = seg

    stats = segment_bboxes_and_areas(segment_ids)
    unlisted = sorted(set(stats) - set(by_id))
    if unlisted:
        raise ValueError(f"image {image_id}: segment ids {unlisted} are in the segment map but not "
                         "in panoptic.segments")
    to_void = [seg_id for seg_id in stats if by_id[seg_id].category_id == 0]
    if to_void:
        logger.warning("image %s: %d segment(s) of the merged 'things' class (category id 0) "
                       "written as void", image_id, len(to_void))
        segment_ids = np.where(np.isin(segment_ids, to_void), 0, segment_ids)

    segments_info = []
    for seg in panoptic.segments:
        if seg.id not in stats or seg.category_id == 0:
            continue
        area, bbox = stats[seg.id]
        segments_info.append({"id": int(seg.id), "category_id": int(seg.category_id),
                              "iscrowd": 0, "area": area, "bbox": bbox})
    annotation = {"image_id": int(image_id), "file_name": file_name,
                  "segments_info": segments_info}
    return id_to_rgb(segment_ids), annotation


def write_panoptic_png(path: str | os.PathLike, rgb: np.ndarray) -> None:
    """Write a uint8 [H, W, 3] panoptic array as a PNG, atomically.

    The image goes to a temporary file in the destination folder which then replaces ``path``,
    so readers never see a half-written file and a failure leaves ``path`` as it was.
    """
    rgb = np.asarray(rgb)
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"a panoptic PNG must be uint8 [H, W, 3], got {rgb.dtype} {rgb.shape}")
    write_png(path, rgb)
