"""Explaining one detection and re-running the RoI heads with another level rule, on the bundled
model (trained: its detections are real) and on detectron2's mini Panoptic FPN (detectron2's
RoIAlign, level epsilon and clipping)."""

import dataclasses

import numpy as np
import pytest
import torch
from testdata import D2_MINI, EXAMPLES, ROOT, load_rgb

import segfpn
from segfpn.explain import NoRoIsError, box_mean, level_rule_for_box
from segfpn.model.rpn import Proposals

BUNDLED = ROOT / "weights" / "synthetic_panoptic_fpn.safetensors"
SYNTHETIC = [EXAMPLES / f"synthetic_shapes_{i}.png" for i in range(3)]


def assert_same_instances(a, b):
    assert len(a) == len(b)
    for name in ("boxes", "scores", "labels", "levels", "box_levels", "mask_probs"):
        assert np.array_equal(getattr(a, name), getattr(b, name)), name
    assert (a.masks is None) == (b.masks is None)
    if a.masks is not None:
        assert np.array_equal(a.masks.regions, b.masks.regions)
        assert all(np.array_equal(x, y) for x, y in zip(a.masks.crops, b.masks.crops))


def test_inspection_result_is_the_predict_result(bundled, inspection):
    assert_same_instances(inspection.result.instances, bundled.predict(SYNTHETIC[1]).instances)
    assert inspection.levels == [2, 3, 4, 5, 6]
    assert list(inspection.pyramid) == ["p2", "p3", "p4", "p5", "p6"]


def test_heads_only_rerun_with_the_same_rule_gives_the_original_detections(bundled, inspection):
    same = bundled.what_if(inspection)
    assert_same_instances(same.instances, inspection.result.instances)
    n = len(inspection.result.instances)
    assert n > 5
    assert same.counts == {"kept": n, "moved": 0, "lost": 0, "new": 0}
    assert np.array_equal(same.match, np.arange(n)) and np.all(same.box_iou == 1) and np.all(same.mask_iou == 1)
    assert same.timings["heads"] > 0 and same.seconds >= same.timings["heads"]


@pytest.mark.parametrize("level", [2, 3, 4, 5])
def test_forced_level_equals_a_model_with_that_level_hard_wired(bundled, inspection, level):
    hard_wired = segfpn.load(BUNDLED, device="cpu", overrides={"pooler": {"min_level": level, "max_level": level}})
    full = hard_wired.predict(SYNTHETIC[1])
    forced = bundled.what_if(inspection, level=level)
    assert_same_instances(forced.instances, full.instances)
    assert set(forced.instances.levels.tolist()) <= {level}
    assert forced.rule == hard_wired.config.pooler
    # predict(level_override=) is the same run, panoptic fusion included.
    overridden = bundled.predict(SYNTHETIC[1], level_override=level)
    assert_same_instances(overridden.instances, full.instances)
    assert np.array_equal(overridden.panoptic.segment_ids, full.panoptic.segment_ids)


def test_other_k0_and_s0_equal_a_model_configured_so(bundled, inspection):
    configured = segfpn.load(BUNDLED, device="cpu",
                             overrides={"pooler": {"canonical_level": 3, "canonical_size": 96.0}})
    full = configured.predict(SYNTHETIC[1])
    changed = bundled.what_if(inspection, canonical_level=3, canonical_size=96)
    assert_same_instances(changed.instances, full.instances)
    assert_same_instances(bundled.predict(SYNTHETIC[1], canonical_level=3, canonical_size=96).instances, full.instances)
    # Every original detection has a status, and the counts add up on both sides.
    counts = changed.counts
    assert counts["kept"] + counts["moved"] + counts["lost"] == len(inspection.result.instances)
    assert counts["kept"] + counts["moved"] + counts["new"] == len(changed.instances)
    assert len(changed.rows()) == len(inspection.result.instances) + counts["new"]


