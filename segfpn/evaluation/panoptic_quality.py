"""Panoptic quality (Kirillov et al., "Panoptic Segmentation", CVPR 2019).

The rules are those of the COCO reference implementation (cocodataset/panopticapi,
``panopticapi.evaluation.pq_compute``), re-implemented here image by image:

* a predicted and a ground-truth segment of the same category match when IoU > 0.5 (so every
  segment matches at most once); the union leaves out the predicted pixels that fall on ground-truth
  void: ``union = |pred| + |gt| - |pred ∩ gt| - |pred ∩ void|``;
* crowd ground-truth segments (``iscrowd == 1``) are never matched and never false negatives;
* an unmatched prediction is not a false positive when more than half of its pixels lie on void or
  on a crowd segment of its own category;
* per category ``PQ = Σ IoU / (TP + FP/2 + FN/2)``, ``SQ = Σ IoU / TP`` (0 without TP) and
  ``RQ = TP / (TP + FP/2 + FN/2)``; the All / Things / Stuff figures average the categories with
  ``TP + FP + FN > 0``.

One difference of detail: areas come from the PNGs, not from the ``area`` fields of the JSON
(identical for consistent COCO files), and several crowd segments of one category in an image
all count as crowd (panopticapi keeps only the last one listed; COCO has at most one).

Statistics accumulate per category (tp, fp, fn, iou_sum), so memory does not grow with the number
of images. Values are fractions in [0, 1] (panopticapi prints them x100).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from segfpn.export import rgb_to_id

logger = logging.getLogger(__name__)

VOID = 0


@dataclass
class CategoryStats:
    """Counts of one category: true positives, false positives, false negatives, Σ IoU of TPs."""

    tp: int = 0
    fp: int = 0
    fn: int = 0
    iou_sum: float = 0.0

    def __iadd__(self, other: "CategoryStats") -> "CategoryStats":
        self.tp += other.tp
        self.fp += other.fp
        self.fn += other.fn
        self.iou_sum += other.iou_sum
        return self

    @property
    def count(self) -> int:
        return self.tp + self.fp + self.fn

    def pq_sq_rq(self) -> tuple[float, float, float]:
        denominator = self.tp + 0.5 * self.fp + 0.5 * self.fn
        if denominator == 0:
            return 0.0, 0.0, 0.0
        sq = self.iou_sum / self.tp if self.tp else 0.0
        return self.iou_sum / denominator, sq, self.tp / denominator


class PanopticQuality:
    """Accumulates PQ statistics over images; :meth:`summarize` gives the metrics.

    categories: COCO panoptic categories, dicts with ``id``, ``name`` and ``isthing`` (0/1 or
    bool), e.g. ``panoptic_json["categories"]``.
    """

    def __init__(self, categories: Iterable[Mapping]):
        self.categories = {int(c["id"]): {"name": str(c.get("name", c["id"])),
                                          "isthing": bool(c["isthing"])}
                           for c in categories}
        if not self.categories:
            raise ValueError("PanopticQuality needs the list of categories (none given)")
        self.stats: dict[int, CategoryStats] = {}
        self.num_images = 0

    def update(self, gt_ids: np.ndarray, gt_segments: Sequence[Mapping],
               pred_ids: np.ndarray, pred_segments: Sequence[Mapping], *,
               image_id: int | str | None = None) -> dict[int, CategoryStats]:
        """Score one image and add its counts; returns that image's counts per category.

        gt_ids / pred_ids: integer segment maps [H, W] (0 = void), e.g. from
        :func:`read_panoptic_png`.
        gt_segments: ``segments_info`` of the ground truth (``id``, ``category_id``, ``iscrowd``).
        pred_segments: ``segments_info`` of the prediction (``id``, ``category_id``).
        """
        image_stats = match_segments(gt_ids, gt_segments, pred_ids, pred_segments,
                                     categories=self.categories, image_id=image_id)
        for category_id, stats in image_stats.items():
            self.stats.setdefault(category_id, CategoryStats()).__iadd__(stats)
        self.num_images += 1
        return image_stats

    def merge(self, other: "PanopticQuality") -> None:
        """Add the counts of another accumulator (e.g. from another worker)."""
        for category_id, stats in other.stats.items():
            self.stats.setdefault(category_id, CategoryStats()).__iadd__(stats)
        self.num_images += other.num_images

    def summarize(self) -> dict:
        """``{"All" | "Things" | "Stuff": {"pq", "sq", "rq", "n"}, "per_class": {id: {...}}}``.

        ``per_class`` holds the categories with TP + FP + FN > 0, keyed by COCO id, each with
        ``name, isthing, pq, sq, rq, tp, fp, fn, iou_sum``. A group without such categories gets
        zeros and ``n`` = 0.
        """
        per_class = {}
        for category_id in sorted(self.categories):
            stats = self.stats.get(category_id, CategoryStats())
            if stats.count == 0:
                continue
            pq, sq, rq = stats.pq_sq_rq()
            per_class[category_id] = {
                "name": self.categories[category_id]["name"],
                "isthing": self.categories[category_id]["isthing"],
                "pq": pq, "sq": sq, "rq": rq,
                "tp": stats.tp, "fp": stats.fp, "fn": stats.fn, "iou_sum": stats.iou_sum,
            }
        results = {}
        for group, isthing in (("All", None), ("Things", True), ("Stuff", False)):
            rows = [r for r in per_class.values() if isthing is None or r["isthing"] == isthing]
            n = len(rows)
            results[group] = {key: (sum(r[key] for r in rows) / n if n else 0.0)
                              for key in ("pq", "sq", "rq")}
            results[group]["n"] = n
        results["per_class"] = per_class
        return results


def match_segments(gt_ids: np.ndarray, gt_segments: Sequence[Mapping],
                   pred_ids: np.ndarray, pred_segments: Sequence[Mapping], *,
                   categories: Mapping[int, object],
                   image_id: int | str | None = None) -> dict[int, CategoryStats]:
    """Match the segments of one image; returns TP / FP / FN / Σ IoU per category id.

    Shapes and dtypes as in :meth:`PanopticQuality.update`; ``categories`` only needs the known
    COCO ids as keys. Raises ValueError for inconsistent input (shape mismatch, unknown category,
    an id listed twice, in the JSON but not in the PNG or in the PNG but not in the JSON).
    """
    where = f"image {image_id}" if image_id is not None else "image"
    gt_ids, pred_ids = np.asarray(gt_ids), np.asarray(pred_ids)
    if gt_ids.ndim != 2 or pred_ids.ndim != 2:
        raise ValueError(f"{where}: segment maps must be [H, W], got ground truth {gt_ids.shape} "
                         f"and prediction {pred_ids.shape}")
    if gt_ids.shape != pred_ids.shape:
        raise ValueError(f"{where}: the prediction is {pred_ids.shape[0]}x{pred_ids.shape[1]} "
                         f"but the ground truth is {gt_ids.shape[0]}x{gt_ids.shape[1]} (H x W)")
    gt_info = _segments_by_id(gt_segments, categories, what="ground truth", where=where)
    pred_info = _segments_by_id(pred_segments, categories, what="prediction", where=where)

    # Intersection of every (ground-truth id, predicted id) pair present, via compact indices.
    gt_u, gt_index = np.unique(gt_ids.ravel(), return_inverse=True)
    pred_u, pred_index = np.unique(pred_ids.ravel(), return_inverse=True)
    _check_ids_match(gt_u, gt_info, what="ground truth", where=where)
    _check_ids_match(pred_u, pred_info, what="prediction", where=where)
    pair_index = gt_index.astype(np.int64) * len(pred_u) + pred_index
    inter = np.bincount(pair_index, minlength=len(gt_u) * len(pred_u)).reshape(len(gt_u), -1)
    gt_area = np.bincount(gt_index, minlength=len(gt_u))
    pred_area = np.bincount(pred_index, minlength=len(pred_u))
    gt_void_row = 0 if gt_u[0] == VOID else None  # np.unique sorts, so void comes first

    gt_cat = {g: int(gt_info[int(i)]["category_id"]) for g, i in enumerate(gt_u) if i != VOID}
    gt_crowd = {g for g, i in enumerate(gt_u) if i != VOID and gt_info[int(i)].get("iscrowd", 0)}
    pred_cat = {p: int(pred_info[int(i)]["category_id"]) for p, i in enumerate(pred_u) if i != VOID}

    stats: dict[int, CategoryStats] = {}

    def stat(category_id: int) -> CategoryStats:
        return stats.setdefault(category_id, CategoryStats())

    def void_overlap(p: int) -> int:
        return int(inter[gt_void_row, p]) if gt_void_row is not None else 0

    matched_gt, matched_pred = set(), set()
    for g, p, intersection in _nonzero_pairs(inter):
        if g not in gt_cat or p not in pred_cat or g in gt_crowd:
            continue
        if gt_cat[g] != pred_cat[p]:
            continue
        union = pred_area[p] + gt_area[g] - intersection - void_overlap(p)
        iou = intersection / union
        if iou > 0.5:
            stat(gt_cat[g]).tp += 1
            stat(gt_cat[g]).iou_sum += float(iou)
            matched_gt.add(g)
            matched_pred.add(p)

    crowd_by_category: dict[int, list[int]] = {}
    for g in gt_crowd:
        crowd_by_category.setdefault(gt_cat[g], []).append(g)
    for g, category_id in gt_cat.items():
        if g not in matched_gt and g not in gt_crowd:
            stat(category_id).fn += 1

    for p, category_id in pred_cat.items():
        if p in matched_pred:
            continue
        crowd = crowd_by_category.get(category_id, ())
        ignored = void_overlap(p) + sum(int(inter[g, p]) for g in crowd)
        if ignored / pred_area[p] > 0.5:
            continue
        stat(category_id).fp += 1
    return stats


def read_panoptic_png(path: str | os.PathLike) -> np.ndarray:
    """Segment ids of a COCO panoptic PNG: uint32 [H, W], id = R + 256 G + 256² B (0 = void)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"panoptic PNG {path} does not exist")
    with Image.open(path) as image:
        return rgb_to_id(np.asarray(image.convert("RGB")))


