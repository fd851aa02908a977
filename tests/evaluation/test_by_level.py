"""COCO AP and AR per FPN level, and recall / precision per level on one image
(segfpn.evaluation.by_level), against pycocotools itself."""

import contextlib
import copy
import io
import json
import math
from pathlib import Path

import numpy as np
import pytest
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from segfpn.config import PoolerConfig, torchvision_retinanet_v1
from segfpn.evaluation.by_level import (BY_LEVEL_METRIC_NAMES, coco_ap_by_level, format_by_level_table,
                                        ground_truth_levels, image_ground_truth, level_recall_precision,
                                        level_rule)
from segfpn.structures import Instances

RULE = PoolerConfig()  # k = floor(4 + log2(sqrt(wh) / 224) + 1e-6), p2..p5
#: sqrt(wh) where the levels change under RULE.
BOUNDARIES = (112.0, 224.0, 448.0)
#: The same levels as pycocotools area ranges, for an image the network sees at its own size.
AREA_RANGES = [[0.0, 112.0**2], [112.0**2, 224.0**2], [224.0**2, 448.0**2], [448.0**2, 1e10]]
SIDE = 1000
#: pycocotools' summary numbers (COCOeval.stats indices) that by_level reports.
STATS = {"AP": 0, "AP50": 1, "AP75": 2, "AR1": 6, "AR10": 7, "AR100": 8}


def level_of(w, h) -> int:
    return int(np.clip(math.floor(4 + math.log2(math.sqrt(w * h) / 224) + 1e-6), 2, 5))


def random_box(rng, lo=16.0, hi=900.0):
    """x, y, w, h inside a SIDE x SIDE image, sqrt(wh) log-uniform in [lo, hi], never within 1 % of
    a level boundary (there float32 and float64 may disagree)."""
    while True:
        size = math.exp(rng.uniform(math.log(lo), math.log(hi)))
        aspect = rng.uniform(0.5, 2.0)
        w, h = min(size * math.sqrt(aspect), SIDE - 1.0), min(size / math.sqrt(aspect), SIDE - 1.0)
        if all(abs(math.sqrt(w * h) / b - 1) > 0.01 for b in BOUNDARIES):
            return [float(rng.uniform(0, SIDE - w)), float(rng.uniform(0, SIDE - h)), w, h]


def iou_xywh(a, b) -> float:
    return float(mask_utils.iou([a], [b], [0])[0][0])


def make_case(seed: int, *, separate_levels: bool = False):
    """Ground truth and detections on 6 SIDE x SIDE images, 3 categories. Detections: jittered
    copies of most objects (some of another class), and false positives. With
    ``separate_levels`` nothing overlaps across levels: every jittered copy stays on its object's
    level and no box overlaps a box of another level."""
    rng = np.random.default_rng(seed)
    images = [{"id": i + 1, "file_name": f"{i + 1}.png", "height": SIDE, "width": SIDE} for i in range(6)]
    categories = [{"id": c, "name": f"c{c}"} for c in (1, 2, 3)]
    annotations, results = [], []

    def clashes(box, level, boxes):
        return separate_levels and any(level_of(*b[2:]) != level and iou_xywh(box, b) > 0 for b in boxes)

    for image in images:
        boxes = []
        for _ in range(rng.integers(2, 9)):
            box = random_box(rng)
            if clashes(box, level_of(*box[2:]), boxes):
                continue
            boxes.append(box)
            annotations.append({"id": len(annotations) + 1, "image_id": image["id"], "bbox": box,
                                "area": box[2] * box[3], "category_id": int(rng.integers(1, 4)),
                                "iscrowd": int(rng.random() < 0.05)})
        for ann in [a for a in annotations if a["image_id"] == image["id"]]:
            if rng.random() < 0.2:
                continue
            x, y, w, h = ann["bbox"]
            for _ in range(100):
                jitter = rng.normal(0, 0.08, size=4)
                det = [x + jitter[0] * w, y + jitter[1] * h, w * math.exp(jitter[2]), h * math.exp(jitter[3])]
                near = all(abs(math.sqrt(det[2] * det[3]) / b - 1) > 0.01 for b in BOUNDARIES)
                if near and (not separate_levels or level_of(*det[2:]) == level_of(w, h)) \
                        and not clashes(det, level_of(*det[2:]), boxes):
                    break
            else:
                continue
            category = ann["category_id"] if rng.random() < 0.85 else int(rng.integers(1, 4))
            results.append({"image_id": image["id"], "category_id": category, "bbox": det,
                            "score": float(rng.uniform(0.05, 1.0))})
        for _ in range(rng.integers(0, 4)):
            det = random_box(rng)
            if all(iou_xywh(det, b) < 0.3 for b in boxes) and not clashes(det, level_of(*det[2:]), boxes):
                results.append({"image_id": image["id"], "category_id": int(rng.integers(1, 4)), "bbox": det,
                                "score": float(rng.uniform(0.05, 1.0))})
    for r in results:
        r["level"] = level_of(*r["bbox"][2:])
    gt = {"images": images, "annotations": annotations, "categories": categories}
    sizes = {image["id"]: ((SIDE, SIDE), (SIDE, SIDE)) for image in images}
    return gt, results, sizes


