"""segfpn on detectron2's mini Panoptic FPN reproduces detectron2's own outputs, stage by stage,
at every image size.

Reference arrays: tests/data/d2_mini (made by the real detectron2, see its README), three sizes with
every stage stored. At further sizes (the fixture photos resized, to sizes nobody picked) the
stages that detectron2 defines by formula are compared with its arithmetic
(tests/detectron2_rules.py): the input size, the anchors and the level of every RoI. Tolerances
are the ones the fixture's README suggests, from what detectron2 itself varies by.
"""

import json

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.ops import box_iou

import segfpn
from segfpn.evaluation.agreement import compare_detections, mask_iou
from segfpn.evaluation.panoptic_quality import PanopticQuality
from segfpn.model.postprocess import semantic_logits_to_image
from segfpn.model.preprocess import preprocess
from segfpn.model.semantic_head import upsample_logits

import detectron2_rules
from testdata import D2_MINI

# The settings detectron2 ran with (README "Inference settings"): only these differ from the zoo.
REFERENCE_OVERRIDES = {"box_head": {"score_threshold": 0.01}, "panoptic": {"instance_score_threshold": 0.6}}
CASES = ["astronaut", "coffee", "coffee_crop_301x517"]
#: (width, height) of the fixture photos resized: COCO's commonest sizes, a panorama, a tall strip,
#: and seeded random sizes.
FORMULA_SIZES = [(640, 427), (427, 640), (500, 375), (1333, 200), (300, 2000)]
FORMULA_SIZES += [tuple(int(v) for v in np.random.default_rng(77 + i).integers(100, 2200, size=2)) for i in range(3)]


@pytest.fixture(scope="module")
def predictor(d2_mini_checkpoint):
    return segfpn.load(d2_mini_checkpoint, device="cpu", overrides=REFERENCE_OVERRIDES)


@pytest.fixture(scope="module", params=CASES)
def case(request, predictor):
    ref = dict(np.load(D2_MINI / f"{request.param}.npz"))
    batch = preprocess([ref["image_rgb"]], predictor.config.input)
    with torch.inference_mode():
        outputs = predictor.model(batch)
    result = predictor.predict(ref["image_rgb"])
    return request.param, ref, batch, outputs, result


def test_checkpoint_recognised_and_fully_loaded(predictor):
    assert predictor.arch == "panoptic_fpn_R_50"
    assert predictor.report.ok and len(predictor.report.matched) == 330
    cfg = predictor.config
    assert cfg.backbone.stride_in_1x1 and cfg.input.channel_order == "bgr" and cfg.pooler.aligned
    assert (cfg.backbone.stem_channels, cfg.fpn.out_channels, cfg.semantic_head.conv_channels) == (16, 16, 64)


def test_resize_and_padding(case):
    name, ref, batch, _, _ = case
    assert batch.image_sizes[0] == tuple(ref["resized_hw"])
    assert batch.padded_size == tuple(ref["padded_hw"])
    resized = np.asarray(Image.open(D2_MINI / f"resized_{name}.png"))
    assert np.array_equal(detectron2_rules.resized_input_uint8(batch), resized)


def test_pyramid_features(case):
    _, ref, _, outputs, _ = case
    for level in ("p2", "p3", "p4", "p5", "p6"):
        np.testing.assert_allclose(outputs.pyramid[level][0].numpy(), ref[f"fpn_{level}"], rtol=1e-3, atol=1e-3)


def test_proposals_match_as_a_set(case):
    _, ref, _, outputs, _ = case
    ours = outputs.proposals[0]
    ref_boxes = torch.from_numpy(ref["proposal_boxes"])
    assert len(ours.boxes) == len(ref_boxes)
    iou = box_iou(ref_boxes, ours.boxes)
    best, index = iou.max(dim=1)
    assert (best > 0.999).float().mean() >= 0.998  # near-ties may swap one pair at the cut
    matched = best > 0.999
    np.testing.assert_allclose(ours.objectness[index[matched]].numpy(),
                               ref["proposal_objectness_logits"][matched.numpy()], atol=1e-3)


def test_box_head_probabilities_on_reference_proposals(predictor):
    # detectron2 stored the classifier's probabilities for the astronaut case only.
    ref = dict(np.load(D2_MINI / "astronaut.npz"))
    heads = predictor.model.roi_heads
    with torch.inference_mode():
        outputs = predictor.model(preprocess([ref["image_rgb"]], predictor.config.input))
        pooled, levels = heads.box_pooler(outputs.pyramid, [torch.from_numpy(ref["proposal_boxes"])])
        logits, _ = heads.box_predictor(heads.box_head(pooled))
    assert np.array_equal(levels.numpy() - 2, ref["proposal_levels"])
    np.testing.assert_allclose(torch.softmax(logits, -1).numpy(), ref["roi_cls_probs"], atol=1e-4)


def test_detections_in_input_coordinates(case):
    _, ref, _, outputs, _ = case
    det = outputs.instances[0]
    assert np.array_equal(det.labels.numpy(), ref["det_classes_input"])
    np.testing.assert_allclose(det.boxes.numpy(), ref["det_boxes_input"], atol=1e-2)
    np.testing.assert_allclose(det.scores.numpy(), ref["det_scores_input"], atol=1e-3)
    np.testing.assert_allclose(det.mask_probs.numpy(), ref["det_mask_probs"], atol=1e-2)