def pq_compute_files(gt_json: str | os.PathLike | Mapping, pred_json: str | os.PathLike | Mapping,
                     *, gt_dir: str | os.PathLike | None = None,
                     pred_dir: str | os.PathLike | None = None, progress: bool = False) -> dict:
    """PQ of a COCO panoptic prediction (JSON + PNG folder) against the ground truth.

    ``gt_json`` / ``pred_json``: paths or loaded dicts; the categories come from ``gt_json``.
    The PNG folders default to the JSON path without ``.json`` (panopticapi's convention).
    Every ground-truth image needs a prediction. Returns :meth:`PanopticQuality.summarize`.
    """
    gt_data, gt_dir = _load_panoptic(gt_json, gt_dir, what="ground truth")
    pred_data, pred_dir = _load_panoptic(pred_json, pred_dir, what="prediction")
    predictions = {ann["image_id"]: ann for ann in pred_data.get("annotations", [])}
    evaluator = PanopticQuality(gt_data["categories"])
    annotations = gt_data.get("annotations", [])
    for gt_ann in tqdm(annotations, desc="PQ", unit="img", disable=not progress):
        image_id = gt_ann["image_id"]
        if image_id not in predictions:
            raise ValueError(f"no panoptic prediction for image {image_id} in the prediction JSON")
        pred_ann = predictions[image_id]
        evaluator.update(read_panoptic_png(gt_dir / gt_ann["file_name"]), gt_ann["segments_info"],
                         read_panoptic_png(pred_dir / pred_ann["file_name"]),
                         pred_ann["segments_info"], image_id=image_id)
    logger.info("PQ over %d images", evaluator.num_images)
    return evaluator.summarize()


