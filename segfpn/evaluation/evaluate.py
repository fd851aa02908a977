"""Run a predictor over a COCO-format image folder and score it: box/mask AP and PQ.

:func:`evaluate` streams: each image is predicted, its detections are appended to a COCO results
JSON (RLE masks), its panoptic prediction is written as a COCO panoptic PNG and scored at once, and
nothing but RLEs and segment lists is kept between images. :func:`evaluate_files` scores
prediction files written earlier (by :func:`evaluate` or any COCO-format tool) without a model.

Files in ``out_dir``::

    coco_instances_results.json   COCO detection results (bbox xywh, score, RLE segmentation)
    panoptic_pred.json            COCO panoptic predictions ("annotations", "categories")
    panoptic_pred/<name>.png      segment maps, id = R + 256 G + 256² B, 0 = void
    metrics.json                  {"num_images", "bbox", "segm", "panoptic", "by_level"}

``by_level=True`` (``segfpn eval --by-level``) adds COCO AP and AR per FPN level
(:mod:`segfpn.evaluation.by_level`: detections by the level their RoI was pooled from, or for
RetinaNet the level of the anchor that produced them; ground truth by the level its box maps to
under the model's rule in network pixels) and writes each detection's ``level`` into the results
file.

A metric the model cannot have is ``null`` in metrics.json, with the reason under
``"not_applicable"``: mask AP (``"segm"``) for a box-only model (Faster R-CNN, RetinaNet), PQ
(``"panoptic"``) for a model without a semantic head when instances are scored too (asked for
alone, it is an error: there would be nothing to score).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

from tqdm import tqdm

from segfpn.evaluation.by_level import coco_ap_by_level, format_by_level_table, level_rule, rule_description
from segfpn.evaluation.coco_ap import coco_ap, format_ap_table, load_coco_gt
from segfpn.evaluation.panoptic_quality import (PanopticQuality, format_pq_table,
                                                pq_compute_files, read_panoptic_png)
from segfpn.atomic_files import write_json
from segfpn.export import instances_to_coco_results, panoptic_to_coco, rgb_to_id, write_panoptic_png
from segfpn.structures import Result

logger = logging.getLogger(__name__)

DETECTIONS_FILE = "coco_instances_results.json"
PANOPTIC_JSON_FILE = "panoptic_pred.json"
PANOPTIC_PNG_DIR = "panoptic_pred"
METRICS_FILE = "metrics.json"


class SupportsPredict(Protocol):
    def predict(self, image_path: str) -> Result: ...


def evaluate(predictor: SupportsPredict, *, images_dir: str | os.PathLike,
             instances_json: str | os.PathLike | None = None,
             panoptic_json: str | os.PathLike | None = None,
             panoptic_dir: str | os.PathLike | None = None,
             out_dir: str | os.PathLike, progress: bool = True, by_level: bool = False) -> dict:
    """Predict every image of a COCO annotation file, write the predictions and score them.

    predictor: anything with ``predict(image_path: str) -> segfpn.structures.Result``.
    images_dir: folder holding the images' ``file_name``.
    instances_json: COCO instances ground truth -> box and mask AP of ``result.instances``.
    panoptic_json / panoptic_dir: COCO panoptic ground truth (JSON, PNG folder; the folder defaults
    to the JSON path without ``.json``) -> PQ of ``result.panoptic`` (a model with a semantic
    head; for one without, PQ is not applicable, and a ValueError when it is all that was asked).
    The images evaluated are those of the given annotation files (their union).
    by_level: also COCO AP and AR per FPN level (needs ``instances_json`` and a predictor with a
    ``config``, whose level rule maps the ground truth: :func:`~segfpn.evaluation.by_level.level_rule`).

    Returns the metrics, also written to ``out_dir/metrics.json``: ``{"num_images",
    "bbox": {AP, AP50, ...}, "segm": {...}, "panoptic": {"All", "Things", "Stuff", "per_class"},
    "by_level": {"rule": {...}, "bbox": {"p2": {AP, AP50, AP75, AR1, AR10, AR100, num_gt,
    num_detections}, ...}, "segm": {...}}, "not_applicable": {"segm": reason, "panoptic": reason}}``
    (keys present for the ground truths given; fractions in [0, 1]; ``"segm"`` is None for a
    box-only model and ``"panoptic"`` for one without a semantic head, each with its reason under
    ``"not_applicable"``).
    """
    if instances_json is None and panoptic_json is None:
        raise ValueError("nothing to evaluate: pass instances_json and/or panoptic_json")
    rule = None
    if by_level:
        if instances_json is None:
            raise ValueError("by_level needs instances_json: AP per level is computed on COCO instances")
        if getattr(predictor, "config", None) is None:
            raise ValueError("by_level needs a predictor with a config (segfpn.load's): its level rule maps the "
                             "ground truth to levels")
        rule = level_rule(predictor.config)
    config = getattr(predictor, "config", None)
    if panoptic_json is not None and instances_json is None and config is not None and config.semantic_head is None:
        raise ValueError(_NO_PANOPTIC_ALONE)  # known before any image is predicted
    images_dir, out_dir = Path(images_dir), Path(out_dir)
    if not images_dir.is_dir():
        raise FileNotFoundError(f"image folder {images_dir} does not exist")
    out_dir.mkdir(parents=True, exist_ok=True)

    coco_gt = load_coco_gt(instances_json) if instances_json is not None else None
    instance_image_ids = set(coco_gt.getImgIds()) if coco_gt is not None else set()
    panoptic_gt, panoptic_dir = (_load_panoptic_gt(panoptic_json, panoptic_dir)
                                 if panoptic_json is not None else (None, None))
    images = _images_to_evaluate(coco_gt.dataset if coco_gt is not None else None, panoptic_gt)

    panoptic_by_image = {}
    pq = None
    if panoptic_gt is not None:
        panoptic_by_image = {ann["image_id"]: ann for ann in panoptic_gt["annotations"]}
        pq = PanopticQuality(panoptic_gt["categories"])
    panoptic_annotations = []
    sizes = {}  # image id -> (image size, network input size), for the ground truth's levels
    not_applicable: dict[str, str] = {}  # metric -> why the model cannot have it

    with _JsonListWriter(out_dir / DETECTIONS_FILE, enabled=coco_gt is not None) as detections:
        for image in tqdm(images, desc="eval", unit="img", disable=not progress):
            path = images_dir / image["file_name"]
            if not path.is_file():
                raise FileNotFoundError(f"image {image['id']}: {path} does not exist "
                                        f"(file_name {image['file_name']!r} under {images_dir})")
            result = predictor.predict(str(path))
            if image is images[0]:
                check_categories(result, coco_gt.dataset.get("categories", []) if coco_gt is not None else [],
                                 panoptic_gt["categories"] if panoptic_gt is not None and result.panoptic else [])
                # What the model gives (its first result tells, whatever the predictor is).
                if result.instances.masks is None:
                    not_applicable["segm"] = NO_MASKS
                if pq is not None and result.panoptic is None:
                    if coco_gt is None:
                        raise ValueError(_NO_PANOPTIC_ALONE)
                    not_applicable["panoptic"] = NO_SEMANTIC_HEAD
                    pq, panoptic_by_image = None, {}
                if pq is not None:
                    (out_dir / PANOPTIC_PNG_DIR).mkdir(exist_ok=True)
            _check_image_size(result, image, path)
            if image["id"] in instance_image_ids:
                entries = instances_to_coco_results(result.instances, image["id"])
                if by_level:
                    sizes[image["id"]] = (tuple(result.image_size), tuple(result.input_size))
                    for entry, level in zip(entries, result.instances.levels.tolist()):
                        entry["level"] = int(level)
                for entry in entries:
                    detections.write(entry)
            gt_ann = panoptic_by_image.get(image["id"])
            if gt_ann is not None:
                if result.panoptic is None:
                    raise ValueError(
                        f"panoptic quality was asked for (panoptic_json given) but the predictor "
                        f"returned no panoptic segmentation for {path}: the model has no semantic "
                        "head. Use a Panoptic FPN checkpoint, or leave out panoptic_json.")
                rgb, annotation = panoptic_to_coco(result.panoptic, image["id"],
                                                   gt_ann["file_name"])
                write_panoptic_png(out_dir / PANOPTIC_PNG_DIR / gt_ann["file_name"], rgb)
                panoptic_annotations.append(annotation)
                pq.update(read_panoptic_png(panoptic_dir / gt_ann["file_name"]),
                          gt_ann["segments_info"], rgb_to_id(rgb), annotation["segments_info"],
                          image_id=image["id"])

    metrics: dict[str, Any] = {"num_images": len(images)}
    if coco_gt is not None:
        for iou_type in ("bbox", "segm"):
            metrics[iou_type] = (None if iou_type in not_applicable
                                 else coco_ap(coco_gt, out_dir / DETECTIONS_FILE, iou_type=iou_type))
    if by_level:
        results = _read_json(out_dir / DETECTIONS_FILE, what="detection results")
        with_masks = "segm" not in not_applicable and bool(results) and all("segmentation" in r for r in results)
        metrics["by_level"] = {"rule": {**rule_description(rule), "detection_level": _detection_level(predictor)}}
        for iou_type in ("bbox", "segm") if with_masks else ("bbox",):
            metrics["by_level"][iou_type] = coco_ap_by_level(coco_gt, results, sizes=sizes, rule=rule,
                                                             iou_type=iou_type)
    if pq is not None:
        write_json(out_dir / PANOPTIC_JSON_FILE, {"annotations": panoptic_annotations,
                                                   "categories": panoptic_gt["categories"]})
        metrics["panoptic"] = pq.summarize()
    elif "panoptic" in not_applicable:
        metrics["panoptic"] = None
    not_applicable = {k: v for k, v in not_applicable.items() if k in metrics}
    if not_applicable:
        metrics["not_applicable"] = not_applicable
    write_json(out_dir / METRICS_FILE, metrics, indent=1)
    logger.info("evaluated %d images; predictions and %s in %s", len(images), METRICS_FILE, out_dir)
    return metrics


def evaluate_files(*, instances_json: str | os.PathLike | None = None,
                   detections: str | os.PathLike | None = None,
                   panoptic_json: str | os.PathLike | None = None,
                   panoptic_dir: str | os.PathLike | None = None,
                   pred_panoptic_json: str | os.PathLike | None = None,
                   pred_panoptic_dir: str | os.PathLike | None = None,
                   predictions_dir: str | os.PathLike | None = None,
                   out_dir: str | os.PathLike | None = None, progress: bool = True) -> dict:
    """Score prediction files without a model; same metrics as :func:`evaluate`.

    detections: COCO results JSON scored against ``instances_json`` (mask AP too when every
    result has a ``segmentation``). pred_panoptic_json / pred_panoptic_dir: COCO panoptic
    predictions scored against ``panoptic_json`` / ``panoptic_dir`` (PNG folders default to the
    JSON path without ``.json``). predictions_dir: a folder written by :func:`evaluate`; supplies
    the prediction paths not given. out_dir: where to write ``metrics.json`` (optional).
    """
    if predictions_dir is not None:
        predictions_dir = Path(predictions_dir)
        if not predictions_dir.is_dir():
            raise FileNotFoundError(f"predictions folder {predictions_dir} does not exist")
        if instances_json is not None and detections is None:
            detections = predictions_dir / DETECTIONS_FILE
        if panoptic_json is not None and pred_panoptic_json is None:
            pred_panoptic_json = predictions_dir / PANOPTIC_JSON_FILE
    if instances_json is None and panoptic_json is None:
        raise ValueError("nothing to evaluate: pass instances_json and/or panoptic_json")
    if instances_json is not None and detections is None:
        raise ValueError("instances_json given without detections to score (pass detections or "
                         "predictions_dir)")
    if panoptic_json is not None and pred_panoptic_json is None:
        raise ValueError("panoptic_json given without a panoptic prediction to score (pass "
                         "pred_panoptic_json or predictions_dir)")

    metrics: dict[str, Any] = {}
    if instances_json is not None:
        coco_gt = load_coco_gt(instances_json)
        metrics["num_images"] = len(coco_gt.getImgIds())
        results = _read_json(detections, what="detection results")
        without = sum("segmentation" not in r for r in results) if isinstance(results, list) else 0
        metrics["bbox"] = coco_ap(coco_gt, results, iou_type="bbox")
        if without:
            logger.info("%s has results without 'segmentation': box AP only", detections)
            metrics["segm"] = None
            metrics.setdefault("not_applicable", {})["segm"] = (
                f"{without} of the {len(results)} detection results have no 'segmentation' (a box-only model's "
                "results): mask AP needs masks")
        else:
            metrics["segm"] = coco_ap(coco_gt, results, iou_type="segm")
    if panoptic_json is not None:
        gt, gt_dir = _load_panoptic_gt(panoptic_json, panoptic_dir)
        metrics.setdefault("num_images", len(gt["annotations"]))
        metrics["panoptic"] = pq_compute_files(gt, pred_panoptic_json, gt_dir=gt_dir,
                                               pred_dir=pred_panoptic_dir, progress=progress)
    if out_dir is not None:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        write_json(Path(out_dir) / METRICS_FILE, metrics, indent=1)
    return metrics


def format_metrics(metrics: Mapping) -> str:
    """The metrics of :func:`evaluate` as text tables (values x100); a metric that does not apply
    to the model is named with the reason."""
    parts = []
    reasons = metrics.get("not_applicable", {})
    ap = {t: metrics[t] for t in ("bbox", "segm") if t in metrics}
    if ap:
        parts.append(format_ap_table(ap, reasons=reasons))
    if metrics.get("panoptic") is not None:
        parts.append(format_pq_table(metrics["panoptic"]))
    elif "panoptic" in metrics:
        parts.append(f"PQ: not applicable: {reasons.get('panoptic', 'no panoptic segmentation')}")
    if "by_level" in metrics:
        rule = metrics["by_level"].get("rule", {})
        detections = rule.get("detection_level", "the level their RoI was pooled from")
        parts.append(f"by FPN level (detections: {detections}; ground truth: "
                     f"k = floor({rule.get('canonical_level')} + log2(sqrt(wh) / {rule.get('canonical_size'):g})) "
                     f"in network pixels)\n" + format_by_level_table(metrics["by_level"]))
    return "\n\n".join(parts)


#: Why a model gives no mask AP, and no PQ (metrics.json's "not_applicable").
NO_MASKS = "the model predicts boxes only (Faster R-CNN, RetinaNet): there are no masks to score"
NO_SEMANTIC_HEAD = "the model has no semantic head (Panoptic FPN has one): there is no panoptic segmentation to score"
_NO_PANOPTIC_ALONE = (f"panoptic quality was asked for alone, but {NO_SEMANTIC_HEAD}. Use a Panoptic FPN "
                      "checkpoint, or give instances ground truth for box (and mask) AP")


def _detection_level(predictor) -> str:
    """What a detection's level is for ``predictor``'s model, in words."""
    config = getattr(predictor, "config", None)
    if config is not None and config.detector == "retinanet":
        return "the level of the anchor that produced them"
    return "the level their RoI was pooled from"


def register_cli(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``segfpn eval`` to a CLI's subparsers; the handler is ``args.func(args) -> int``."""
    parser = subparsers.add_parser(
        "eval", help="COCO box/mask AP and panoptic quality of a model or of prediction files",
        description="Run a model over a COCO image folder and score it (--weights), or score "
                    "prediction files written earlier (--predictions-dir / --detections / "
                    "--pred-panoptic).")
    gt = parser.add_argument_group("ground truth")
    gt.add_argument("--instances", metavar="ANN.json", help="COCO instances annotations (AP)")
    gt.add_argument("--panoptic", metavar="ANN.json", help="COCO panoptic annotations (PQ)")
    gt.add_argument("--panoptic-dir", metavar="PNGS",
                    help="ground-truth panoptic PNG folder (default: --panoptic without .json)")
    model = parser.add_argument_group("with a model")
    model.add_argument("--weights", metavar="W", help="checkpoint for segfpn.load")
    model.add_argument("--images", metavar="DIR", help="folder with the annotated images")
    model.add_argument("--device", metavar="D",
                       help="torch device, e.g. cpu or cuda (default: CUDA when available)")
    model.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"],
                       help="fp32 (default, the reference outputs), bf16 (CPU or GPU) or fp16 (GPU): "
                            "to measure what the faster modes cost in accuracy")
    files = parser.add_argument_group("without a model")
    files.add_argument("--predictions-dir", metavar="DIR",
                       help=f"folder with {DETECTIONS_FILE} / {PANOPTIC_JSON_FILE} + "
                            f"{PANOPTIC_PNG_DIR}/, as written by a model run")
    files.add_argument("--detections", metavar="RES.json", help="COCO detection results JSON")
    files.add_argument("--pred-panoptic", metavar="PRED.json", help="COCO panoptic predictions")
    files.add_argument("--pred-panoptic-dir", metavar="PNGS",
                       help="predicted panoptic PNGs (default: --pred-panoptic without .json)")
    model.add_argument("--by-level", action="store_true",
                       help="also COCO AP and AR per FPN level: detections by the level their RoI was pooled "
                            "from, ground truth by the level its box maps to under the model's rule "
                            "(needs --instances)")
    parser.add_argument("--out", metavar="OUT",
                        help="output folder (required with --weights; metrics.json otherwise)")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    parser.set_defaults(func=run_eval_command)
    return parser


