"""Box and mask AP with pycocotools on tests/data/coco_mini."""

import json
import logging

import pytest
from pycocotools.coco import COCO

from segfpn.evaluation import COCO_METRIC_NAMES, coco_ap, coco_box_and_mask_ap, format_ap_table


@pytest.fixture(scope="module")
def instances_json(coco_mini):
    return coco_mini / "annotations" / "instances_val2017.json"


@pytest.fixture(scope="module")
def gt_as_results(instances_json):
    """Every non-crowd ground-truth annotation as a detection with score 1 (RLE masks)."""
    coco = COCO(str(instances_json))
    results = []
    for ann in coco.dataset["annotations"]:
        if ann["iscrowd"]:
            continue
        rle = coco.annToRLE(ann)  # counts: str for the RLE annotations, bytes for polygons
        counts = rle["counts"].decode() if isinstance(rle["counts"], bytes) else rle["counts"]
        results.append({"image_id": ann["image_id"], "category_id": ann["category_id"],
                        "bbox": list(ann["bbox"]), "score": 1.0,
                        "segmentation": {"size": rle["size"], "counts": counts}})
    assert len(results) == 20  # 14 non-crowd in image 142238, 6 in image 39769
    return results


def test_ground_truth_as_predictions_gives_ap_one(instances_json, gt_as_results, capsys):
    metrics = coco_box_and_mask_ap(instances_json, gt_as_results)
    assert set(metrics) == {"bbox", "segm"}
    for iou_type, values in metrics.items():
        assert tuple(values) == COCO_METRIC_NAMES
        for name in ("AP", "AP50", "AP75", "AR100"):
            assert values[name] == pytest.approx(1.0), (iou_type, name)
    # pycocotools' prints went to logging, not to stdout.
    assert capsys.readouterr().out == ""


def test_dropping_half_the_detections_lowers_ap(instances_json, gt_as_results):
    metrics = coco_box_and_mask_ap(instances_json, gt_as_results[::2])
    for iou_type in ("bbox", "segm"):
        assert 0.0 < metrics[iou_type]["AP"] < 1.0, iou_type
        assert metrics[iou_type]["AR100"] < 1.0


def test_shifted_boxes_lower_box_ap_only(instances_json, gt_as_results):
    shifted = []
    for r in gt_as_results:
        x, y, w, h = r["bbox"]
        shifted.append({**r, "bbox": [x + 0.3 * w, y, w, h]})  # box IoU 0.7/1.3 ≈ 0.54
    box = coco_ap(instances_json, shifted, iou_type="bbox")
    mask = coco_ap(instances_json, shifted, iou_type="segm")
    assert box["AP"] < 1.0
    assert box["AP50"] == pytest.approx(1.0)  # still above IoU 0.5
    assert box["AP75"] < 0.5
    assert mask["AP"] == pytest.approx(1.0)  # the masks did not move


def test_detections_of_a_class_without_ground_truth_leave_ap_unchanged(instances_json,
                                                                      gt_as_results):
    extra = {**gt_as_results[0], "category_id": 18, "score": 0.1}  # a "dog" that is not there
    metrics = coco_ap(instances_json, [*gt_as_results, extra], iou_type="bbox")
    assert metrics["AP"] == pytest.approx(1.0)  # "dog" has no ground truth: no AP of its own


def test_empty_results_do_not_crash(instances_json, caplog):
    with caplog.at_level(logging.WARNING, logger="segfpn.evaluation.coco_ap"):
        metrics = coco_box_and_mask_ap(instances_json, [])
    assert "no bbox detections" in caplog.text
    for values in metrics.values():
        assert set(values) == set(COCO_METRIC_NAMES)
        assert all(v in (0.0, -1.0) for v in values.values())
        assert values["AP"] == 0.0


def test_results_from_a_json_file_and_gt_from_a_dict(tmp_path, instances_json, gt_as_results):
    path = tmp_path / "results.json"
    path.write_text(json.dumps(gt_as_results[:5]))
    gt = json.loads(instances_json.read_text())
    from_file = coco_ap(gt, path, iou_type="segm")
    from_list = coco_ap(instances_json, gt_as_results[:5], iou_type="segm")
    assert from_file == from_list
    assert 0.0 < from_file["AP"] < 1.0


def test_unknown_image_id_is_an_error(instances_json, gt_as_results):
    bad = [{**gt_as_results[0], "image_id": 123456}]
    with pytest.raises(ValueError, match="image ids \\[123456\\]"):
        coco_ap(instances_json, bad, iou_type="bbox")


def test_mask_ap_needs_segmentations(instances_json, gt_as_results):
    boxes_only = [{k: v for k, v in r.items() if k != "segmentation"} for r in gt_as_results]
    assert coco_ap(instances_json, boxes_only, iou_type="bbox")["AP"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="no 'segmentation'"):
        coco_ap(instances_json, boxes_only, iou_type="segm")


def test_ap_table_lists_every_metric():
    values = dict.fromkeys(COCO_METRIC_NAMES, 0.5) | {"APs": -1.0}
    table = format_ap_table({"bbox": values})
    assert all(name in table for name in COCO_METRIC_NAMES)
    assert "50.00" in table and " -" in table