def format_pq_table(results: Mapping) -> str:
    """The All / Things / Stuff rows of a PQ result as a text table (values x100)."""
    lines = [f"{'':10s}| {'PQ':>6s} {'SQ':>6s} {'RQ':>6s} {'N':>5s}", "-" * 38]
    for group in ("All", "Things", "Stuff"):
        r = results[group]
        lines.append(f"{group:10s}| {100 * r['pq']:6.2f} {100 * r['sq']:6.2f} "
                     f"{100 * r['rq']:6.2f} {r['n']:5d}")
    return "\n".join(lines)


def _nonzero_pairs(inter: np.ndarray) -> Iterable[tuple[int, int, int]]:
    g, p = np.nonzero(inter)
    return zip(g.tolist(), p.tolist(), inter[g, p].tolist())


def _segments_by_id(segments: Sequence[Mapping], categories: Mapping[int, object], *, what: str,
                    where: str) -> dict[int, Mapping]:
    by_id: dict[int, Mapping] = {}
    for seg in segments:
        seg_id = int(seg["id"])
        if seg_id == VOID:
            raise ValueError(f"{where}: {what} segments_info lists id 0, which is reserved for "
                             "void")
        if seg_id in by_id:
            raise ValueError(f"{where}: {what} segments_info lists segment id {seg_id} twice")
        if int(seg["category_id"]) not in categories:
            raise ValueError(f"{where}: {what} segment {seg_id} has unknown category_id "
                             f"{seg['category_id']} (not among the ground-truth categories)")
        by_id[seg_id] = seg
    return by_id


def _check_ids_match(png_ids: np.ndarray, info: Mapping[int, Mapping], *, what: str,
                     where: str) -> None:
    in_png = {int(i) for i in png_ids if i != VOID}
    not_listed = sorted(in_png - set(info))
    if not_listed:
        raise ValueError(f"{where}: {what} segment ids {not_listed} are in the PNG but not in "
                         "segments_info")
    not_drawn = sorted(set(info) - in_png)
    if not_drawn:
        raise ValueError(f"{where}: {what} segment ids {not_drawn} are in segments_info but not "
                         "in the PNG")


def _load_panoptic(data: str | os.PathLike | Mapping, folder: str | os.PathLike | None, *,
                   what: str) -> tuple[Mapping, Path]:
    if isinstance(data, Mapping):
        if folder is None:
            raise ValueError(f"the {what} PNG folder is needed when the {what} JSON is a dict")
        return data, Path(folder)
    path = Path(data)
    if not path.is_file():
        raise FileNotFoundError(f"{what} panoptic JSON {path} does not exist")
    with open(path) as f:
        loaded = json.load(f)
    folder = Path(folder) if folder is not None else path.with_suffix("")
    if not folder.is_dir():
        raise FileNotFoundError(f"{what} panoptic PNG folder {folder} does not exist")
    return loaded, folder