def pycocotools_stats(gt: dict, results: list, *, area_range=None, iou_type: str = "bbox") -> np.ndarray:
    """COCOeval.stats, straight from pycocotools: with ``area_range`` every one of its four area
    ranges is that range, so stats 0-2 and 6-8 are AP, AP50, AP75, AR1, AR10, AR100 in it."""
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = copy.deepcopy(gt)
        coco_gt.createIndex()
        clean = [{k: v for k, v in r.items() if k != "level"} for r in copy.deepcopy(results)]
        coco_dt = coco_gt.loadRes(clean)
        evaluator = COCOeval(coco_gt, coco_dt, iouType=iou_type)
        if area_range is not None:
            evaluator.params.areaRng = [list(area_range)] * 4
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return evaluator.stats


@pytest.mark.parametrize("seed", range(4))
def test_levels_are_cocos_area_ranges_when_the_network_sees_the_image_as_is(seed):
    # Network input = image: the level of a box is then exactly an area range, and AP at a level
    # is pycocotools' own AP over that area range (its APs / APm / APl semantics).
    gt, results, sizes = make_case(seed)
    assert len({r["level"] for r in results}) == 4
    ours = coco_ap_by_level(gt, results, sizes=sizes, rule=RULE)
    assert list(ours) == ["p2", "p3", "p4", "p5"]
    for level, area_range in zip(ours, AREA_RANGES):
        expected = pycocotools_stats(gt, results, area_range=area_range)
        for name, index in STATS.items():
            assert ours[level][name] == pytest.approx(expected[index], abs=1e-12), (seed, level, name)
        assert ours[level]["num_gt"] == sum(1 for a in gt["annotations"]
                                            if not a["iscrowd"] and level_of(*a["bbox"][2:]) == int(level[1]))
        assert ours[level]["num_detections"] == sum(1 for r in results if r["level"] == int(level[1]))


@pytest.mark.parametrize("seed", range(3))
def test_per_level_ap_equals_pycocotools_on_the_hand_split_subsets(seed):
    # With nothing overlapping across levels, AP at level k is plain pycocotools AP on the level-k
    # objects and the level-k detections alone. (Not AR1 and AR10: COCO keeps the best 1 or 10
    # detections of an image and class before it looks at area ranges, so there the best one may
    # be of another level, as for APs / APm / APl.)
    gt, results, sizes = make_case(100 + seed, separate_levels=True)
    ours = coco_ap_by_level(gt, results, sizes=sizes, rule=RULE)
    compared = 0
    for level in (2, 3, 4, 5):
        subset = {**gt, "annotations": [a for a in gt["annotations"] if level_of(*a["bbox"][2:]) == level]}
        subset_results = [r for r in results if r["level"] == level]
        if not subset_results:
            continue
        compared += 1
        expected = pycocotools_stats(subset, subset_results)
        for name in ("AP", "AP50", "AP75", "AR100"):
            index = STATS[name]
            assert ours[f"p{level}"][name] == pytest.approx(expected[index], abs=1e-12), (seed, level, name)
    assert compared >= 3


