"""evaluate(), evaluate_files() and `segfpn eval` end to end, with predictors that replay
annotations."""

import argparse
import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools.coco import COCO

import segfpn
from segfpn.evaluation import evaluate, evaluate_files, register_cli
from segfpn.export import rgb_to_id
from segfpn.structures import Instances, PanopticSegmentation, Result, Segment

# pycocotools' compiled decode (annToMask, COCOeval) warns under numpy 2; harmless.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


class AnnotationPredictor:
    """Answers ``predict(path)`` with the annotations of coco_mini, as a model would.

    instances: the non-crowd instance annotations (score 1). panoptic: the segment maps and
    segments of ``panoptic_json`` / ``panoptic_dir`` (the ground truth, or any prediction files);
    ``None`` for a model without a semantic head.
    """

    def __init__(self, coco_mini: Path, *, panoptic_json: Path | None = None,
                 panoptic_dir: Path | None = None):
        annotations = coco_mini / "annotations"
        self.coco = COCO(str(annotations / "instances_val2017.json"))
        self.images = {img["file_name"]: img for img in self.coco.dataset["images"]}
        categories = self.coco.dataset["categories"]
        self.class_names = [c["name"] for c in categories]
        self.category_ids = [c["id"] for c in categories]
        gt_panoptic = json.loads((annotations / "panoptic_val2017.json").read_text())
        self.panoptic_categories = {c["id"]: c for c in gt_panoptic["categories"]}
        self.panoptic = None
        if panoptic_json is not None:
            data = json.loads(Path(panoptic_json).read_text())
            self.panoptic = {a["image_id"]: a for a in data["annotations"]}
            self.panoptic_dir = Path(panoptic_dir)
        self.calls = []

    def predict(self, image_path: str) -> Result:
        self.calls.append(image_path)
        image = self.images[Path(image_path).name]
        anns = [a for a in self.coco.imgToAnns[image["id"]] if not a["iscrowd"]]
        n = len(anns)
        boxes = np.array([[x, y, x + w, y + h] for x, y, w, h in (a["bbox"] for a in anns)],
                         np.float32).reshape(n, 4)
        masks = np.stack([self.coco.annToMask(a).astype(bool) for a in anns])
        instances = Instances(
            boxes=boxes, scores=np.ones(n, np.float32),
            labels=np.array([self.category_ids.index(a["category_id"]) for a in anns], np.int64),
            class_names=self.class_names, category_ids=self.category_ids, masks=masks,
            levels=np.full(n, 3, np.int64), box_levels=np.full(n, 3, np.int64))
        size = (image["height"], image["width"])
        return Result(image_size=size, input_size=size, padded_size=size, instances=instances,
                      panoptic=self._panoptic(image["id"]) if self.panoptic else None)

    def _panoptic(self, image_id: int) -> PanopticSegmentation:
        ann = self.panoptic[image_id]
        with Image.open(self.panoptic_dir / ann["file_name"]) as png:
            ids = rgb_to_id(np.asarray(png.convert("RGB"))).astype(np.int32)
        segments = []
        for s in ann["segments_info"]:
            category = self.panoptic_categories[s["category_id"]]
            segments.append(Segment(id=s["id"], category_id=s["category_id"], label=0,
                                    class_name=category["name"], isthing=bool(category["isthing"]),
                                    area=int((ids == s["id"]).sum())))
        return PanopticSegmentation(segment_ids=ids, segments=segments)


@pytest.fixture(scope="module")
def gt_paths(coco_mini):
    annotations = coco_mini / "annotations"
    return {"images_dir": coco_mini / "images",
            "instances_json": annotations / "instances_val2017.json",
            "panoptic_json": annotations / "panoptic_val2017.json",
            "panoptic_dir": annotations / "panoptic_val2017"}


@pytest.fixture(scope="module")
def gt_run(coco_mini, gt_paths, tmp_path_factory):
    """evaluate() of a predictor that returns the ground truth; (predictor, metrics, out_dir)."""
    predictor = AnnotationPredictor(coco_mini, panoptic_json=gt_paths["panoptic_json"],
                                    panoptic_dir=gt_paths["panoptic_dir"])
    out_dir = tmp_path_factory.mktemp("eval_gt")
    metrics = evaluate(predictor, **gt_paths, out_dir=out_dir, progress=False)
    return predictor, metrics, out_dir


