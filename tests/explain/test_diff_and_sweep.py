"""The what-if diff (kept / moved / lost / new) and the scale sweep's object tracking: on
detections made up for the purpose, and on the bundled model's detections of synthetic images
whose objects are known."""

import json

import numpy as np
import pytest
from testdata import EXAMPLES, ROOT

import segfpn
from segfpn.evaluation.agreement import box_iou, mask_iou
from segfpn.evaluation.by_level import ground_truth_levels
from segfpn.explain import diff_detections, paired_mask_iou, track_objects
from segfpn.structures import InstanceMasks, Instances

GROUND_TRUTH = EXAMPLES / "synthetic_shapes.instances.json"
SYNTHETIC = [EXAMPLES / f"synthetic_shapes_{i}.png" for i in range(3)]

SIZE = (200, 300)


def make(boxes, scores, labels, levels=None, *, masks=True):
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    n = len(boxes)
    frames = None
    if masks:
        frames = np.zeros((n, *SIZE), dtype=bool)
        for frame, (x0, y0, x1, y1) in zip(frames, boxes.round().astype(int)):
            frame[y0:y1, x0:x1] = True
    levels = np.full(n, 3) if levels is None else levels
    return Instances(boxes=boxes, scores=np.asarray(scores, np.float32), labels=np.asarray(labels, np.int64),
                     class_names=["a", "b", "c"], category_ids=[1, 2, 3], masks=frames,
                     levels=np.asarray(levels, np.int64), box_levels=np.asarray(levels, np.int64))


def test_diff_sorts_every_detection():
    before = make([[10, 10, 50, 50], [60, 10, 100, 50], [10, 60, 50, 100], [120, 10, 160, 50], [170, 10, 210, 50]],
                  [0.9, 0.8, 0.7, 0.6, 0.5], [0, 1, 0, 2, 0], levels=[2, 3, 2, 3, 2])
    after = make([[10, 10, 50, 50],     # 0: the same as before
                  [64, 10, 104, 50],    # 1: class b shifted by 4 px (IoU 36/44)
                  [120, 10, 160, 50],   # 3: same box, score changed by 0.01
                  [250, 150, 290, 190],  # new
                  [170, 10, 210, 50]],  # 4 with class b: 4 is lost, this is new
                 [0.9, 0.8, 0.61, 0.4, 0.5], [0, 1, 2, 0, 1], levels=[2, 4, 3, 2, 5])
    diff = diff_detections(before, after)
    assert diff["status"].tolist() == ["kept", "moved", "lost", "moved", "lost"]
    assert diff["match"].tolist() == [0, 1, -1, 2, -1]
    assert diff["new_status"].tolist() == ["kept", "moved", "moved", "new", "new"]
    assert diff["new_match"].tolist() == [0, 1, 3, -1, -1]
    assert diff["counts"] == {"kept": 1, "moved": 2, "lost": 2, "new": 2}
    assert diff["box_iou"][1] == pytest.approx(36 / 44) and diff["mask_iou"][1] == pytest.approx(36 / 44)
    assert diff["score_change"][3] == pytest.approx(0.01) and np.isnan(diff["box_iou"][2])
    assert diff["level_before"].tolist() == [2, 3, 2, 3, 2] and diff["level_after"].tolist() == [2, 4, -1, 3, -1]


def test_diff_matches_one_to_one_best_score_first():
    # Two originals of one class on one box: the higher-scoring one takes it, the other is lost.
    before = make([[10, 10, 50, 50], [12, 10, 52, 50]], [0.6, 0.9], [0, 0])
    after = make([[11, 10, 51, 50]], [0.7], [0])
    diff = diff_detections(before, after)
    assert diff["match"].tolist() == [-1, 0] and diff["status"].tolist() == ["lost", "moved"]
    empty = diff_detections(before, make(np.zeros((0, 4)), [], []))
    assert empty["status"].tolist() == ["lost", "lost"] and empty["counts"]["new"] == 0
    none_before = diff_detections(make(np.zeros((0, 4)), [], []), after)
    assert none_before["new_status"].tolist() == ["new"]


