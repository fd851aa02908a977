"""PQ on small synthetic 10x10 maps; every expected number is worked out by hand below.

Categories: things A (id 1) and B (id 2), stuff S (id 100), T (id 101) and U (id 102).
Maps hold segment ids, 0 = void. In the comments, |x| is a pixel count and IoU follows the COCO
rule: union = |pred| + |gt| - |pred ∩ gt| - |pred ∩ gt void|.
"""

import numpy as np
import pytest

from segfpn.evaluation import PanopticQuality, match_segments

A, B, S, T, U = 1, 2, 100, 101, 102
CATEGORIES = [
    {"id": A, "name": "A", "isthing": 1},
    {"id": B, "name": "B", "isthing": 1},
    {"id": S, "name": "S", "isthing": 0},
    {"id": T, "name": "T", "isthing": 0},
    {"id": U, "name": "U", "isthing": 0},
]


def segs(*pairs, crowd=()):
    """segments_info from (id, category_id) pairs; ids in ``crowd`` get iscrowd 1."""
    return [{"id": i, "category_id": c, "iscrowd": int(i in crowd)} for i, c in pairs]


def score(gt, gt_segs, pred, pred_segs):
    pq = PanopticQuality(CATEGORIES)
    pq.update(gt, gt_segs, pred, pred_segs, image_id=7)
    return pq.summarize()


def counts(results, category_id):
    r = results["per_class"][category_id]
    return r["tp"], r["fp"], r["fn"], r["iou_sum"]


def blank(fill=0):
    return np.full((10, 10), fill, dtype=np.int32)


def scene_two_people():
    """Top half (rows 0-4) stuff S (50 px), bottom half stuff T except two people:
    A1 (id 1) rows 5-9 x cols 0-5 = 30 px, A2 (id 2) rows 5-9 x cols 6-7 = 10 px;
    T (id 11) rows 5-9 x cols 8-9 = 10 px."""
    gt = blank(10)
    gt[5:, :] = 11
    gt[5:, 0:6] = 1
    gt[5:, 6:8] = 2
    return gt, segs((1, A), (2, A), (10, S), (11, T))


def test_identical_maps_give_pq_one():
    gt, gt_segs = scene_two_people()
    results = score(gt, gt_segs, gt.copy(), gt_segs)
    assert counts(results, A) == (2, 0, 0, 2.0)
    for group, n in (("All", 3), ("Things", 1), ("Stuff", 2)):
        assert results[group] == {"pq": 1.0, "sq": 1.0, "rq": 1.0, "n": n}


def test_dropped_segment_is_a_false_negative():
    gt, gt_segs = scene_two_people()
    pred = gt.copy()
    pred[pred == 2] = 0  # A2 not predicted (void)
    pred_segs = segs((1, A), (10, S), (11, T))
    results = score(gt, gt_segs, pred, pred_segs)
    # A: A1 matched with IoU 1; A2 missed -> tp 1, fn 1.
    assert counts(results, A) == (1, 0, 1, 1.0)
    pq_a = 1.0 / (1 + 0.5 * 1)  # = 2/3
    assert results["per_class"][A]["pq"] == pytest.approx(pq_a)
    assert results["per_class"][A]["sq"] == pytest.approx(1.0)
    assert results["per_class"][A]["rq"] == pytest.approx(2 / 3)
    # S and T unchanged (IoU 1 each); All = mean of A, S, T.
    assert results["All"]["pq"] == pytest.approx((2 / 3 + 1 + 1) / 3)
    assert results["Things"]["n"] == 1 and results["Stuff"]["pq"] == pytest.approx(1.0)


def test_merged_segments_match_the_larger_one_only():
    gt, gt_segs = scene_two_people()
    pred = gt.copy()
    pred[pred == 2] = 1  # A1 and A2 predicted as one segment of 40 px
    pred_segs = segs((1, A), (10, S), (11, T))
    results = score(gt, gt_segs, pred, pred_segs)
    # vs A1: |∩| = 30, union = 40 + 30 - 30 = 40, IoU = 0.75 > 0.5 -> tp.
    # vs A2: |∩| = 10, union = 40 + 10 - 10 = 40, IoU = 0.25 -> A2 is a fn.
    assert counts(results, A) == (1, 0, 1, pytest.approx(0.75))
    assert results["per_class"][A]["pq"] == pytest.approx(0.75 / (1 + 0.5))  # 0.5
    assert results["per_class"][A]["sq"] == pytest.approx(0.75)
    assert results["per_class"][A]["rq"] == pytest.approx(1 / 1.5)


def test_iou_of_exactly_one_half_is_not_a_match():
    # Two 20 px people merged into one 40 px prediction: IoU = 20 / 40 = 0.5 with each, not > 0.5.
    gt = blank(10)
    gt[5:, 0:4] = 1
    gt[5:, 4:8] = 2
    gt[5:, 8:] = 11
    gt_segs = segs((1, A), (2, A), (10, S), (11, T))
    pred = gt.copy()
    pred[pred == 2] = 1
    results = score(gt, gt_segs, pred, segs((1, A), (10, S), (11, T)))
    # A: no tp, both people fn, the merged segment a fp (it lies on no void or crowd).
    assert counts(results, A) == (0, 1, 2, 0.0)
    assert results["per_class"][A]["pq"] == 0.0


