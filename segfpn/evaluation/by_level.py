"""Detections and ground truth by pyramid level: the level a ground-truth box maps to, COCO AP and
AR per level (pycocotools), and recall and precision per level on one image.

A detection's level is the one its RoI was pooled from (``Instances.levels``: the mask-head RoI,
i.e. the final box under the model's rule; RetinaNet: its anchor's level). A ground-truth object's
level is the one its box maps to under the same rule (:func:`level_rule`), in network-input
pixels: the box scaled from the image to the resized input the model saw, then
k = floor(k0 + log2(sqrt(wh) / s0)) clamped to the model's levels.

What "AP at level k" means (:func:`coco_ap_by_level`): COCO's own definition of APs / APm / APl
with the area range replaced by the level. Ground truth of other levels is ignored (a detection
matched to it counts neither way); a detection of another level that matches nothing is ignored
too; every detection may match a level-k object, whatever its own level. So AP at p3 asks how well
the objects that belong on p3 are found, and charges p3 with the false positives pooled from p3.
As for the area ranges, COCO's limits of 1, 10 and 100 detections per image and class apply
before the levels: AR1 at p3 is the recall of p3 objects by the best detection of each image and
class, whatever its level. (Where no two levels' boxes overlap, AP, AP50, AP75 and AR100 at p3
equal pycocotools' on the p3 objects and p3 detections alone; tests/evaluation/test_by_level.py.)
It is computed by pycocotools' COCOeval itself, with each annotation's and detection's ``area``
set to its level and one area range per level.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from segfpn.config import ModelConfig, PoolerConfig
from segfpn.evaluation.coco_ap import IOU_TYPES, _load_results, _pycocotools_output_to_log, load_coco_gt
from segfpn.model.poolers import assign_levels
from segfpn.model.postprocess import rescale_boxes
from segfpn.structures import Instances

#: The numbers :func:`coco_ap_by_level` gives per level (COCOeval's, at 100 detections per image
#: unless the name says otherwise; AR1 and AR10 at 1 and 10).
BY_LEVEL_METRIC_NAMES = ("AP", "AP50", "AP75", "AR1", "AR10", "AR100")


def level_rule(config: ModelConfig) -> PoolerConfig:
    """The rule that maps a box (network-input pixels) to a pyramid level for ``config``'s model.

    Two-stage models: their RoI pooler's rule (``config.pooler``). RetinaNet has no RoIs; its
    detections carry the level of their anchor, so a box maps to the level of the anchor size
    nearest to sqrt(wh) on a log scale: level l holds sizes ``anchor_sizes[i] * anchor_scales``
    (i = l - first level), doubling per level, and the boundary between two levels lies halfway
    (in log2) between the largest size of one and the smallest of the next. (RetinaNet itself
    assigns by IoU with every anchor, so for elongated boxes this is an approximation.)
    """
    if config.detector != "retinanet":
        return config.pooler
    head = config.retina_head
    first = int(config.fpn.in_features[0][1:])
    scales = sorted(head.anchor_scales)
    canonical_size = float(head.anchor_sizes[0]) * math.sqrt(scales[0] * scales[-1] / 2)
    return PoolerConfig(canonical_level=first, canonical_size=canonical_size,
                        level_epsilon=0.0, level_log_epsilon=0.0, min_level=first,
                        max_level=first + len(head.anchor_sizes) - 1)


def ground_truth_levels(boxes_xywh: np.ndarray, *, image_size: tuple[int, int], input_size: tuple[int, int],
                        rule: PoolerConfig) -> np.ndarray:
    """int64 [G]: the level of each ground-truth box (float [G, 4] COCO x, y, w, h in pixels of an
    image of ``image_size`` (H, W)) for a model that saw it resized to ``input_size`` (h, w)."""
    boxes = np.asarray(boxes_xywh, dtype=np.float32).reshape(-1, 4)
    xyxy = np.concatenate([boxes[:, :2], boxes[:, :2] + boxes[:, 2:]], axis=1)
    # Image -> network pixels the way detections go the other way (postprocess.rescale_boxes).
    scaled = rescale_boxes(torch.from_numpy(xyxy), tuple(image_size), tuple(input_size))
    return assign_levels(scaled, rule).numpy()


def coco_ap_by_level(gt: str | os.PathLike | Mapping | COCO, results: Sequence[Mapping] | str | os.PathLike, *,
                     sizes: Mapping[int, tuple[tuple[int, int], tuple[int, int]]], rule: PoolerConfig,
                     iou_type: str = "bbox") -> dict[str, dict[str, float]]:
    """COCO AP and AR per pyramid level (see the module's docstring for what they mean).

    gt: COCO instances ground truth (path, dict or COCO object; not modified).
    results: COCO detection results, each with an int ``level`` (the level its RoI was pooled
    from; :func:`segfpn.evaluation.evaluate` writes it with ``by_level=True``).
    sizes: image id -> ((H, W) of the image, (h, w) of the network input it was resized to), for
    every ground-truth image.
    Returns ``{"p2": {"AP", "AP50", "AP75", "AR1", "AR10", "AR100", "num_gt", "num_detections"},
    ...}`` for every level of ``rule`` (fractions in [0, 1], -1 where COCOeval has nothing to
    average, e.g. no ground truth on that level).
    """
    if iou_type not in IOU_TYPES:
        raise ValueError(f"iou_type must be one of {IOU_TYPES}, got {iou_type!r}")
    coco_gt = load_coco_gt(gt)
    results = _load_results(results)
    levels = list(range(rule.min_level, rule.max_level + 1))
    no_level = sum("level" not in r for r in results)
    if no_level:
        raise ValueError(f"{no_level} detection results have no 'level': per-level AP needs the level each "
                         "detection's RoI was pooled from (run the model with by_level=True)")
    unknown = sorted({r["image_id"] for r in results} - set(coco_gt.getImgIds()))
    if unknown:
        raise ValueError(f"results refer to image ids {unknown[:10]} that the ground truth does not have "
                         f"({len(unknown)} in all)")
    wrong = sorted({int(r["level"]) for r in results} - set(levels))
    if wrong:
        raise ValueError(f"detection results on levels {wrong}, outside the rule's p{levels[0]}-p{levels[-1]}")

    data = {key: value for key, value in coco_gt.dataset.items() if key != "annotations"}
    data["annotations"] = annotations = [dict(a) for a in coco_gt.dataset["annotations"]]
    by_image: dict[int, list[dict]] = {}
    for ann in annotations:
        by_image.setdefault(ann["image_id"], []).append(ann)
    missing = sorted(set(coco_gt.getImgIds()) - set(sizes))
    if missing:
        raise ValueError(f"no image and input size for ground-truth images {missing[:10]} ({len(missing)} in all)")
    for image_id, anns in by_image.items():
        image_size, input_size = sizes[image_id]
        gt_levels = ground_truth_levels([a["bbox"] for a in anns], image_size=image_size, input_size=input_size,
                                        rule=rule)
        for ann, level in zip(anns, gt_levels.tolist()):
            ann["area"] = float(level)  # COCOeval's area ranges then select levels
    level_gt = COCO()
    level_gt.dataset = data
    with _pycocotools_output_to_log():
        level_gt.createIndex()

    detections = [dict(r) for r in results]
    if iou_type == "segm":
        for r in detections:  # as coco_ap: the box comes from the mask
            r.pop("bbox", None)
            if "segmentation" not in r:
                raise ValueError("a detection result has no 'segmentation'; mask AP needs RLE masks")
    if detections:
        with _pycocotools_output_to_log():
            level_dt = level_gt.loadRes(detections)
        for ann in level_dt.dataset["annotations"]:  # loadRes keeps the results' order and keys
            ann["area"] = float(ann["level"])
    else:
        level_dt = COCO()
        level_dt.dataset = {"images": list(data["images"]), "annotations": [],
                            "categories": copy.deepcopy(data["categories"])}
        with _pycocotools_output_to_log():
            level_dt.createIndex()

    evaluator = COCOeval(level_gt, level_dt, iouType=iou_type)
    evaluator.params.areaRng = [[level - 0.5, level + 0.5] for level in levels]
    evaluator.params.areaRngLbl = [f"p{level}" for level in levels]
    with _pycocotools_output_to_log():
        evaluator.evaluate()
        evaluator.accumulate()
    out = {}
    for index, level in enumerate(levels):
        numbers = _summary(evaluator, index)
        numbers["num_gt"] = sum(1 for a in annotations if not a.get("iscrowd", 0) and a["area"] == level)
        numbers["num_detections"] = sum(1 for r in results if int(r["level"]) == level)
        out[f"p{level}"] = numbers
    return out


def _summary(evaluator: COCOeval, area_index: int) -> dict[str, float]:
    """:data:`BY_LEVEL_METRIC_NAMES` for one area range, as COCOeval.summarize computes them."""
    params = evaluator.params

    def mean(values: np.ndarray) -> float:
        values = values[values > -1]
        return float(np.mean(values)) if values.size else -1.0

    precision, recall = evaluator.eval["precision"], evaluator.eval["recall"]  # [T, R, K, A, M], [T, K, A, M]
    top = params.maxDets.index(100)
    out = {"AP": mean(precision[:, :, :, area_index, top])}
    for name, threshold in (("AP50", 0.5), ("AP75", 0.75)):
        t = np.where(threshold == params.iouThrs)[0]  # COCOeval's own float comparison
        out[name] = mean(precision[t][:, :, :, area_index, top])
    for max_dets in (1, 10, 100):
        out[f"AR{max_dets}"] = mean(recall[:, :, area_index, params.maxDets.index(max_dets)])
    return out


def format_by_level_table(by_level: Mapping[str, Mapping[str, Mapping[str, float]]]) -> str:
    """``{"bbox": {"p2": {...}, ...}, "segm": {...}}`` as a text table (values x100, "-" for -1)."""
    header = f"{'':6s}{'level':>6s} |{'GT':>7s}{'dets':>7s} |" + "".join(f" {n:>6s}" for n in BY_LEVEL_METRIC_NAMES)
    lines = [header, "-" * len(header)]
    for iou_type, per_level in by_level.items():
        if not isinstance(per_level, Mapping) or iou_type not in IOU_TYPES:
            continue
        for level, values in per_level.items():
            cells = "".join(f" {100 * values[n]:6.2f}" if values[n] >= 0 else f" {'-':>6s}"
                            for n in BY_LEVEL_METRIC_NAMES)
            lines.append(f"{iou_type:6s}{level:>6s} |{values['num_gt']:7d}{values['num_detections']:7d} |{cells}")
    return "\n".join(lines)


def rule_description(rule: PoolerConfig) -> dict:
    """The rule as plain values for metrics.json."""
    return {"formula": "k = floor(k0 + log2(sqrt(w*h) / s0 + log_eps) + eps), clamped to [min_level, max_level], "
                       "w, h in network-input pixels",
            **{key: value for key, value in dataclasses.asdict(rule).items()
               if key in ("canonical_level", "canonical_size", "level_epsilon", "level_log_epsilon",
                          "min_level", "max_level")}}


# ---------------------------------------------------------------------------------------------
# One image: recall and precision per level


@dataclass
class LevelMetrics:
    """Recall and precision per pyramid level of one image's detections against its ground truth.

    Detections scoring at least ``score_threshold`` are matched to ground truth of their class,
    best score first, each to the unmatched object of highest box IoU >= ``iou_threshold`` (COCO's
    greedy matching; a detection on a crowd region counts neither way).

    levels: int64 [L], e.g. 2..5. num_ground_truth / found: int64 [L]: non-crowd objects whose box
    maps to each level, and how many of them a detection (of any level) matched; recall = found /
    num_ground_truth (NaN without objects). num_detections / correct: int64 [L]: detections
    pooled from each level, and how many of them matched an object (of any level); precision =
    correct / num_detections (NaN without detections). matches: int64 [L, L], row = detection
    level, column = object level: where the matched pairs sit (off the diagonal: an object found
    from another level than its box maps to).
    gt_boxes: float32 [G, 4] xyxy image pixels; gt_category_ids int64 [G]; gt_levels int64 [G];
    gt_crowd bool [G]; gt_match int64 [G]: the matched detection (index into the instances), -1.
    detection_match int64 [N]: the matched object (index into gt_*), -1 (also below the threshold).
    """

    levels: np.ndarray
    num_ground_truth: np.ndarray
    found: np.ndarray
    recall: np.ndarray
    num_detections: np.ndarray
    correct: np.ndarray
    precision: np.ndarray
    matches: np.ndarray
    gt_boxes: np.ndarray
    gt_category_ids: np.ndarray
    gt_levels: np.ndarray
    gt_crowd: np.ndarray
    gt_match: np.ndarray
    detection_match: np.ndarray
    iou_threshold: float
    score_threshold: float

    def table(self) -> list[dict]:
        """One row per level: ``{"level", "objects", "found", "recall", "detections", "correct",
        "precision"}`` (None for NaN), for a table view."""
        rows = []
        for k, level in enumerate(self.levels.tolist()):
            rows.append({"level": f"p{level}", "objects": int(self.num_ground_truth[k]), "found": int(self.found[k]),
                         "recall": _or_none(self.recall[k]), "detections": int(self.num_detections[k]),
                         "correct": int(self.correct[k]), "precision": _or_none(self.precision[k])})
        return rows


def _or_none(value: float) -> float | None:
    return None if np.isnan(value) else float(value)


def image_ground_truth(gt: str | os.PathLike | Mapping | COCO, *, image: int | str | None = None,
                       image_size: tuple[int, int] | None = None) -> tuple[dict, list[dict]]:
    """(image entry, its annotations) of one image of a COCO instances file.

    image: its id, or its ``file_name`` (or the file name's last part); None when the file holds
    one image. ``image_size`` (H, W), when given, must be the entry's ``height`` x ``width``.
    """
    coco = load_coco_gt(gt)
    images = coco.dataset["images"]
    if image is None:
        if len(images) != 1:
            raise ValueError(f"the ground truth holds {len(images)} images: say which one (image id or file name)")
        entry = images[0]
    elif isinstance(image, (int, np.integer)) and not isinstance(image, bool):
        entry = coco.imgs.get(int(image))
        if entry is None:
            raise ValueError(f"the ground truth has no image with id {image}")
    else:
        name = os.path.basename(str(image))
        found = [e for e in images
                 if e.get("file_name") == str(image) or os.path.basename(e.get("file_name", "")) == name]
        if len(found) != 1:
            known = ", ".join(str(e.get("file_name")) for e in images[:8])
            raise ValueError(f"{'no' if not found else len(found)} ground-truth images named {name!r}; "
                             f"the file names are {known}{', ...' if len(images) > 8 else ''}")
        entry = found[0]
    if image_size is not None and "height" in entry and "width" in entry:
        if (int(entry["height"]), int(entry["width"])) != tuple(int(v) for v in image_size):
            raise ValueError(f"the ground truth of image {entry['id']} is for a {entry['width']}x{entry['height']} "
                             f"image, the detections are for a {image_size[1]}x{image_size[0]} one")
    return entry, coco.imgToAnns.get(entry["id"], [])


def level_recall_precision(instances: Instances, annotations: Sequence[Mapping], *, image_size: tuple[int, int],
                           input_size: tuple[int, int], rule: PoolerConfig, iou_threshold: float = 0.5,
                           score_threshold: float = 0.5) -> LevelMetrics:
    """:class:`LevelMetrics` of one image's ``instances`` (image pixels, with their levels)
    against its COCO ``annotations`` (``bbox`` x, y, w, h, ``category_id``, ``iscrowd``), for a
    model that saw the image of ``image_size`` (H, W) resized to ``input_size`` (h, w)."""
    if not 0.0 < iou_threshold <= 1.0:
        raise ValueError(f"iou_threshold must be in (0, 1], got {iou_threshold}")
    levels = np.arange(rule.min_level, rule.max_level + 1)
    xywh = np.asarray([a["bbox"] for a in annotations], dtype=np.float64).reshape(-1, 4)
    gt_cats = np.asarray([int(a["category_id"]) for a in annotations], dtype=np.int64)
    crowd = np.asarray([bool(a.get("iscrowd", 0)) for a in annotations], dtype=bool)
    gt_levels = ground_truth_levels(xywh, image_size=image_size, input_size=input_size, rule=rule)

    n = len(instances)
    det_cats = np.asarray(instances.category_ids, dtype=np.int64)[instances.labels] if n else np.zeros(0, np.int64)
    boxes = np.asarray(instances.boxes, dtype=np.float64).reshape(-1, 4)
    det_xywh = np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], axis=1)
    iou = (np.asarray(mask_utils.iou(det_xywh.tolist(), xywh.tolist(), crowd.astype(np.uint8).tolist()))
           if n and len(xywh) else np.zeros((n, len(xywh))))
    iou = np.asarray(iou, dtype=np.float64).reshape(n, len(xywh))
    candidates = np.flatnonzero(np.asarray(instances.scores) >= score_threshold)
    order = candidates[np.argsort(-np.asarray(instances.scores)[candidates], kind="stable")]
    gt_match = np.full(len(xywh), -1, dtype=np.int64)
    det_match = np.full(n, -1, dtype=np.int64)
    ignored = np.zeros(n, dtype=bool)
    for d in order:
        same = (gt_cats == det_cats[d]) & ~crowd & (gt_match < 0) & (iou[d] >= iou_threshold)
        if same.any():
            g = int(np.flatnonzero(same)[np.argmax(iou[d][same])])
            gt_match[g], det_match[d] = d, g
        elif ((gt_cats == det_cats[d]) & crowd & (iou[d] >= iou_threshold)).any():
            ignored[d] = True

    def per_level(values: np.ndarray, where: np.ndarray) -> np.ndarray:
        return np.asarray([int(np.count_nonzero(where & (values == level))) for level in levels], dtype=np.int64)

    counted = np.zeros(n, dtype=bool)
    counted[candidates] = True
    counted &= ~ignored
    det_levels = np.asarray(instances.levels, dtype=np.int64)
    num_gt = per_level(gt_levels, ~crowd)
    found = per_level(gt_levels, ~crowd & (gt_match >= 0))
    num_det = per_level(det_levels, counted)
    correct = per_level(det_levels, counted & (det_match >= 0))
    matches = np.zeros((len(levels), len(levels)), dtype=np.int64)
    for d in np.flatnonzero(det_match >= 0):
        row, col = det_levels[d] - levels[0], gt_levels[det_match[d]] - levels[0]
        if 0 <= row < len(levels) and 0 <= col < len(levels):
            matches[row, col] += 1
    with np.errstate(invalid="ignore", divide="ignore"):
        recall = np.where(num_gt > 0, found / np.maximum(num_gt, 1), np.nan)
        precision = np.where(num_det > 0, correct / np.maximum(num_det, 1), np.nan)
    gt_xyxy = np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], axis=1).astype(np.float32)
    return LevelMetrics(levels=levels.astype(np.int64), num_ground_truth=num_gt, found=found, recall=recall,
                        num_detections=num_det, correct=correct, precision=precision, matches=matches,
                        gt_boxes=gt_xyxy, gt_category_ids=gt_cats, gt_levels=gt_levels.astype(np.int64),
                        gt_crowd=crowd, gt_match=gt_match, detection_match=det_match,
                        iou_threshold=float(iou_threshold), score_threshold=float(score_threshold))
