"""`segfpn eval` and evaluate() with box-only models (Faster R-CNN, RetinaNet): box AP scored, mask
AP and PQ reported as not applicable with the reason (printed and in metrics.json), never a
crash; --by-level on RetinaNet's anchor levels 3..7."""

import json
from pathlib import Path

import numpy as np
import pytest
from pycocotools.coco import COCO

from segfpn.cli import main
from segfpn.evaluation import evaluate, evaluate_files, format_metrics
from segfpn.evaluation.evaluate import NO_MASKS, NO_SEMANTIC_HEAD
from segfpn.structures import Instances, Result

# pycocotools' compiled decode (annToMask, COCOeval) warns under numpy 2; harmless.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


class BoxReplayPredictor:
    """A box-only model that answers ``predict(path)`` with coco_mini's non-crowd boxes (score 1)."""

    def __init__(self, instances_json: Path):
        self.coco = COCO(str(instances_json))
        self.images = {img["file_name"]: img for img in self.coco.dataset["images"]}
        self.categories = self.coco.dataset["categories"]

    def predict(self, image_path: str) -> Result:
        image = self.images[Path(image_path).name]
        anns = [a for a in self.coco.imgToAnns[image["id"]] if not a["iscrowd"]]
        n = len(anns)
        ids = [c["id"] for c in self.categories]
        boxes = [[x, y, x + w, y + h] for x, y, w, h in (a["bbox"] for a in anns)]
        instances = Instances(
            boxes=np.array(boxes, np.float32).reshape(n, 4),
            scores=np.ones(n, np.float32), labels=np.array([ids.index(a["category_id"]) for a in anns], np.int64),
            class_names=[c["name"] for c in self.categories], category_ids=ids, masks=None,
            levels=np.full(n, 3, np.int64), box_levels=np.full(n, 3, np.int64))
        size = (image["height"], image["width"])
        return Result(image_size=size, input_size=size, padded_size=size, instances=instances)


@pytest.fixture(scope="module")
def gt(coco_mini):
    annotations = coco_mini / "annotations"
    return {"images_dir": coco_mini / "images", "instances_json": annotations / "instances_val2017.json",
            "panoptic_json": annotations / "panoptic_val2017.json", "panoptic_dir": annotations / "panoptic_val2017"}


def test_box_ap_is_scored_and_mask_ap_and_pq_do_not_apply(gt, tmp_path):
    metrics = evaluate(BoxReplayPredictor(gt["instances_json"]), **gt, out_dir=tmp_path, progress=False)
    assert metrics["bbox"]["AP"] == pytest.approx(1.0) and metrics["bbox"]["AP75"] == pytest.approx(1.0)
    assert metrics["segm"] is None and metrics["panoptic"] is None
    assert metrics["not_applicable"] == {"segm": NO_MASKS, "panoptic": NO_SEMANTIC_HEAD}
    assert json.loads((tmp_path / "metrics.json").read_text()) == metrics
    detections = json.loads((tmp_path / "coco_instances_results.json").read_text())
    assert len(detections) == 20 and all("segmentation" not in d for d in detections)
    assert not (tmp_path / "panoptic_pred").exists() and not (tmp_path / "panoptic_pred.json").exists()
    printed = format_metrics(metrics)
    assert "bbox  | 100.00" in printed
    assert f"segm  | not applicable: {NO_MASKS}" in printed and f"PQ: not applicable: {NO_SEMANTIC_HEAD}" in printed


def test_pq_alone_of_a_model_without_semantic_head_is_an_error_with_nothing_written(gt, tmp_path):
    with pytest.raises(ValueError, match="panoptic quality was asked for alone, but the model has no semantic head"):
        evaluate(BoxReplayPredictor(gt["instances_json"]), images_dir=gt["images_dir"],
                 panoptic_json=gt["panoptic_json"], panoptic_dir=gt["panoptic_dir"], out_dir=tmp_path, progress=False)
    assert not list(tmp_path.iterdir())


def test_scoring_box_results_files_says_mask_ap_does_not_apply(gt, tmp_path):
    evaluate(BoxReplayPredictor(gt["instances_json"]), images_dir=gt["images_dir"],
             instances_json=gt["instances_json"], out_dir=tmp_path, progress=False)
    again = evaluate_files(instances_json=gt["instances_json"], predictions_dir=tmp_path, progress=False)
    assert again["bbox"]["AP"] == pytest.approx(1.0) and again["segm"] is None
    assert "20 of the 20 detection results have no 'segmentation'" in again["not_applicable"]["segm"]
    assert "segm  | not applicable: 20 of the 20" in format_metrics(again)


@pytest.fixture(scope="module")
def retinanet_weights(tmp_path_factory):
    """A tiny random RetinaNet as a native file (COCO's 80 classes)."""
    from segfpn.config import ARCHITECTURES

    from testdata import save_random_detector, tiny_detector_config

    path = tmp_path_factory.mktemp("weights") / "retinanet.safetensors"
    return save_random_detector(path, tiny_detector_config(ARCHITECTURES["retinanet_R_50_FPN"]()),
                                arch="retinanet_R_50_FPN")


def test_cli_eval_of_retinanet_by_anchor_level(gt, tmp_path, capsys, retinanet_weights):
    out = tmp_path / "out"
    status = main(["eval", "--weights", str(retinanet_weights), "--images", str(gt["images_dir"]),
                   "--instances", str(gt["instances_json"]), "--panoptic", str(gt["panoptic_json"]),
                   "--out", str(out), "--device", "cpu", "--no-progress", "--by-level"])
    captured = capsys.readouterr()
    assert status == 0, captured.err
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["bbox"]) >= {"AP", "AP50"} and metrics["segm"] is None and metrics["panoptic"] is None
    assert set(metrics["not_applicable"]) == {"segm", "panoptic"}
    by_level = metrics["by_level"]
    assert set(by_level) == {"rule", "bbox"} and list(by_level["bbox"]) == ["p3", "p4", "p5", "p6", "p7"]
    assert by_level["rule"]["detection_level"] == "the level of the anchor that produced them"
    assert sum(v["num_gt"] for v in by_level["bbox"].values()) == 20
    results = json.loads((out / "coco_instances_results.json").read_text())
    assert results and {r["level"] for r in results} <= set(range(3, 8))
    assert sum(v["num_detections"] for v in by_level["bbox"].values()) == len(results)
    printed = captured.out
    assert "segm  | not applicable" in printed and "PQ: not applicable" in printed
    assert "detections: the level of the anchor that produced them" in printed and "bbox      p7 |" in printed
    assert "panoptic ground truth's" not in captured.err  # no category warning for PQ that is not computed


def test_cli_pq_alone_of_a_box_only_model_is_one_error_line(gt, tmp_path, capsys, retinanet_weights):
    status = main(["eval", "--weights", str(retinanet_weights), "--images", str(gt["images_dir"]),
                   "--panoptic", str(gt["panoptic_json"]), "--out", str(tmp_path / "out"), "--device", "cpu",
                   "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 2 and len(err) == 1 and err[0].startswith("error: segfpn eval: --panoptic: panoptic quality"), err
    assert not (tmp_path / "out").exists()  # refused before any image was predicted