def scene_one_person():
    """Stuff S everywhere except person A (id 1) at rows 2-6 x cols 2-5 = 20 px; S = 80 px."""
    gt = blank(10)
    gt[2:7, 2:6] = 1
    return gt, segs((1, A), (10, S))


def test_shift_that_keeps_iou_above_one_half():
    gt, gt_segs = scene_one_person()
    pred = blank(10)
    pred[2:7, 3:7] = 1  # shifted right by one column
    results = score(gt, gt_segs, pred, gt_segs)
    # A: |∩| = 5 rows x 3 cols = 15, union = 20 + 20 - 15 = 25, IoU = 15/25 = 0.6 -> tp.
    assert counts(results, A) == (1, 0, 0, pytest.approx(0.6))
    # S: gt 80, pred 80, ∩ = 100 - |A_gt ∪ A_pred| = 100 - 25 = 75, union = 80 + 80 - 75 = 85.
    assert counts(results, S) == (1, 0, 0, pytest.approx(75 / 85))
    assert results["Things"]["pq"] == pytest.approx(0.6)
    assert results["All"]["pq"] == pytest.approx((0.6 + 75 / 85) / 2)
    assert results["All"]["rq"] == pytest.approx(1.0)


def test_shift_that_drops_iou_below_one_half():
    gt, gt_segs = scene_one_person()
    pred = blank(10)
    pred[2:7, 4:8] = 1  # shifted right by two columns
    results = score(gt, gt_segs, pred, gt_segs)
    # A: |∩| = 5 x 2 = 10, union = 20 + 20 - 10 = 30, IoU = 1/3 -> the GT is a fn, the pred a fp.
    assert counts(results, A) == (0, 1, 1, 0.0)
    # S: ∩ = 100 - |A_gt ∪ A_pred| = 100 - 30 = 70, union = 80 + 80 - 70 = 90.
    assert counts(results, S) == (1, 0, 0, pytest.approx(70 / 90))
    assert results["Things"] == {"pq": 0.0, "sq": 0.0, "rq": 0.0, "n": 1}
    assert results["All"]["pq"] == pytest.approx((0 + 7 / 9) / 2)


def test_relabelled_thing():
    gt, gt_segs = scene_one_person()
    results = score(gt, gt_segs, gt.copy(), segs((1, B), (10, S)))
    # A: fn 1 (nothing of class A predicted); B: fp 1; S: tp with IoU 1.
    assert counts(results, A) == (0, 0, 1, 0.0)
    assert counts(results, B) == (0, 1, 0, 0.0)
    assert counts(results, S) == (1, 0, 0, 1.0)
    # Things average A and B (both 0), All averages A, B, S.
    assert results["Things"] == {"pq": 0.0, "sq": 0.0, "rq": 0.0, "n": 2}
    assert results["All"]["pq"] == pytest.approx(1 / 3)
    assert results["All"]["n"] == 3


def test_relabelled_stuff():
    gt = blank(10)
    gt[5:, :] = 11  # S top (id 10, 50 px), T bottom (id 11, 50 px)
    gt_segs = segs((10, S), (11, T))
    results = score(gt, gt_segs, gt.copy(), segs((10, U), (11, T)))
    # S: fn 1; U: fp 1; T: tp with IoU 1. Three stuff classes, PQ 0, 0, 1.
    assert counts(results, S) == (0, 0, 1, 0.0)
    assert counts(results, U) == (0, 1, 0, 0.0)
    assert counts(results, T) == (1, 0, 0, 1.0)
    assert results["Stuff"]["pq"] == pytest.approx(1 / 3)
    assert results["Stuff"]["n"] == 3
    assert results["Things"]["n"] == 0


def test_void_band_is_left_out_of_the_union():
    # GT: rows 0-1 void. A = rows 2-4 x cols 0-3 (12 px), S = rest of rows 2-9 (80 - 12 = 68 px).
    gt = blank(10)
    gt[:2, :] = 0
    gt[2:5, 0:4] = 1
    gt_segs = segs((1, A), (10, S))
    # Prediction ignores the band: A = rows 0-4 x cols 0-3 (20 px), S = every other pixel (80 px).
    pred = blank(10)
    pred[0:5, 0:4] = 1
    results = score(gt, gt_segs, pred, gt_segs)
    # A: |∩| = 12, |pred ∩ void| = 2 x 4 = 8, union = 20 + 12 - 12 - 8 = 12, IoU = 1
    #    (without the void rule it would be 12 / 20 = 0.6).
    assert counts(results, A) == (1, 0, 0, pytest.approx(1.0))
    # S: |∩| = 68, |pred ∩ void| = 2 x 6 = 12, union = 80 + 68 - 68 - 12 = 68, IoU = 1.
    assert counts(results, S) == (1, 0, 0, pytest.approx(1.0))
    assert results["All"]["pq"] == pytest.approx(1.0)