def run_eval_command(args: argparse.Namespace) -> int:
    """``segfpn eval``: evaluate, print the metrics tables, return the exit status."""
    from_files = args.predictions_dir or args.detections or args.pred_panoptic
    if not args.instances and not args.panoptic:
        raise SystemExit("segfpn eval: give the ground truth with --instances and/or --panoptic")
    if args.weights and from_files:
        raise SystemExit("segfpn eval: --weights runs a model; --predictions-dir, --detections "
                         "and --pred-panoptic score existing files. Use one or the other.")
    if args.by_level and not args.weights:
        return _usage_error("--by-level runs the model (--weights, --images, --out): prediction files do not "
                            "say which network input size each image had")
    if args.by_level and not args.instances:
        return _usage_error("--by-level needs --instances ANN.json (AP per level is computed on COCO instances)")
    if args.weights:
        if not args.images or not args.out:
            raise SystemExit("segfpn eval: --weights needs --images DIR and --out OUT")
        import segfpn  # the model stack loads only when a model is evaluated

        predictor = segfpn.load(args.weights, device=args.device, precision=args.precision)
        if args.panoptic and not args.instances and getattr(predictor, "config", None) is not None \
                and predictor.config.semantic_head is None:
            return _usage_error(f"--panoptic: {_NO_PANOPTIC_ALONE}")
        metrics = evaluate(predictor, images_dir=args.images, instances_json=args.instances,
                           panoptic_json=args.panoptic, panoptic_dir=args.panoptic_dir,
                           out_dir=args.out, progress=not args.no_progress, by_level=args.by_level)
    elif from_files:
        metrics = evaluate_files(instances_json=args.instances, detections=args.detections,
                                 panoptic_json=args.panoptic, panoptic_dir=args.panoptic_dir,
                                 pred_panoptic_json=args.pred_panoptic,
                                 pred_panoptic_dir=args.pred_panoptic_dir,
                                 predictions_dir=args.predictions_dir, out_dir=args.out,
                                 progress=not args.no_progress)
    else:
        raise SystemExit("segfpn eval: give --weights (with --images, --out) to run a model, or "
                         "--predictions-dir / --detections / --pred-panoptic to score files")
    print(format_metrics(metrics))
    if args.out:
        print(f"\nmetrics written to {Path(args.out) / METRICS_FILE}")
    return 0


