"""COCO box and mask AP with pycocotools' COCOeval; its prints go to logging (DEBUG)."""

from __future__ import annotations

import contextlib
import copy
import io
import json
import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

logger = logging.getLogger(__name__)

#: Names of COCOeval's 12 summary numbers, in ``COCOeval.stats`` order.
COCO_METRIC_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl",
                     "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")
IOU_TYPES = ("bbox", "segm")


def load_coco_gt(gt: str | os.PathLike | Mapping | COCO) -> COCO:
    """A pycocotools COCO object from an annotation file path, a loaded dict or a COCO object."""
    if isinstance(gt, COCO):
        return gt
    if isinstance(gt, Mapping):
        data = copy.deepcopy(dict(gt))
    else:
        path = Path(gt)
        if not path.is_file():
            raise FileNotFoundError(f"COCO annotation file {path} does not exist")
        with open(path) as f:
            data = json.load(f)
    for key in ("images", "annotations", "categories"):
        if key not in data:
            raise ValueError(f"COCO ground truth has no {key!r} list (is it an instances file?)")
    coco = COCO()
    coco.dataset = data
    with _pycocotools_output_to_log():
        coco.createIndex()
    return coco


def coco_ap(gt: str | os.PathLike | Mapping | COCO,
            results: Sequence[Mapping] | str | os.PathLike, *, iou_type: str = "bbox",
            image_ids: Iterable[int] | None = None) -> dict[str, float]:
    """The 12 COCO numbers (:data:`COCO_METRIC_NAMES`) for one ``iou_type`` ("bbox" or "segm").

    gt: instances annotation file, its dict, or a COCO object.
    results: COCO detection results (``image_id``, ``category_id``, ``score``, ``bbox`` [x, y, w, h]
    and for "segm" a compressed RLE ``segmentation``), as a list or a JSON file path.
    image_ids: restrict the evaluation to these images (default: every ground-truth image).

    Values are fractions in [0, 1]; -1 where COCOeval has nothing to average (no ground truth in
    an area range). With no results at all a warning is logged and every number is 0 (or -1).
    """
    if iou_type not in IOU_TYPES:
        raise ValueError(f"iou_type must be one of {IOU_TYPES}, got {iou_type!r}")
    coco_gt = load_coco_gt(gt)
    results = _load_results(results)
    gt_image_ids = set(coco_gt.getImgIds())
    unknown = sorted({r["image_id"] for r in results} - gt_image_ids)
    if unknown:
        raise ValueError(f"results refer to image ids {unknown[:10]} that the ground truth does "
                         f"not have ({len(unknown)} in all)")
    if iou_type == "segm":
        missing = sum("segmentation" not in r for r in results)
        if missing:
            raise ValueError(f"{missing} results have no 'segmentation'; mask AP needs RLE masks")
        # Without a bbox, loadRes takes each detection's area from its mask, as COCO does for segm.
        results = [{k: v for k, v in r.items() if k != "bbox"} for r in results]
    else:
        missing = sum("bbox" not in r for r in results)
        if missing:
            raise ValueError(f"{missing} results have no 'bbox'; box AP needs [x, y, w, h] boxes")
        results = [dict(r) for r in results]  # loadRes writes into the dicts

    if results:
        with _pycocotools_output_to_log():
            coco_dt = coco_gt.loadRes(results)
    else:
        logger.warning("no %s detections to evaluate: every AP/AR is 0 (-1 where there is no "
                       "ground truth)", iou_type)
        coco_dt = COCO()
        coco_dt.dataset = {"images": list(coco_gt.dataset["images"]), "annotations": [],
                           "categories": copy.deepcopy(coco_gt.dataset["categories"])}
        with _pycocotools_output_to_log():
            coco_dt.createIndex()

    evaluator = COCOeval(coco_gt, coco_dt, iouType=iou_type)
    if image_ids is not None:
        evaluator.params.imgIds = sorted(int(i) for i in image_ids)
    with _pycocotools_output_to_log():
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return {name: float(value) for name, value in zip(COCO_METRIC_NAMES, evaluator.stats)}


def coco_box_and_mask_ap(gt: str | os.PathLike | Mapping | COCO,
                         results: Sequence[Mapping] | str | os.PathLike, *,
                         iou_types: Sequence[str] = IOU_TYPES) -> dict[str, dict[str, float]]:
    """``{"bbox": {...}, "segm": {...}}`` from :func:`coco_ap`, ground truth loaded once."""
    coco_gt = load_coco_gt(gt)
    results = _load_results(results)
    return {t: coco_ap(coco_gt, results, iou_type=t) for t in iou_types}


def format_ap_table(metrics: Mapping[str, Mapping[str, float] | None], *,
                    reasons: Mapping[str, str] | None = None) -> str:
    """``{"bbox": {...}, "segm": {...}}`` as a text table (values x100, "-" for -1); a type whose
    metrics are None (mask AP of a box-only model) is a row saying it does not apply, and why
    (``reasons[iou_type]``)."""
    header = f"{'':6s}|" + "".join(f" {name:>6s}" for name in COCO_METRIC_NAMES)
    lines = [header, "-" * len(header)]
    for iou_type, values in metrics.items():
        if values is None:
            reason = (reasons or {}).get(iou_type)
            lines.append(f"{iou_type:6s}| not applicable" + (f": {reason}" if reason else ""))
            continue
        cells = "".join(f" {100 * values[n]:6.2f}" if values[n] >= 0 else f" {'-':>6s}"
                        for n in COCO_METRIC_NAMES)
        lines.append(f"{iou_type:6s}|{cells}")
    return "\n".join(lines)


def _load_results(results: Sequence[Mapping] | str | os.PathLike) -> list[Mapping]:
    if isinstance(results, (str, os.PathLike)):
        path = Path(results)
        if not path.is_file():
            raise FileNotFoundError(f"detection results file {path} does not exist")
        with open(path) as f:
            results = json.load(f)
    if not isinstance(results, (list, tuple)):
        raise ValueError(f"COCO results must be a list of dicts, got {type(results).__name__}")
    return list(results)


@contextlib.contextmanager
def _pycocotools_output_to_log():
    """Capture what pycocotools prints and log it at DEBUG level, line by line."""
    buffer = io.StringIO()
    try:
        with contextlib.redirect_stdout(buffer):
            yield
    finally:
        for line in buffer.getvalue().splitlines():
            if line.strip():
                logger.debug("pycocotools: %s", line)