def test_final_instances(case, parity_figures):
    name, ref, _, _, result = case
    inst = result.instances
    agreement = compare_detections(
        {"boxes": ref["pred_boxes"], "scores": ref["scores"], "labels": ref["pred_classes"],
         "masks": ref["pred_masks"]},
        {"boxes": inst.boxes, "scores": inst.scores, "labels": inst.labels, "masks": np.asarray(inst.masks)})
    parity_figures("detectron2 mini", f"{ref['image_hw'][1]}x{ref['image_hw'][0]}", agreement.to_dict())
    assert agreement.matched == 100, agreement
    assert len(inst) == len(ref["scores"]) == 100
    assert np.array_equal(inst.labels, ref["pred_classes"])
    np.testing.assert_allclose(inst.boxes, ref["pred_boxes"], atol=1e-2)
    np.testing.assert_allclose(inst.scores, ref["scores"], atol=1e-3)
    assert mask_iou(np.asarray(inst.masks), ref["pred_masks"]).min() >= 0.98
    assert set(np.unique(inst.levels)) <= {2, 3, 4, 5}


def test_semantic_logits_and_argmax(case, predictor):
    _, ref, batch, outputs, result = case
    padded = upsample_logits(outputs.semantic_logits, outputs.semantic_stride)
    assert tuple(padded.shape) == tuple(ref["sem_seg_padded_shape"])
    logits = semantic_logits_to_image(padded[0], batch.image_sizes[0], tuple(ref["image_hw"]))
    np.testing.assert_allclose(logits[:, ::8, ::8].numpy(), ref["sem_seg_logits_sub8"], rtol=1e-3, atol=1e-3)
    confident = ref["sem_seg_margin"].astype(np.float32) > 1e-3
    agree = result.semantic.labels == ref["sem_seg_argmax"]
    assert agree[confident].all()
    assert agree.mean() >= 0.995


def test_panoptic_segments(case):
    _, ref, _, _, result = case
    ref_info = json.loads(str(ref["segments_info_json"]))
    ours = result.panoptic
    # Same segments in the same order: things by score, then stuff by label.
    assert [(s.isthing, s.label) for s in ours.segments] == [(s["isthing"], s["category_id"]) for s in ref_info]
    assert [s.instance for s in ours.segments if s.isthing] == [s["instance_id"] for s in ref_info if s["isthing"]]
    assert (ours.segment_ids == ref["panoptic_seg"]).mean() >= 0.999
    # PQ of ours against theirs; things keep their label, stuff labels are moved past them.
    def category(isthing, label):
        return label if isthing else 1000 + label

    ref_segments = [{"id": s["id"], "category_id": category(s["isthing"], s["category_id"]), "iscrowd": 0,
                     "isthing": s["isthing"]} for s in ref_info]
    our_segments = [{"id": s.id, "category_id": category(s.isthing, s.label)} for s in ours.segments]
    categories = {(s["category_id"], s["category_id"] < 1000) for s in ref_segments + our_segments}
    pq = PanopticQuality([{"id": c, "isthing": t} for c, t in categories])
    pq.update(ref["panoptic_seg"], ref_segments, ours.segment_ids, our_segments)
    assert pq.summarize()["All"]["pq"] >= 0.98


@pytest.mark.parametrize("size", FORMULA_SIZES, ids=[f"{w}x{h}" for w, h in FORMULA_SIZES])
def test_stages_defined_by_formula_at_more_sizes(predictor, size):
    ref = dict(np.load(D2_MINI / ("astronaut.npz" if FORMULA_SIZES.index(size) % 2 else "coffee.npz")))
    image = np.asarray(Image.fromarray(ref["image_rgb"]).resize(size, Image.BILINEAR))
    cfg = predictor.config
    batch = preprocess([image], cfg.input)
    resized = detectron2_rules.output_shape(size[1], size[0], cfg.input.min_size, cfg.input.max_size)
    assert batch.image_sizes[0] == resized
    assert batch.padded_size == tuple(-(-s // 32) * 32 for s in resized)
    with torch.inference_mode():
        outputs = predictor.model(batch)
    # Anchors, on the grids the model's own pyramid has at this size.
    strides = predictor.model.fpn.strides
    grids = [tuple(outputs.pyramid[name].shape[-2:]) for name in strides]
    anchors = predictor.model.rpn.anchor_generator(grids, batch.padded_size)
    for grid, stride, size_px, ours in zip(grids, strides.values(), cfg.rpn.anchor_sizes, anchors):
        cell = detectron2_rules.cell_anchors(size_px, cfg.rpn.aspect_ratios)
        assert torch.equal(ours, detectron2_rules.grid_anchors(grid, stride, cfg.rpn.anchor_offset, cell))
    # The level of every box RoI (proposals) and mask RoI (final boxes) the model pooled.
    proposals = outputs.proposals[0].boxes
    det = outputs.instances[0]
    assert len(proposals) > 100 and len(det.boxes) > 10
    rule = dict(min_level=cfg.pooler.min_level, max_level=cfg.pooler.max_level,
                canonical_box_size=cfg.pooler.canonical_size, canonical_level=cfg.pooler.canonical_level)
    _, box_levels = predictor.model.roi_heads.box_pooler(outputs.pyramid, [proposals])
    assert torch.equal(box_levels, detectron2_rules.assign_levels(proposals, **rule))
    assert torch.equal(det.levels, detectron2_rules.assign_levels(det.boxes, **rule))