def _usage_error(message: str) -> int:
    """A command-line mistake: one ``error:`` line on stderr, exit status 2."""
    print(f"error: segfpn eval: {message}", file=sys.stderr)
    return 2


class _JsonListWriter:
    """Writes a JSON list one item at a time to a temporary file, moved in place on success."""

    def __init__(self, path: Path, *, enabled: bool = True):
        self.path, self.enabled = path, enabled
        self._file = None
        self._tmp = path.with_name(f".{path.name}.tmp")
        self._count = 0

    def __enter__(self) -> "_JsonListWriter":
        if self.enabled:
            self._file = open(self._tmp, "w")
            self._file.write("[")
        return self

    def write(self, item: Mapping) -> None:
        self._file.write(("," if self._count else "") + "\n" + json.dumps(item))
        self._count += 1

    def __exit__(self, exc_type, exc, tb) -> None:
        if self._file is None:
            return
        if exc_type is None:
            self._file.write("\n]\n")
            self._file.close()
            os.replace(self._tmp, self.path)
        else:
            self._file.close()
            self._tmp.unlink(missing_ok=True)


class CategoryMismatch(ValueError):
    """The ground truth's categories are none of the model's: every score would be 0."""


def check_categories(result: Result, instance_categories: list[dict], panoptic_categories: list[dict]) -> None:
    """Compare the ground truth's categories with the model's (from one of its results): a
    category is the model's when the model has its id under the same name.

    None in common: :class:`CategoryMismatch`, since every AP and PQ would be 0 (a model of other
    classes, or ground truth in another label space; the synthetic set's circle has COCO's person
    id 1). Some ground-truth categories the model lacks: a warning naming them (they score 0).
    """
    things = dict(zip((int(i) for i in result.instances.category_ids), result.instances.class_names))
    stuff = {}
    if result.semantic is not None:
        stuff = {int(i): n for i, n in zip(result.semantic.category_ids, result.semantic.class_names) if i != 0}
    for kind, categories, model in (("instances", instance_categories, things),
                                    ("panoptic", panoptic_categories, {**things, **stuff})):
        if not categories:
            continue
        missing = [c for c in categories
                   if str(model.get(int(c["id"]), "")).lower() != str(c.get("name", "")).lower()]
        if not missing:
            continue
        described = _some(f"{c.get('name')} (id {c['id']}"
                          + (f", the model's {model[int(c['id'])]!r})" if int(c["id"]) in model else ")")
                          for c in missing)
        if len(missing) == len(categories):
            raise CategoryMismatch(
                f"none of the {kind} ground truth's categories is the model's (same id, same name): "
                f"{described}. Every score would be 0: evaluate a model of these categories (the bundled "
                "synthetic model for segfpn's synthetic sets, a COCO model for COCO).")
        logger.warning("%d of the %s ground truth's %d categories are not the model's and will score 0: %s",
                       len(missing), kind, len(categories), described)