def rectangle_rle(box, size=SIDE):
    x, y, w, h = box
    mask = np.zeros((size, size), dtype=np.uint8, order="F")
    mask[int(round(y)):int(round(y + h)), int(round(x)):int(round(x + w))] = 1
    rle = mask_utils.encode(mask)
    return {"size": rle["size"], "counts": rle["counts"].decode("ascii")}


def test_mask_ap_per_level_on_the_hand_split_subsets():
    gt, results, sizes = make_case(7, separate_levels=True)
    for ann in gt["annotations"]:
        ann["segmentation"] = rectangle_rle(ann["bbox"])
    for r in results:
        r["segmentation"] = rectangle_rle(r["bbox"])
    ours = coco_ap_by_level(gt, results, sizes=sizes, rule=RULE, iou_type="segm")
    for level in (2, 3, 4, 5):
        subset = {**gt, "annotations": [a for a in gt["annotations"] if level_of(*a["bbox"][2:]) == level]}
        subset_results = [r for r in results if r["level"] == level]
        if subset_results:
            expected = pycocotools_stats(subset, subset_results, iou_type="segm")
            assert ours[f"p{level}"]["AP"] == pytest.approx(expected[0], abs=1e-12)


def test_ground_truth_levels_are_taken_at_the_network_input_size():
    # A 600x400 image the network saw at 1200x800: every box is twice as large for the rule.
    boxes = [[0, 0, 55, 56], [0, 0, 56, 56], [0, 0, 111, 112], [0, 0, 112, 112], [10, 10, 224, 224]]
    levels = ground_truth_levels(boxes, image_size=(400, 600), input_size=(800, 1200), rule=RULE)
    assert levels.tolist() == [2, 3, 3, 4, 5]
    unscaled = ground_truth_levels(boxes, image_size=(400, 600), input_size=(400, 600), rule=RULE)
    assert unscaled.tolist() == [2, 2, 2, 3, 4]
    assert ground_truth_levels(np.zeros((0, 4)), image_size=(4, 4), input_size=(8, 8), rule=RULE).shape == (0,)


def test_retinanet_ground_truth_maps_to_the_nearest_anchor_size():
    rule = level_rule(torchvision_retinanet_v1())
    assert (rule.min_level, rule.max_level) == (3, 7)
    # Anchors 32, 40, 50 on p3 and 64, 80, 101 on p4: the boundary lies halfway (in log2) between 50.8 and 64.
    sides = [10, 32, 50, 56, 58, 64, 100, 115, 1000]
    levels = ground_truth_levels([[0, 0, s, s] for s in sides], image_size=(800, 800), input_size=(800, 800), rule=rule)
    assert levels.tolist() == [3, 3, 3, 3, 4, 4, 4, 5, 7]


def test_by_level_refuses_results_without_levels_or_sizes():
    gt, results, sizes = make_case(0)
    with pytest.raises(ValueError, match="have no 'level'"):
        coco_ap_by_level(gt, [{k: v for k, v in r.items() if k != "level"} for r in results], sizes=sizes, rule=RULE)
    with pytest.raises(ValueError, match="outside the rule"):
        coco_ap_by_level(gt, [{**results[0], "level": 6}], sizes=sizes, rule=RULE)
    with pytest.raises(ValueError, match="no image and input size"):
        coco_ap_by_level(gt, results, sizes={1: sizes[1]}, rule=RULE)
    with pytest.raises(ValueError, match="image ids"):
        coco_ap_by_level(gt, [{**results[0], "image_id": 99}], sizes=sizes, rule=RULE)
    empty = coco_ap_by_level(gt, [], sizes=sizes, rule=RULE)
    assert all(v["AP"] in (0.0, -1.0) and v["num_detections"] == 0 for v in empty.values())
    table = format_by_level_table({"bbox": coco_ap_by_level(gt, results, sizes=sizes, rule=RULE)})
    assert table.count("\n") == 5 and all(name in table for name in BY_LEVEL_METRIC_NAMES)