def test_prediction_on_a_crowd_region_is_not_a_false_positive():
    # GT: crowd of A (id 5) rows 0-4 (50 px), S rows 5-9 (50 px).
    gt = blank(10)
    gt[:5, :] = 5
    gt_segs = segs((5, A), (10, S), crowd={5})
    # Prediction: A (id 1) rows 0-3 inside the crowd (40 px), B (id 2) row 4 (10 px, also on the
    # crowd but of another class), S rows 5-9.
    pred = blank(10)
    pred[0:4, :] = 1
    pred[4, :] = 2
    results = score(gt, gt_segs, pred, segs((1, A), (2, B), (10, S)))
    # A: the crowd segment is never matched (as a normal segment the IoU would be 40/50 = 0.8)
    #    and never a fn; the prediction lies 40/40 = 100% > 50% on A's crowd -> not a fp.
    #    So A has tp + fp + fn = 0 and is left out of the averages.
    assert A not in results["per_class"]
    # B: 10 px on A's crowd only, 0 px on void or B's crowd -> fp.
    assert counts(results, B) == (0, 1, 0, 0.0)
    assert counts(results, S) == (1, 0, 0, 1.0)
    assert results["All"]["n"] == 2
    assert results["All"]["pq"] == pytest.approx((0 + 1) / 2)


@pytest.mark.parametrize("top_row, on_void, is_fp, s_iou", [
    # A prediction of 4 rows x 5 cols = 20 px starting at top_row; GT void is rows 0-4.
    (3, 10, True, 40 / 50),   # rows 3-6: 10 px on void = exactly half -> still a fp
    (2, 15, False, 45 / 50),  # rows 2-5: 15 px on void = 75% > 50% -> ignored
])
def test_prediction_half_in_void(top_row, on_void, is_fp, s_iou):
    gt = blank(10)
    gt[:5, :] = 0  # void rows 0-4, S rows 5-9 (50 px)
    gt_segs = segs((10, S))
    pred = gt.copy()
    pred[top_row:top_row + 4, 0:5] = 1  # spurious A; pred S keeps 50 - (20 - on_void) px
    results = score(gt, gt_segs, pred, segs((1, A), (10, S)))
    if is_fp:
        assert counts(results, A) == (0, 1, 0, 0.0)
    else:
        assert A not in results["per_class"]
    # S: |∩| = |pred S| = 50 - (20 - on_void), union = |gt S| = 50.
    assert 50 - (20 - on_void) == round(s_iou * 50)
    assert counts(results, S) == (1, 0, 0, pytest.approx(s_iou))


def test_counts_accumulate_over_images():
    gt, gt_segs = scene_two_people()
    pred = gt.copy()
    pred[pred == 2] = 0
    pred_segs = segs((1, A), (10, S), (11, T))
    pq = PanopticQuality(CATEGORIES)
    for image_id in (1, 2, 3):
        image_stats = pq.update(gt, gt_segs, pred, pred_segs, image_id=image_id)
        assert (image_stats[A].tp, image_stats[A].fn) == (1, 1)
    results = pq.summarize()
    assert counts(results, A) == (3, 0, 3, 3.0)
    assert results["per_class"][A]["pq"] == pytest.approx(3 / (3 + 1.5))
    assert pq.num_images == 3


@pytest.mark.parametrize("change, message", [
    ("shape", "prediction is 10x9 but the ground truth is 10x10"),
    ("unknown_category", "unknown category_id 55"),
    ("json_not_png", r"ids \[99\] are in segments_info but not in the PNG"),
    ("png_not_json", r"ids \[11\] are in the PNG but not in segments_info"),
    ("duplicate", "segment id 10 twice"),
    ("void_id", "id 0"),
])
def test_bad_input_errors_name_the_problem(change, message):
    gt, gt_segs = scene_two_people()
    pred, pred_segs = gt.copy(), [dict(s) for s in gt_segs]
    if change == "shape":
        pred = pred[:, :9]
    elif change == "unknown_category":
        pred_segs[0]["category_id"] = 55
    elif change == "json_not_png":
        pred_segs.append({"id": 99, "category_id": A})
    elif change == "png_not_json":
        pred_segs = [s for s in pred_segs if s["id"] != 11]
    elif change == "duplicate":
        pred_segs.append({"id": 10, "category_id": S})
    elif change == "void_id":
        pred_segs.append({"id": 0, "category_id": S})
    with pytest.raises(ValueError, match=message) as info:
        match_segments(gt, gt_segs, pred, pred_segs, categories={c["id"]: c for c in CATEGORIES},
                       image_id=42)
    assert "image 42" in str(info.value)