def test_box_only_models_compare_boxes_and_scores():
    before = make([[10, 10, 50, 50]], [0.9], [0], masks=False)
    diff = diff_detections(before, make([[10, 10, 50, 50]], [0.9], [0], masks=False))
    assert diff["status"].tolist() == ["kept"] and np.isnan(diff["mask_iou"][0])


def test_mask_iou_from_crops_equals_full_frames():
    rng = np.random.default_rng(3)
    for _ in range(60):
        a, b = np.zeros((2, *SIZE), dtype=bool)
        for frame in (a, b):
            if rng.random() < 0.9:
                y0, x0 = rng.integers(0, 150), rng.integers(0, 250)
                frame[y0:y0 + rng.integers(1, 60), x0:x0 + rng.integers(1, 60)] = rng.random((1, 1)) < 2
                frame &= rng.random(SIZE) < 0.8
        ma, mb = InstanceMasks.from_array(a[None]), InstanceMasks.from_array(b[None])
        assert paired_mask_iou(ma, 0, mb, 0) == pytest.approx(mask_iou(a[None], b[None])[0])


def test_default_sweep_sizes():
    from segfpn.explain import default_sweep_sizes, sweep_sizes

    assert default_sweep_sizes(800) == [400, 500, 600, 700, 800, 900, 1000, 1100, 1200]
    assert default_sweep_sizes(320) == [160, 200, 240, 280, 320, 360, 400, 440, 480]
    assert sweep_sizes([800, 400, 400], (1200, 1800)) == [400, 800]
    for sizes, message in (([], "empty"), ([400.5], "whole numbers"), ([True], "whole numbers"), ([10], "out of range"),
                           ([3000], "out of range"), (None, "list of whole numbers")):
        with pytest.raises(ValueError, match=message):
            sweep_sizes(sizes, (1200, 1800))


