"""PQ against the numbers of cocodataset/panopticapi's pq_compute (tests/data/panopticapi_dev)."""

import json

import pytest

from segfpn.evaluation import pq_compute_files

TOL = 1e-6


@pytest.mark.parametrize("case", ["dev_gt_vs_gt", "dev_gt_vs_pred"])
def test_pq_matches_panopticapi(case, coco_mini, panopticapi_dev):
    gt_json = coco_mini / "annotations" / "panoptic_val2017.json"
    if case == "dev_gt_vs_gt":
        pred_json, pred_dir = gt_json, coco_mini / "annotations" / "panoptic_val2017"
    else:
        pred_json = panopticapi_dev / "panoptic_pred.json"
        pred_dir = panopticapi_dev / "panoptic_pred"
    expected = json.loads((panopticapi_dev / "expected_pq.json").read_text())["cases"][case]

    results = pq_compute_files(gt_json, pred_json, pred_dir=pred_dir)

    for group in ("All", "Things", "Stuff"):
        assert results[group]["n"] == expected[group]["n"], group
        for key in ("pq", "sq", "rq"):
            assert results[group][key] == pytest.approx(expected[group][key], abs=TOL), (group, key)
    assert sorted(results["per_class"]) == sorted(int(k) for k in expected["per_class"])
    for category_id, want in expected["per_class"].items():
        got = results["per_class"][int(category_id)]
        assert got["name"] == want["name"]
        assert bool(got["isthing"]) == bool(want["isthing"])
        for key in ("tp", "fp", "fn"):
            assert got[key] == want[key], (category_id, key)
        for key in ("pq", "sq", "rq", "iou_sum"):
            assert got[key] == pytest.approx(want[key], abs=TOL), (category_id, key)


def test_pq_missing_prediction_for_an_image_is_an_error(coco_mini, panopticapi_dev):
    pred = json.loads((panopticapi_dev / "panoptic_pred.json").read_text())
    pred["annotations"] = pred["annotations"][:1]
    with pytest.raises(ValueError, match="no panoptic prediction for image"):
        pq_compute_files(coco_mini / "annotations" / "panoptic_val2017.json", pred,
                         pred_dir=panopticapi_dev / "panoptic_pred")