@torch.inference_mode()
def test_explanation_of_every_detection(bundled, inspection):
    instances = inspection.result.instances
    model = bundled.model
    rule = bundled.config.pooler
    for i in range(len(instances)):
        e = bundled.explain(inspection, i)
        assert (e.label, e.score, e.level, e.box_level) == (instances.labels[i], instances.scores[i],
                                                            instances.levels[i], instances.box_levels[i])
        assert np.array_equal(e.mask_probs, instances.mask_probs[i])
        # The rules worked out give the levels the model pooled from.
        assert e.mask_rule.level == e.level and e.box_rule.level == e.box_level
        assert e.mask_rule == level_rule_for_box(e.input_box, rule)
        # The proposal found is the one the detection came from: the RoI heads on it alone give this detection.
        alone = model.detect(inspection.pyramid, [Proposals(boxes=torch.from_numpy(e.proposal_box[None]),
                                                            objectness=torch.zeros(1))], [inspection.input_size])[0]
        hit = np.flatnonzero(alone.labels.numpy() == e.label)
        assert len(hit) == 1
        assert np.allclose(alone.boxes[hit[0]].numpy(), e.input_box, atol=1e-4)
        assert alone.scores[hit[0]].item() == pytest.approx(e.score, abs=1e-5)
        # The grids of its own level are what the model's poolers give.
        for grids, box, pooler in ((e.box_grids, e.proposal_box, model.roi_heads.box_pooler),
                                   (e.mask_grids, e.input_box, model.roi_heads.mask_pooler)):
            own_level = int(grids.levels[grids.own])
            pooled, levels = pooler(inspection.pyramid, [torch.from_numpy(box[None])], config=rule)
            assert levels.item() == own_level
            assert np.allclose(grids.mean_abs[grids.own], pooled[0].abs().mean(dim=0).numpy(), atol=1e-6)
            expected = [k for k in (own_level - 1, own_level, own_level + 1) if 2 <= k <= 6]
            assert grids.levels.tolist() == expected
            assert grids.value_range == (grids.mean_abs.min(), grids.mean_abs.max())
            assert grids.pca.shape == (len(expected), grids.size, grids.size, 3)
            assert np.allclose(grids.pca_range[:, 0], grids.pca.reshape(-1, 3).min(axis=0))
        assert (e.box_grids.size, e.mask_grids.size) == (7, 14)
        assert e.pyramid_levels.tolist() == [2, 3, 4, 5, 6] and np.all(np.isfinite(e.box_activation))


def test_box_mean_weights_cells_by_their_overlap():
    values = np.arange(24, dtype=np.float32).reshape(4, 6)
    stride = 8
    # Cells (rows 1-2, cols 2-3) whole: the plain mean of 8, 9, 14, 15.
    assert box_mean(values, np.array([16, 8, 32, 24]), stride=stride) == pytest.approx(11.5)
    # Half of column 1 and all of column 2 in row 0: (0.5 * 1 + 1 * 2) / 1.5.
    assert box_mean(values, np.array([12, 0, 24, 8]), stride=stride) == pytest.approx(2.5 / 1.5)
    # Seeded random boxes against the mean over a 1/8-cell raster of the box.
    rng = np.random.default_rng(0)
    fine = np.repeat(np.repeat(values, 8, axis=0), 8, axis=1)  # one value per 1 px of network input
    for _ in range(50):
        x0, y0 = rng.integers(0, 40), rng.integers(0, 24)
        x1, y1 = x0 + rng.integers(1, 48 - x0 + 1), y0 + rng.integers(1, 32 - y0 + 1)
        expected = fine[y0:y1, x0:x1].mean()
        assert box_mean(values, np.array([x0, y0, x1, y1], float), stride=stride) == pytest.approx(expected)
    assert np.isnan(box_mean(values, np.array([100, 100, 120, 120]), stride=stride))


def test_mean_abs_maps_and_box_activation(bundled, inspection):
    p3 = inspection.pyramid["p3"][0]
    assert np.allclose(inspection.mean_abs(3), p3.abs().mean(dim=0).numpy())
    e = bundled.explain(inspection, 0)
    for k, value in zip(e.pyramid_levels.tolist(), e.box_activation.tolist()):
        assert value == pytest.approx(box_mean(inspection.mean_abs(k), e.input_box, stride=2**k), rel=1e-6)


def test_detection_rows_give_the_size_the_rule_reads(bundled, inspection):
    rows = inspection.rows()
    instances = inspection.result.instances
    assert len(rows) == len(instances) and [r["level"] for r in rows] == instances.levels.tolist()
    for row in rows[:5]:
        e = bundled.explain(inspection, row["index"])
        assert row["size"] == pytest.approx(e.mask_rule.size, rel=1e-6)
        assert (row["class_name"], row["score"], row["box_level"]) == (e.class_name, e.score, e.box_level)
    # The network-pixel boxes are the image boxes scaled by the resize.
    (h, w), (height, width) = inspection.input_size, inspection.image_size
    scale = np.array([w / width, h / height, w / width, h / height])
    assert np.allclose(instances.boxes * scale, inspection.input_boxes, atol=1e-3)