# ---------------------------------------------------------------------------------------------
# One image: recall and precision per level


def instances(boxes, scores, labels, levels):
    n = len(scores)
    return Instances(boxes=np.asarray(boxes, np.float32).reshape(n, 4), scores=np.asarray(scores, np.float32),
                     labels=np.asarray(labels, np.int64), class_names=["a", "b"], category_ids=[1, 2], masks=None,
                     levels=np.asarray(levels, np.int64), box_levels=np.asarray(levels, np.int64))


def annotation(x, y, w, h, category=1, crowd=0):
    return {"bbox": [x, y, w, h], "category_id": category, "iscrowd": crowd}


def test_recall_and_precision_per_level_by_hand():
    # Image 500x500 seen at 1000x1000: a 60 px box is 120 network px (p3), 150 -> 300 (p4), 30 -> 60 (p2).
    gt = [annotation(0, 0, 60, 60), annotation(100, 0, 60, 60, category=2), annotation(300, 300, 150, 150),
          annotation(0, 300, 30, 30), annotation(200, 200, 60, 60, crowd=1)]
    det = instances(
        boxes=[[0, 0, 60, 60],          # finds object 0 (p3), from p3
               [100, 0, 160, 60],       # object 1 is class b: this class-a box is a false positive (p3)
               [300, 300, 450, 450],    # finds object 2 (p4), but pooled from p5: off the diagonal
               [200, 200, 260, 260],    # on the crowd region: counts neither way
               [0, 300, 30, 330.5],     # object 3 at IoU 0.98, but below the score threshold
               [0, 0, 61, 61]],         # a duplicate of object 0: false positive (p3)
        scores=[0.9, 0.8, 0.7, 0.6, 0.3, 0.55], labels=[0, 0, 0, 0, 0, 0], levels=[3, 3, 5, 3, 2, 3])
    m = level_recall_precision(det, gt, image_size=(500, 500), input_size=(1000, 1000), rule=RULE)
    assert m.levels.tolist() == [2, 3, 4, 5]
    assert m.gt_levels.tolist() == [3, 3, 4, 2, 3]
    assert m.num_ground_truth.tolist() == [1, 2, 1, 0] and m.found.tolist() == [0, 1, 1, 0]
    assert m.num_detections.tolist() == [0, 3, 0, 1] and m.correct.tolist() == [0, 1, 0, 1]
    np.testing.assert_allclose(m.recall, [0.0, 0.5, 1.0, np.nan])
    np.testing.assert_allclose(m.precision, [np.nan, 1 / 3, np.nan, 1.0])
    assert m.matches[3 - 3 + 1, 0 + 1] == 1 and m.matches[5 - 2, 4 - 2] == 1 and m.matches.sum() == 2
    assert m.gt_match.tolist() == [0, -1, 2, -1, -1] and m.detection_match.tolist() == [0, -1, 2, -1, -1, -1]
    rows = m.table()
    assert rows[1] == {"level": "p3", "objects": 2, "found": 1, "recall": 0.5, "detections": 3, "correct": 1,
                       "precision": pytest.approx(1 / 3)}
    assert rows[3]["recall"] is None
    # A lower threshold lets the fifth detection find object 3 on p2.
    low = level_recall_precision(det, gt, image_size=(500, 500), input_size=(1000, 1000), rule=RULE,
                                 score_threshold=0.2)
    assert low.found.tolist() == [1, 1, 1, 0] and low.correct.tolist() == [1, 1, 0, 1]


def test_perfect_detections_score_one_on_every_level_they_cover():
    rng = np.random.default_rng(5)
    gt = [annotation(*random_box(rng), category=int(rng.integers(1, 3))) for _ in range(30)]
    boxes = [[a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2], a["bbox"][1] + a["bbox"][3]] for a in gt]
    levels = [level_of(*a["bbox"][2:]) for a in gt]
    det = instances(boxes, rng.uniform(0.6, 1, size=len(gt)), [a["category_id"] - 1 for a in gt], levels)
    m = level_recall_precision(det, gt, image_size=(SIDE, SIDE), input_size=(SIDE, SIDE), rule=RULE)
    assert np.array_equal(m.gt_levels, levels)
    has = m.num_ground_truth > 0
    assert np.all(m.recall[has] == 1) and np.all(m.precision[has] == 1) and np.all(np.isnan(m.recall[~has]))
    assert np.array_equal(np.diag(m.matches), m.num_ground_truth)