def test_ground_truth_predictions_score_one(gt_run, gt_paths):
    predictor, metrics, _ = gt_run
    assert sorted(Path(p).name for p in predictor.calls) == ["000000039769.png",
                                                             "000000142238.jpg"]
    assert metrics["num_images"] == 2
    for iou_type in ("bbox", "segm"):
        assert metrics[iou_type]["AP"] == pytest.approx(1.0), iou_type
        assert metrics[iou_type]["AP75"] == pytest.approx(1.0), iou_type
    panoptic = metrics["panoptic"]
    assert panoptic["All"] == {"pq": pytest.approx(1.0), "sq": pytest.approx(1.0),
                               "rq": pytest.approx(1.0), "n": 9}
    assert (panoptic["Things"]["n"], panoptic["Stuff"]["n"]) == (5, 4)
    # 13 non-crowd persons of image 142238 all matched; its crowd segment is not a fp.
    assert (panoptic["per_class"][1]["tp"], panoptic["per_class"][1]["fp"]) == (13, 0)


def test_prediction_files_are_written(gt_run, gt_paths):
    _, metrics, out_dir = gt_run
    detections = json.loads((out_dir / "coco_instances_results.json").read_text())
    assert len(detections) == 20  # 14 + 6 non-crowd instances
    assert {d["image_id"] for d in detections} == {142238, 39769}
    assert all(isinstance(d["segmentation"]["counts"], str) for d in detections)

    panoptic = json.loads((out_dir / "panoptic_pred.json").read_text())
    assert sorted(a["file_name"] for a in panoptic["annotations"]) == ["000000039769.png",
                                                                       "000000142238.png"]
    for ann in panoptic["annotations"]:
        written = np.asarray(Image.open(out_dir / "panoptic_pred" / ann["file_name"]))
        truth = np.asarray(Image.open(gt_paths["panoptic_dir"] / ann["file_name"]).convert("RGB"))
        np.testing.assert_array_equal(written, truth)
    assert json.loads((out_dir / "metrics.json").read_text()) == json.loads(json.dumps(metrics))
    assert not [name for name in os.listdir(out_dir) if name.endswith(".tmp")]


def test_evaluate_files_rescores_the_written_predictions(gt_run, gt_paths, tmp_path):
    _, metrics, out_dir = gt_run
    again = evaluate_files(instances_json=gt_paths["instances_json"],
                           panoptic_json=gt_paths["panoptic_json"],
                           panoptic_dir=gt_paths["panoptic_dir"], predictions_dir=out_dir,
                           out_dir=tmp_path, progress=False)
    assert again == metrics
    assert (tmp_path / "metrics.json").is_file()


def test_evaluate_reproduces_panopticapi_on_its_prediction(coco_mini, panopticapi_dev, gt_paths,
                                                           tmp_path):
    predictor = AnnotationPredictor(coco_mini, panoptic_json=panopticapi_dev / "panoptic_pred.json",
                                    panoptic_dir=panopticapi_dev / "panoptic_pred")
    metrics = evaluate(predictor, images_dir=gt_paths["images_dir"],
                       panoptic_json=gt_paths["panoptic_json"], out_dir=tmp_path, progress=False)
    expected = json.loads((panopticapi_dev / "expected_pq.json").read_text())
    expected = expected["cases"]["dev_gt_vs_pred"]
    for group in ("All", "Things", "Stuff"):
        for key in ("pq", "sq", "rq", "n"):
            assert metrics["panoptic"][group][key] == pytest.approx(expected[group][key],
                                                                    abs=1e-6), (group, key)
    assert "bbox" not in metrics  # no instances ground truth given
    assert not (tmp_path / "coco_instances_results.json").exists()


def test_panoptic_asked_of_an_instance_only_model_is_a_clear_error(coco_mini, gt_paths, tmp_path):
    predictor = AnnotationPredictor(coco_mini)  # result.panoptic is None
    panoptic_only = {k: v for k, v in gt_paths.items() if k != "instances_json"}
    with pytest.raises(ValueError, match="panoptic quality was asked for alone") as info:
        evaluate(predictor, **panoptic_only, out_dir=tmp_path, progress=False)
    assert "semantic head" in str(info.value)
    # Nothing half-written is left behind.
    assert not (tmp_path / "coco_instances_results.json").exists()
    assert not [n for n in os.listdir(tmp_path) if n.endswith(".tmp")]
    assert not (tmp_path / "metrics.json").exists()
    # With instances to score too, the AP is given and PQ said not to apply.
    metrics = evaluate(predictor, **gt_paths, out_dir=tmp_path, progress=False)
    assert metrics["segm"]["AP"] == pytest.approx(1.0) and metrics["panoptic"] is None
    assert "semantic head" in metrics["not_applicable"]["panoptic"] and "segm" not in metrics["not_applicable"]