def _some(names, limit: int = 8) -> str:
    names = list(names)
    return ", ".join(names[:limit]) + (f", ... ({len(names) - limit} more)" if len(names) > limit else "")


def _images_to_evaluate(instances_gt: Mapping | None, panoptic_gt: Mapping | None) -> list[dict]:
    """Image entries (``id``, ``file_name``, ...) of the instances and panoptic files, by id."""
    images: dict[int, dict] = {}
    for data in (instances_gt, panoptic_gt):
        for image in (data or {}).get("images", []):
            images.setdefault(image["id"], image)
    if panoptic_gt is not None:
        missing = sorted({a["image_id"] for a in panoptic_gt["annotations"]} - set(images))
        if missing:
            raise ValueError(f"panoptic annotations refer to image ids {missing[:10]} that no "
                             "'images' entry describes")
    return list(images.values())


def _check_image_size(result: Result, image: Mapping, path: Path) -> None:
    if "height" in image and "width" in image:
        expected = (int(image["height"]), int(image["width"]))
        if tuple(result.image_size) != expected:
            raise ValueError(f"{path}: the predictor saw a {result.image_size[0]}x"
                             f"{result.image_size[1]} image but the annotations say "
                             f"{expected[0]}x{expected[1]} (H x W)")


def _load_panoptic_gt(panoptic_json: str | os.PathLike,
                      panoptic_dir: str | os.PathLike | None) -> tuple[dict, Path]:
    data = _read_json(panoptic_json, what="panoptic ground truth")
    for key in ("annotations", "categories"):
        if key not in data:
            raise ValueError(f"{panoptic_json} has no {key!r} list; is it a COCO panoptic file?")
    folder = Path(panoptic_dir) if panoptic_dir is not None else Path(panoptic_json).with_suffix("")
    if not folder.is_dir():
        raise FileNotFoundError(f"panoptic ground-truth PNG folder {folder} does not exist "
                                "(pass panoptic_dir)")
    return data, folder


def _read_json(path: str | os.PathLike, *, what: str) -> Any:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} file {path} does not exist")
    with open(path) as f:
        return json.load(f)