def test_explain_refuses_what_does_not_exist(bundled, inspection):
    n = len(inspection.result.instances)
    for bad in (n, -1, 1.0, True, "0"):
        with pytest.raises(IndexError, match=f"this image has {n} detections"):
            bundled.explain(inspection, bad)
    other = segfpn.load(BUNDLED, device="cpu")
    with pytest.raises(ValueError, match="made by another model"):
        other.what_if(inspection, level=3)
    fresh = dataclasses.replace(inspection, proposal_index=None)
    with pytest.raises(ValueError, match="made by another model"):
        other.explain(fresh, 0)
    with pytest.raises(ValueError, match="level must be one of"):
        bundled.what_if(inspection, level=7)
    with pytest.raises(ValueError, match="level must be one of"):
        bundled.predict(SYNTHETIC[1], level_override=1)
    with pytest.raises(TypeError, match="does not keep the pyramid"):
        bundled.explain(inspection.result, 0)


@pytest.fixture(scope="module")
def d2_mini():
    # detectron2's settings: aligned RoIAlign, adaptive sampling, log epsilon, boxes clipped to the image.
    return segfpn.load(D2_MINI / "panoptic_fpn_mini.pkl", device="cpu",
                       overrides={"box_head": {"score_threshold": 0.0}, "input": {"min_size": 320, "max_size": 480}})


def test_detectron2_settings_rerun_and_forced_level(d2_mini):
    image = load_rgb("coffee.png")
    inspection = d2_mini.inspect(image)
    assert len(inspection.result.instances) == 100 and d2_mini.config.box_head.clip_output_boxes
    assert_same_instances(d2_mini.what_if(inspection).instances, inspection.result.instances)
    hard_wired = segfpn.load(D2_MINI / "panoptic_fpn_mini.pkl", device="cpu",
                             overrides={"box_head": {"score_threshold": 0.0},
                                        "input": {"min_size": 320, "max_size": 480},
                                        "pooler": {"min_level": 3, "max_level": 3}})
    assert_same_instances(d2_mini.what_if(inspection, level=3).instances, hard_wired.predict(image).instances)
    e = d2_mini.explain(inspection, 7)
    assert e.mask_rule.level_log_epsilon == 1e-8 and e.mask_rule.level_epsilon == 0.0
    assert e.mask_rule.level == e.level and e.box_rule.level == e.box_level


def test_a_model_without_rois_is_refused_where_rois_are_asked_for():
    from segfpn.categories import CategorySet
    from segfpn.config import BackboneConfig, FPNConfig, torchvision_retinanet_v1
    from segfpn.data.synthetic import synthetic_categories
    from segfpn.model.build import build_model

    torch.manual_seed(0)
    config = torchvision_retinanet_v1().replace(
        num_classes=4, backbone=BackboneConfig(depth=18, stem_channels=8, res2_out_channels=8, bottleneck_channels=8,
                                               norm="gn", norm_groups=4),
        fpn=FPNConfig(out_channels=16, in_features=("c3", "c4", "c5"), top_block="p6p7_from_p5"))
    config = config.with_overrides({"input": {"min_size": 128, "max_size": 160}})
    categories = synthetic_categories()
    retinanet = segfpn.Predictor(build_model(config), CategorySet(things=categories.things, stuff=()), device="cpu")
    for call in (lambda: retinanet.inspect(SYNTHETIC[0]), lambda: retinanet.predict(SYNTHETIC[0], level_override=3),
                 lambda: retinanet.what_if(SYNTHETIC[0], level=3)):
        with pytest.raises(NoRoIsError, match="no RoIs"):
            call()
    # Where levels need no RoIs, it works: anchor levels 3..7.
    sweep = retinanet.scale_sweep(SYNTHETIC[0], [96, 128], score_threshold=0.0)
    assert sweep.levels.tolist() == [3, 4, 5, 6, 7] and sweep.counts.sum() > 0


def test_a_model_without_masks_is_explained_by_its_boxes():
    from testdata import DATA

    settings = {"box_head": {"score_threshold": 0.0}, "input": {"min_size": 320, "max_size": 480}}
    checkpoint = DATA / "d2_faster_rcnn_mini" / "faster_rcnn_mini.pkl"
    faster = segfpn.load(checkpoint, device="cpu", overrides=settings)
    image = load_rgb("coffee.png")
    inspection = faster.inspect(image)
    assert inspection.result.instances.masks is None and len(inspection.result.instances) == 100
    e = faster.explain(inspection, 3)
    assert e.mask_grids is None and e.mask_probs is None and e.box_grids.size == 7
    assert e.mask_rule.level == e.level and e.box_rule.level == e.box_level
    same = faster.what_if(inspection)
    assert same.counts["kept"] == 100 and np.all(np.isnan(same.mask_iou))
    hard_wired = segfpn.load(checkpoint, device="cpu",
                             overrides={**settings, "pooler": {"min_level": 4, "max_level": 4}})
    assert_same_instances(faster.what_if(inspection, level=4).instances, hard_wired.predict(image).instances)