def test_instance_only_evaluation_needs_no_panoptic(coco_mini, gt_paths, tmp_path):
    predictor = AnnotationPredictor(coco_mini)
    metrics = evaluate(predictor, images_dir=gt_paths["images_dir"],
                       instances_json=gt_paths["instances_json"], out_dir=tmp_path,
                       progress=False)
    assert metrics["segm"]["AP"] == pytest.approx(1.0)
    assert "panoptic" not in metrics


def test_missing_image_file_is_named(coco_mini, gt_paths, tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    with pytest.raises(FileNotFoundError, match="000000"):
        evaluate(AnnotationPredictor(coco_mini), images_dir=images,
                 instances_json=gt_paths["instances_json"], out_dir=tmp_path / "out",
                 progress=False)


def make_cli():
    parser = argparse.ArgumentParser(prog="segfpn")
    register_cli(parser.add_subparsers(dest="command", required=True))
    return parser


def test_cli_scores_a_predictions_dir(gt_run, gt_paths, capsys):
    _, _, out_dir = gt_run
    args = make_cli().parse_args([
        "eval", "--instances", str(gt_paths["instances_json"]),
        "--panoptic", str(gt_paths["panoptic_json"]), "--predictions-dir", str(out_dir),
        "--no-progress"])
    assert args.func(args) == 0
    printed = capsys.readouterr().out
    assert "AP50" in printed and "PQ" in printed
    assert "segm" in printed and "Things" in printed
    assert "100.00" in printed


def test_cli_with_weights_loads_the_model_lazily(coco_mini, gt_paths, tmp_path, monkeypatch,
                                                 capsys):
    loaded = []

    def fake_load(weights, **kwargs):
        loaded.append((weights, kwargs))
        return AnnotationPredictor(coco_mini, panoptic_json=gt_paths["panoptic_json"],
                                   panoptic_dir=gt_paths["panoptic_dir"])

    monkeypatch.setattr(segfpn, "load", fake_load, raising=False)
    args = make_cli().parse_args([
        "eval", "--weights", "w.safetensors", "--images", str(gt_paths["images_dir"]),
        "--instances", str(gt_paths["instances_json"]),
        "--panoptic", str(gt_paths["panoptic_json"]), "--out", str(tmp_path), "--device", "cpu",
        "--precision", "bf16", "--no-progress"])
    assert args.func(args) == 0
    assert loaded == [("w.safetensors", {"device": "cpu", "precision": "bf16"})]
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["panoptic"]["All"]["pq"] == pytest.approx(1.0)
    assert "metrics written to" in capsys.readouterr().out


def test_cli_rejects_a_model_and_files_together(gt_paths):
    args = make_cli().parse_args(["eval", "--weights", "w", "--predictions-dir", "p",
                                  "--instances", str(gt_paths["instances_json"])])
    with pytest.raises(SystemExit, match="Use one or the other"):
        args.func(args)


def test_ground_truth_of_other_categories_is_an_error_not_all_zeros(coco_mini, tmp_path, capsys):
    # The bundled model knows 4 shapes and 4 backgrounds; COCO's ground truth has none of them.
    from segfpn.cli import main

    annotations = coco_mini / "annotations"
    bundled = Path(segfpn.__file__).parents[1] / "weights" / "synthetic_panoptic_fpn.safetensors"
    status = main(["eval", "--weights", str(bundled),
                   "--images", str(coco_mini / "images"), "--instances", str(annotations / "instances_val2017.json"),
                   "--out", str(tmp_path / "out"), "--device", "cpu", "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 2 and len(err) == 1 and "none of the instances ground truth" in err[0], err


def test_ground_truth_with_some_unknown_categories_warns(coco_mini, caplog):
    from segfpn.evaluation.evaluate import check_categories

    predictor = AnnotationPredictor(coco_mini)
    result = predictor.predict(str(next(iter(predictor.images))))
    extra = [*predictor.coco.dataset["categories"], {"id": 999, "name": "unicorn"}]
    with caplog.at_level("WARNING"):
        check_categories(result, extra, [])
    assert "unicorn" in caplog.text and "will score 0" in caplog.text
