"""segfpn.export: COCO detection results, panoptic PNG ids, atomic writes."""

import json
import os

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from segfpn import export
from segfpn.export import (encode_masks, id_to_rgb, instances_to_coco_results, panoptic_to_coco, rgb_to_id,
                           segment_bboxes_and_areas, write_panoptic_png)
from segfpn.structures import Instances, PanopticSegmentation, Segment


def make_instances(masks, boxes, labels, scores, *, category_ids=(1, 5, 90)):
    n = len(scores)
    return Instances(boxes=np.asarray(boxes, np.float32).reshape(n, 4),
                     scores=np.asarray(scores, np.float32), labels=np.asarray(labels, np.int64),
                     class_names=[f"c{i}" for i in range(len(category_ids))],
                     category_ids=list(category_ids), masks=np.asarray(masks, bool),
                     levels=np.full(n, 2, np.int64), box_levels=np.full(n, 2, np.int64))


# pycocotools' compiled decode warns under numpy 2 (its __array__ lacks a copy keyword); harmless.
@pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")
def test_instances_to_coco_results_round_trip():
    rng = np.random.default_rng(0)
    masks = rng.random((3, 17, 23)) > 0.6
    masks[2] = False  # an empty mask still encodes
    boxes = [[1.5, 2.0, 10.25, 8.0], [0.0, 0.0, 23.0, 17.0], [4.0, 5.0, 6.0, 9.5]]
    instances = make_instances(masks, boxes, labels=[2, 0, 1], scores=[0.9, 0.5, 0.25])

    results = instances_to_coco_results(instances, image_id=42)

    assert len(results) == 3
    json.dumps(results)  # plain JSON types only (counts is str, not bytes)
    assert [r["category_id"] for r in results] == [90, 1, 5]  # category_ids[label]
    assert [r["image_id"] for r in results] == [42, 42, 42]
    assert [r["score"] for r in results] == pytest.approx([0.9, 0.5, 0.25])
    # xyxy -> xywh: [x0, y0, x1 - x0, y1 - y0]
    assert results[0]["bbox"] == pytest.approx([1.5, 2.0, 8.75, 6.0])
    assert results[1]["bbox"] == pytest.approx([0.0, 0.0, 23.0, 17.0])
    assert results[2]["bbox"] == pytest.approx([4.0, 5.0, 2.0, 4.5])
    for r, mask in zip(results, masks):
        assert isinstance(r["segmentation"]["counts"], str)
        assert r["segmentation"]["size"] == [17, 23]
        rle = {"size": r["segmentation"]["size"], "counts": r["segmentation"]["counts"].encode()}
        np.testing.assert_array_equal(mask_utils.decode([rle])[:, :, 0].astype(bool), mask)
        assert mask_utils.area([rle])[0] == mask.sum()


def test_no_instances_give_no_results():
    empty = make_instances(np.zeros((0, 5, 5)), np.zeros((0, 4)), [], [])
    assert instances_to_coco_results(empty, image_id=1) == []


def test_label_outside_the_classes_is_an_error():
    instances = make_instances(np.ones((1, 4, 4)), [[0, 0, 4, 4]], labels=[3], scores=[1.0])
    with pytest.raises(ValueError, match="label 3 is outside the model's 3 classes"):
        instances_to_coco_results(instances, image_id=1)


def test_id_rgb_round_trip():
    assert id_to_rgb(np.array([1 + 256 * 2 + 256 * 256 * 3])).tolist() == [[1, 2, 3]]
    assert rgb_to_id(np.array([[[255, 255, 255]]], np.uint8)).tolist() == [[256**3 - 1]]
    rng = np.random.default_rng(1)
    ids = rng.integers(0, 256**3, size=(31, 7), dtype=np.int64)
    rgb = id_to_rgb(ids)
    assert rgb.dtype == np.uint8 and rgb.shape == (31, 7, 3)
    np.testing.assert_array_equal(rgb_to_id(rgb), ids)
    with pytest.raises(ValueError, match="fit an RGB PNG"):
        id_to_rgb(np.array([256**3]))


def seg(seg_id, category_id, *, isthing=True):
    return Segment(id=seg_id, category_id=category_id, label=0, class_name="x", isthing=isthing,
                   area=0)


def test_panoptic_to_coco_areas_and_boxes():
    ids = np.zeros((6, 8), np.int32)
    ids[1:3, 2:5] = 3      # 2 x 3 = 6 px, box x=2 y=1 w=3 h=2
    ids[5, 7] = 4          # a single pixel: box [7, 5, 1, 1]
    ids[3:6, 0:2] = 9      # 3 x 2 = 6 px of the merged "things" class -> becomes void
    ids[0, :] = 7          # stuff row: 8 px, box [0, 0, 8, 1]
    panoptic = PanopticSegmentation(segment_ids=ids, segments=[
        seg(3, 1), seg(4, 18), seg(9, 0, isthing=False), seg(7, 184, isthing=False),
        seg(11, 1)])       # 11 is not in the map: left out

    rgb, annotation = panoptic_to_coco(panoptic, image_id=5, file_name="5.png")

    assert annotation["image_id"] == 5 and annotation["file_name"] == "5.png"
    assert annotation["segments_info"] == [
        {"id": 3, "category_id": 1, "iscrowd": 0, "area": 6, "bbox": [2, 1, 3, 2]},
        {"id": 4, "category_id": 18, "iscrowd": 0, "area": 1, "bbox": [7, 5, 1, 1]},
        {"id": 7, "category_id": 184, "iscrowd": 0, "area": 8, "bbox": [0, 0, 8, 1]},
    ]
    back = rgb_to_id(rgb)
    expected = ids.copy()
    expected[expected == 9] = 0
    np.testing.assert_array_equal(back, expected)