def test_tracking_follows_objects_through_gaps_and_apart_from_others():
    sizes = [400, 600, 800, 1000]
    x = [[10, 10, 50, 50], [11, 10, 52, 51], [10, 11, 51, 50], [9, 9, 50, 50]]     # class a, every size
    y = [[100, 10, 140, 50], None, [101, 10, 141, 50], [100, 11, 140, 51]]        # class b, missed at 600
    twin = [[52, 10, 92, 50]] * 4                                                  # class a, beside x
    late = [None, None, [10, 100, 40, 130], [10, 100, 41, 131]]                     # class c, from 800 on
    other_class = [None, [10, 10, 50, 50], None, None]                             # class b on top of x
    frames = []
    for s in range(4):
        boxes, scores, labels, levels = [], [], [], []
        for track, (label, base_score) in zip((x, y, twin, late, other_class),
                                              ((0, 0.9), (1, 0.8), (0, 0.7), (2, 0.6), (1, 0.55))):
            if track[s] is not None:
                boxes.append(track[s])
                scores.append(base_score)
                labels.append(label)
                levels.append(2 + s // 2)
        boxes.append([200, 150, 240, 190])  # below the score threshold: left out
        scores.append(0.2)
        labels.append(0)
        levels.append(5)
        frames.append(make(boxes, scores, labels, levels, masks=False))
    sweep = track_objects(frames, sizes=sizes, input_sizes=[(s, s) for s in sizes], seconds=[0.1] * 4,
                          levels=range(2, 6), score_threshold=0.5)
    assert sweep.track_names == ["a", "b", "a", "b", "c"]
    present = sweep.track_levels >= 0
    assert present.tolist() == [[1, 1, 1, 1], [1, 0, 1, 1], [1, 1, 1, 1], [0, 1, 0, 0], [0, 0, 1, 1]]
    assert sweep.track_levels[0].tolist() == [2, 2, 3, 3]
    assert np.allclose(sweep.track_boxes[1, 2], y[2]) and np.isnan(sweep.track_scores[1, 1])
    assert sweep.counts.tolist() == [3, 3, 4, 4]
    assert sweep.level_counts.tolist() == [[3, 0, 0, 0], [3, 0, 0, 0], [0, 4, 0, 0], [0, 4, 0, 0]]
    assert np.allclose(sweep.level_shares.sum(axis=1), 1)


def test_the_sweep_tracks_the_known_objects_of_synthetic_images(bundled):
    ground_truth = json.loads(GROUND_TRUTH.read_text())
    sizes = [240, 320, 400]
    tracked = 0
    for path in SYNTHETIC:
        image = next(i for i in ground_truth["images"] if i["file_name"] == path.name)
        objects = [a for a in ground_truth["annotations"] if a["image_id"] == image["id"]]
        calls = []
        sweep = bundled.scale_sweep(path, sizes, progress=lambda done, total, calls=calls: calls.append((done, total)))
        assert calls == [(1, 3), (2, 3), (3, 3)]
        # The shorter side is the size asked for (torchvision's resize may floor it one pixel lower).
        assert np.all(np.abs(sweep.input_sizes.min(axis=1) - sizes) <= 1)
        for obj in objects:
            x, y, w, h = obj["bbox"]
            truth = np.array([[x, y, x + w, y + h]])
            label = obj["category_id"] - 1
            # The tracks holding a detection of this object (its class, box IoU >= 0.5) at some size.
            hits = np.zeros(sweep.track_boxes.shape[:2], dtype=bool)
            for t in range(sweep.num_tracks):
                for s in range(len(sizes)):
                    box = sweep.track_boxes[t, s]
                    hits[t, s] = (sweep.track_labels[t] == label and not np.isnan(box[0])
                                  and box_iou(truth, box[None])[0, 0] >= 0.5)
            if not hits.any(axis=0).all():
                continue  # not found at every size
            tracked += 1
            # Found at every size, the object is one track, and that track is this object throughout.
            owners = np.flatnonzero(hits.any(axis=1))
            assert len(owners) == 1, (path.name, obj["id"], owners)
            assert hits[owners[0]].all()
            # Its level at each size is the one its box maps to at that input size (up to a level
            # where the object's size lies within 10 % of a boundary).
            expected = np.array([ground_truth_levels([obj["bbox"]], image_size=(image["height"], image["width"]),
                                                     input_size=tuple(inp), rule=bundled.config.pooler)[0]
                                 for inp in sweep.input_sizes])
            scale = sweep.input_sizes[:, 0] / image["height"]
            size = np.sqrt(w * h) * scale
            near = np.any(np.abs(size[:, None] / np.array([112, 224, 448])[None] - 1) < 0.1, axis=1)
            assert np.all((sweep.track_levels[owners[0]] == expected) | near), (path.name, obj["id"])
    assert tracked >= 8  # the bundled model finds most of the 13 shapes at every size


def sweep_rows(sweep, s: int) -> np.ndarray:
    """(label, level, score, x0, y0, x1, y1) of every detection of size ``s`` of ``sweep``, sorted."""
    found = ~np.isnan(sweep.track_scores[:, s])
    rows = np.column_stack([sweep.track_labels[found], sweep.track_levels[found, s], sweep.track_scores[found, s],
                            sweep.track_boxes[found, s]])
    return rows[np.lexsort(rows.T[::-1])]


def test_the_sweep_sees_at_each_size_what_predict_sees(bundled):
    rng = np.random.default_rng(11)
    sizes = [int(rng.integers(200, 320)), int(rng.integers(320, 440))]  # below and above the model's 320
    threshold = float(rng.uniform(0.0, 0.2))
    sweep = bundled.scale_sweep(SYNTHETIC[0], sizes, score_threshold=threshold)
    for s, size in enumerate(sizes):
        # The shorter side at ``size``, the longer side unbounded: the run the sweep makes.
        at_size = segfpn.load(ROOT / "weights" / "synthetic_panoptic_fpn.safetensors", device="cpu",
                              overrides={"input": {"min_size": size, "max_size": 4096}})
        result = at_size.predict(SYNTHETIC[0])
        assert tuple(sweep.input_sizes[s]) == result.input_size
        inst = result.instances.select(np.flatnonzero(result.instances.scores >= threshold))
        rows = np.column_stack([inst.labels, inst.levels, inst.scores, inst.boxes])
        assert len(rows) >= 3 and sweep.counts[s] == len(rows)
        assert np.array_equal(sweep_rows(sweep, s), rows[np.lexsort(rows.T[::-1])])