def test_image_ground_truth_picks_one_image(tmp_path):
    gt, _, _ = make_case(0)
    assert image_ground_truth(gt, image=2)[0]["id"] == 2
    assert image_ground_truth(gt, image="3.png")[0]["id"] == 3
    assert image_ground_truth(gt, image="/somewhere/else/4.png", image_size=(SIDE, SIDE))[0]["id"] == 4
    path = tmp_path / "one.json"
    path.write_text(json.dumps({**gt, "images": gt["images"][:1]}))
    assert image_ground_truth(path)[0]["id"] == 1
    for kwargs, message in ((dict(), "holds 6 images"), (dict(image=99), "no image with id 99"),
                            (dict(image="x.png"), "no ground-truth images named 'x.png'"),
                            (dict(image=1, image_size=(10, 20)), "is for a 1000x1000 image")):
        with pytest.raises(ValueError, match=message):
            image_ground_truth(gt, **kwargs)


# ---------------------------------------------------------------------------------------------
# segfpn eval --by-level


ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples" / "images"


def test_eval_by_level_writes_and_prints_ap_per_level(tmp_path, capsys):
    import shutil

    from segfpn.cli import main

    images = tmp_path / "images"
    images.mkdir()
    for i in range(3):
        shutil.copy(EXAMPLES / f"synthetic_shapes_{i}.png", images)
    gt = EXAMPLES / "synthetic_shapes.instances.json"
    status = main(["eval", "--weights", str(ROOT / "weights" / "synthetic_panoptic_fpn.safetensors"),
                   "--images", str(images), "--instances", str(gt), "--out", str(tmp_path / "out"),
                   "--device", "cpu", "--no-progress", "--by-level"])
    assert status == 0
    printed = capsys.readouterr().out
    assert "by FPN level" in printed and "bbox      p2 |" in printed and "segm      p5 |" in printed
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    by_level = metrics["by_level"]
    assert by_level["rule"]["canonical_size"] == 224.0 and set(by_level) == {"rule", "bbox", "segm"}
    results = json.loads((tmp_path / "out" / "coco_instances_results.json").read_text())
    assert results and all(r["level"] in (2, 3, 4, 5) for r in results)
    # The levels written are those the model reports, and the numbers are coco_ap_by_level's on them.
    import segfpn

    model = segfpn.load(ROOT / "weights" / "synthetic_panoptic_fpn.safetensors", device="cpu")
    sizes, levels = {}, []
    for image in json.loads(gt.read_text())["images"]:
        result = model.predict(images / image["file_name"])
        sizes[image["id"]] = (result.image_size, result.input_size)
        levels += result.instances.levels.tolist()
    assert [r["level"] for r in results] == levels
    for iou_type in ("bbox", "segm"):
        assert by_level[iou_type] == coco_ap_by_level(gt, results, sizes=sizes, rule=model.config.pooler,
                                                      iou_type=iou_type)
    total_gt = sum(v["num_gt"] for v in by_level["bbox"].values())
    assert total_gt == len(json.loads(gt.read_text())["annotations"])
    assert by_level["bbox"]["p2"]["AP50"] > 0.5  # the bundled model finds the shapes


@pytest.mark.parametrize("args, message", [
    (["--by-level", "--instances", "x.json", "--predictions-dir", "p"], "--by-level runs the model"),
    (["--by-level", "--weights", "w", "--images", "i", "--out", "o", "--panoptic", "p.json"],
     "--by-level needs --instances"),
])
def test_eval_by_level_usage_errors_are_one_line(args, message, capsys):
    from segfpn.cli import main

    assert main(["eval", *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0]
