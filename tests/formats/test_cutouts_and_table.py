"""Cut-outs (RGBA PNG per instance and per panoptic segment, cropped, zipped) and the detections
table (CSV and Parquet) against the result they come from."""

import numpy as np
import pytest

import segfpn
from segfpn.formats import cutouts, table
from segfpn.formats.cutouts import instance_cutout
from segfpn.outputs import write_result
from segfpn.structures import Instances

from testdata import ROOT, load_rgb

WEIGHTS = ROOT / "weights" / "synthetic_panoptic_fpn.safetensors"


@pytest.fixture(scope="module")
def prediction():
    name = "synthetic_shapes_2.png"
    rgb = load_rgb(name)
    return name, rgb, segfpn.load(WEIGHTS, device="cpu").predict(rgb)


def test_cutouts_hold_each_instance_and_segment_with_its_mask_as_alpha(tmp_path, prediction):
    name, rgb, result = prediction
    threshold = 0.5
    files = write_result(result, rgb, tmp_path, image_name=name, formats=["cutouts"], score_threshold=threshold)
    pngs = cutouts.read_cutouts(files.exports["cutouts"])
    keep = np.flatnonzero(result.instances.scores >= threshold)
    instance_files = sorted(n for n in pngs if n.startswith("instances/"))
    assert len(instance_files) == len(keep) > 0
    for number, (i, file) in enumerate(zip(keep, instance_files), start=1):
        assert file.startswith(f"instances/{number:03d}_{result.instances.names[i]}_")
        rgba = pngs[file]
        expected, (x0, y0) = instance_cutout(rgb, result.instances, int(i))
        assert np.array_equal(rgba, expected)
        h, w = rgba.shape[:2]
        full = result.instances.masks[int(i)]
        assert np.array_equal(rgba[..., 3] > 0, full[y0:y0 + h, x0:x0 + w])
        assert np.count_nonzero(rgba[..., 3]) == np.count_nonzero(full)  # nothing of the mask cut off
        assert np.array_equal(rgba[..., :3], rgb[y0:y0 + h, x0:x0 + w])
    segment_files = sorted(n for n in pngs if n.startswith("segments/"))
    segments = [s for s in result.panoptic.segments if not s.isthing or s.score >= threshold]
    assert len(segment_files) == len(segments) > 0
    for segment in segments:
        rgba = pngs[f"segments/{segment.id:03d}_{segment.class_name}.png"]
        assert np.count_nonzero(rgba[..., 3]) == segment.area


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_table_rows_match_the_detections(tmp_path, prediction, fmt):
    name, rgb, result = prediction
    files = write_result(result, rgb, tmp_path, image_name=name, formats=[fmt])
    rows = table.read_table(files.exports[fmt])
    inst = result.instances
    assert len(rows) == len(inst) and list(rows[0]) == list(table.COLUMNS)
    areas = inst.masks.areas()
    for i, row in enumerate(rows):
        assert (row["image"], row["frame"], row["instance"], row["class"]) == (name, None, i, inst.names[i])
        assert row["score"] == pytest.approx(float(inst.scores[i]), abs=1e-6)
        assert [row[k] for k in ("x0", "y0", "x1", "y1")] == pytest.approx(inst.boxes[i].tolist(), abs=1e-3)
        assert row["area"] == areas[i] and row["level"] == int(inst.levels[i])


def test_box_only_results_get_tables_and_box_cutouts(tmp_path):
    rgb = load_rgb("coffee.png")
    instances = Instances(boxes=np.array([[10, 20, 110, 90]], np.float32), scores=np.array([0.9], np.float32),
                          labels=np.zeros(1, np.int64), class_names=["cup"], category_ids=[47], masks=None,
                          levels=np.array([3]), box_levels=np.array([3]))
    result = segfpn.structures.Result(image_size=rgb.shape[:2], input_size=rgb.shape[:2], padded_size=rgb.shape[:2],
                                      instances=instances)
    files = write_result(result, rgb, tmp_path, image_name="coffee.png", formats=["csv", "cutouts"])
    assert table.read_table(files.exports["csv"])[0]["area"] == 100 * 70
    cutout = cutouts.read_cutouts(files.exports["cutouts"])["instances/001_cup_0.90.png"]
    assert cutout.shape == (70, 100, 4) and (cutout[..., 3] == 255).all()
    np.testing.assert_array_equal(cutout[..., :3], rgb[20:90, 10:110])
