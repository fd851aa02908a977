"""The shipped ground truth of the synthetic examples is what segfpn.data.synthetic makes, and the
bundled model's recall and precision per level against it."""

import importlib.util
import json
from pathlib import Path

import numpy as np
from testdata import EXAMPLES

from segfpn.evaluation.by_level import ground_truth_levels

GROUND_TRUTH = EXAMPLES / "synthetic_shapes.instances.json"
SYNTHETIC = [EXAMPLES / f"synthetic_shapes_{i}.png" for i in range(3)]


def ground_truth_script():
    """tests/explain/synthetic_examples_gt.py, the script that writes the shipped file."""
    path = Path(__file__).with_name("synthetic_examples_gt.py")
    spec = importlib.util.spec_from_file_location("synthetic_examples_gt", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_shipped_ground_truth_is_regenerated_exactly():
    script = ground_truth_script()
    assert script.GROUND_TRUTH == GROUND_TRUTH
    assert json.loads(GROUND_TRUTH.read_text()) == script.build()


def test_bundled_model_recall_and_precision_per_level(bundled):
    truth = json.loads(GROUND_TRUTH.read_text())
    found = total = 0
    for path in SYNTHETIC:
        image = next(i for i in truth["images"] if i["file_name"] == path.name)
        objects = [a for a in truth["annotations"] if a["image_id"] == image["id"]]
        inspection = bundled.inspect(path)
        metrics = bundled.level_metrics(inspection, GROUND_TRUTH, image=path.name)
        if path == SYNTHETIC[0]:  # given a path, the ground truth's image is found by its file name
            by_path = bundled.level_metrics(path, GROUND_TRUTH)
            for name in ("num_ground_truth", "found", "num_detections", "correct", "matches", "gt_levels"):
                assert np.array_equal(getattr(by_path, name), getattr(metrics, name)), name
        assert metrics.num_ground_truth.sum() == len(objects)
        levels = ground_truth_levels([a["bbox"] for a in objects], image_size=(image["height"], image["width"]),
                                     input_size=inspection.result.input_size, rule=bundled.config.pooler)
        assert np.array_equal(metrics.gt_levels, levels)
        kept = inspection.result.instances.scores >= 0.5
        assert metrics.num_detections.sum() == kept.sum()
        found += int(metrics.found.sum())
        total += len(objects)
    assert found >= 0.8 * total  # the bundled model finds the shapes