def test_panoptic_to_coco_reproduces_coco_ground_truth(coco_mini):
    """Areas and boxes of the COCO panoptic ground truth, recomputed from its PNGs."""
    gt = json.loads((coco_mini / "annotations" / "panoptic_val2017.json").read_text())
    for ann in gt["annotations"]:
        png = coco_mini / "annotations" / "panoptic_val2017" / ann["file_name"]
        ids = rgb_to_id(np.asarray(Image.open(png).convert("RGB"))).astype(np.int32)
        panoptic = PanopticSegmentation(segment_ids=ids, segments=[
            seg(s["id"], s["category_id"]) for s in ann["segments_info"]])
        rgb, out = panoptic_to_coco(panoptic, ann["image_id"], ann["file_name"])
        want = {s["id"]: (s["area"], s["bbox"]) for s in ann["segments_info"]}
        got = {s["id"]: (s["area"], s["bbox"]) for s in out["segments_info"]}
        assert got == want
        np.testing.assert_array_equal(rgb, np.asarray(Image.open(png).convert("RGB")))


def test_panoptic_id_missing_from_segments_is_an_error():
    ids = np.array([[0, 1], [2, 2]], np.int32)
    panoptic = PanopticSegmentation(segment_ids=ids, segments=[seg(1, 1)])
    with pytest.raises(ValueError, match=r"segment ids \[2\] are in the segment map"):
        panoptic_to_coco(panoptic, image_id=3, file_name="3.png")


def test_write_panoptic_png_round_trip(tmp_path):
    ids = np.arange(12 * 9, dtype=np.int64).reshape(12, 9) * 9973
    path = tmp_path / "a.png"
    write_panoptic_png(path, id_to_rgb(ids))
    np.testing.assert_array_equal(rgb_to_id(np.asarray(Image.open(path))), ids)
    assert os.listdir(tmp_path) == ["a.png"]  # no temporary file left behind
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask  # as open() would create it


def test_write_panoptic_png_failure_leaves_no_partial_file(tmp_path, monkeypatch):
    old = tmp_path / "old.png"
    write_panoptic_png(old, np.zeros((4, 4, 3), np.uint8))
    old_bytes = old.read_bytes()

    def broken_save(self, fp, *args, **kwargs):
        fp.write(b"\x89PNG half a file")
        raise OSError("disk full")

    monkeypatch.setattr(Image.Image, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        write_panoptic_png(tmp_path / "new.png", np.ones((4, 4, 3), np.uint8))
    with pytest.raises(OSError, match="disk full"):
        write_panoptic_png(old, np.ones((4, 4, 3), np.uint8))
    assert sorted(os.listdir(tmp_path)) == ["old.png"]  # no new.png, no temporary file
    assert old.read_bytes() == old_bytes  # the earlier file is intact


def test_write_panoptic_png_rejects_non_rgb(tmp_path):
    with pytest.raises(ValueError, match=r"uint8 \[H, W, 3\]"):
        write_panoptic_png(tmp_path / "x.png", np.zeros((4, 4), np.uint8))


@pytest.mark.parametrize("seed", range(6))
def test_rle_and_segment_statistics_on_random_maps_equal_the_straightforward_ones(seed, monkeypatch):
    # Crop-wise RLEs and band-wise segment statistics against pycocotools on full frames and a
    # per-id numpy computation, on maps nobody picked (bands of 7 rows force many bands).
    monkeypatch.setattr(export, "_BAND_PIXELS", 7 * 50)
    rng = np.random.default_rng(seed)
    h, w = (int(v) for v in rng.integers(1, 60, size=2))
    blocks = rng.integers(0, 6, size=(-(-h // 5), -(-w // 5)))
    ids = np.kron(blocks, np.ones((5, 5), dtype=np.int64))[:h, :w]
    ids = np.where(rng.random((h, w)) < 0.05, rng.integers(0, 6, size=(h, w)), ids)
    if seed % 2:
        ids = ids * 70001  # large ids, as COCO panoptic ground truth has
    stats = segment_bboxes_and_areas(ids)
    expected = {}
    for segment_id in np.unique(ids):
        if segment_id == 0:
            continue
        ys, xs = np.nonzero(ids == segment_id)
        expected[int(segment_id)] = (len(ys), [int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1),
                                               int(ys.max() - ys.min() + 1)])
    assert stats == expected and list(stats) == sorted(expected)
    assert np.array_equal(rgb_to_id(id_to_rgb(ids.astype(np.int32))), ids)
    masks = np.stack([ids == i for i in range(0, 6 * 70001 + 1, 70001 if seed % 2 else 1)[:6]])
    full = mask_utils.encode(np.asfortranarray(masks.transpose(1, 2, 0).astype(np.uint8)))
    assert [r["counts"] for r in encode_masks(masks)] == [r["counts"].decode() for r in full]
