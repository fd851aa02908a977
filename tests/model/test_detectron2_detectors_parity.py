"""segfpn on detectron2's mini RetinaNet and mini Faster R-CNN reproduces detectron2's own outputs,
stage by stage.

Reference arrays: tests/data/d2_retinanet_mini and tests/data/d2_faster_rcnn_mini (made by the real
detectron2 from model-zoo-format files, see their READMEs): the resize, every pyramid level, the
RetinaNet head's raw outputs on p6/p7, its per-level candidates and detections with the level and
anchor of each; the Faster R-CNN proposals, the box classifier on every proposal and the
detections with the proposal of each. At further sizes the stages detectron2 defines by formula
(input size, anchors) are compared with its arithmetic (tests/detectron2_rules.py). Tolerances are
the fixture READMEs' suggestions unless a comment says otherwise.
"""

import json

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.ops import box_iou

import segfpn
from segfpn.evaluation.agreement import compare_detections
from segfpn.model.preprocess import preprocess
from segfpn.model.retinanet import level_candidates, select_dense_detections
from segfpn.model.rpn import Proposals

import detectron2_rules
from testdata import D2_MINI, DATA

RETINANET = DATA / "d2_retinanet_mini"
FASTER_RCNN = DATA / "d2_faster_rcnn_mini"
RETINANET_CASES = ["astronaut", "coffee", "coffee_crop_301x517"]
FASTER_RCNN_CASES = ["astronaut", "coffee_crop_301x517"]
#: The Faster R-CNN fixture ran with ROI_HEADS.SCORE_THRESH_TEST 0.01 (model zoo: 0.05).
FASTER_RCNN_OVERRIDES = {"box_head": {"score_threshold": 0.01}}
#: (width, height) of the fixture photos resized: COCO's commonest sizes, a panorama, a tall strip,
#: and seeded random sizes.
FORMULA_SIZES = [(640, 427), (427, 640), (1333, 200), (300, 2000)]
FORMULA_SIZES += [tuple(int(v) for v in np.random.default_rng(91 + i).integers(100, 2200, size=2)) for i in range(2)]


def run(predictor, image: np.ndarray):
    """(ImageBatch, NetworkOutputs) of the predictor's model on ``image``, as ``predict`` runs it."""
    batch = preprocess([image], predictor.config.input)
    if predictor.optimized:
        batch.tensor = batch.tensor.contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        return batch, predictor.model(batch)


def check_resize(batch, ref, name):
    assert batch.image_sizes[0] == tuple(ref["resized_hw"])
    assert batch.padded_size == tuple(ref["padded_hw"])
    # The fixtures' resized_<case>.png are byte-identical to d2_mini's (same photos, same resize).
    resized = np.asarray(Image.open(D2_MINI / f"resized_{name}.png"))
    assert np.array_equal(detectron2_rules.resized_input_uint8(batch), resized)


def assert_boxes_close(ours: np.ndarray, ref: np.ndarray, *, atol: float = 1e-2, rtol: float = 2e-5):
    """Corners within ``atol`` px plus ``rtol`` of the box's longer side: RetinaNet's boxes reach
    2000 px, and exp(dw) turns a 1e-5 difference in a delta into 0.02 px there."""
    side = np.maximum(ref[:, 2] - ref[:, 0], ref[:, 3] - ref[:, 1])[:, None]
    assert (np.abs(ours - ref) <= atol + rtol * side).all(), np.abs(ours - ref).max()


# ---------------------------------------------------------------------------------------------
# RetinaNet


@pytest.fixture(scope="module")
def retinanet():
    return segfpn.load(RETINANET / "retinanet_mini.pkl", device="cpu")


@pytest.fixture(scope="module", params=RETINANET_CASES)
def retinanet_case(request, retinanet):
    ref = dict(np.load(RETINANET / f"{request.param}.npz"))
    batch, outputs = run(retinanet, ref["image_rgb"])
    return request.param, ref, batch, outputs


def test_retinanet_recognised_and_fully_loaded(retinanet):
    assert retinanet.arch == "retinanet_R_50_FPN"
    assert retinanet.report.ok and len(retinanet.report.matched) == 306 - 5  # 5 cell anchors ignored
    cfg = retinanet.config
    assert cfg.detector == "retinanet" and cfg.num_classes == 80 and not cfg.has_masks
    assert (cfg.backbone.stem_channels, cfg.fpn.out_channels) == (16, 16)
    assert cfg.fpn.top_block == "p6p7_from_c5" and cfg.input.channel_order == "bgr"
    assert retinanet.categories.things[0].name == "person"


def test_retinanet_cell_anchors_are_the_files_own(retinanet):
    """The 2019 files store each level's 9 cell anchors: sizes x * 2**(k/3) unrounded, size-major."""
    spec = json.loads((DATA / "d2_retinanet_R_50_FPN_keys.json").read_text())
    stored = {e["key"]: e["value"] for e in spec["keys"] if e["key"].startswith("anchor_generator.cell_anchors")}
    generator = retinanet.model.anchor_generator
    for level in range(5):
        ours = getattr(generator, f"cell_anchors_{level}")
        assert torch.equal(ours, torch.tensor(stored[f"anchor_generator.cell_anchors.{level}"]))
        cell = detectron2_rules.generate_cell_anchors(detectron2_rules.RETINANET_ANCHOR_SIZES[level], (0.5, 1.0, 2.0))
        assert torch.equal(ours, cell)


def test_retinanet_resize_and_padding(retinanet_case):
    name, ref, batch, _ = retinanet_case
    check_resize(batch, ref, name)


def test_retinanet_pyramid_features(retinanet_case):
    _, ref, _, outputs = retinanet_case
    assert list(outputs.pyramid) == ["p3", "p4", "p5", "p6", "p7"]
    for level in ("p3", "p4", "p5", "p6", "p7"):
        np.testing.assert_allclose(outputs.pyramid[level][0].numpy(), ref[f"fpn_{level}"], rtol=1e-3, atol=1e-3)


def test_retinanet_head_outputs_on_p6_p7(retinanet_case, retinanet):
    _, ref, _, outputs = retinanet_case
    with torch.inference_mode():
        logits, deltas = retinanet.model.head([outputs.pyramid["p6"], outputs.pyramid["p7"]])
    for level, lg, dl in zip(("p6", "p7"), logits, deltas):
        h, w = outputs.pyramid[level].shape[-2:]
        # ours [1, H*W*A, K] / [1, H*W*A, 4] -> detectron2's channels a*K + k / a*4 + j.
        np.testing.assert_allclose(lg[0].reshape(h, w, -1).permute(2, 0, 1).numpy(), ref[f"head_cls_logits_{level}"],
                                   rtol=1e-3, atol=1e-3)
        np.testing.assert_allclose(dl[0].reshape(h, w, -1).permute(2, 0, 1).numpy(), ref[f"head_box_deltas_{level}"],
                                   rtol=1e-3, atol=1e-3)


def head_and_anchors(retinanet, batch, outputs):
    """The head's per-level outputs for image 0 and the anchors, as RetinaNet.detect computes them."""
    model = retinanet.model
    maps = [outputs.pyramid[name] for name in model.level_names]
    with torch.inference_mode():
        logits, deltas = model.head(maps)
        anchors = model.anchor_generator([tuple(m.shape[-2:]) for m in maps], batch.padded_size)
    return [lg[0] for lg in logits], [dl[0] for dl in deltas], anchors


def test_retinanet_candidates_per_level(retinanet_case, retinanet):
    _, ref, batch, outputs = retinanet_case
    cfg = retinanet.config.retina_head
    logits, deltas, anchors = head_and_anchors(retinanet, batch, outputs)
    for level in range(5):
        above = int((torch.sigmoid(logits[level].float()) > cfg.score_threshold).sum())
        assert above == ref["cand_num_above_thresh"][level]
        boxes, scores, labels, anchor_index = level_candidates(logits[level], deltas[level], anchors[level], cfg)
        rows = ref["cand_levels"] == level
        ref_keys = list(zip(ref["cand_anchor_idx"][rows].tolist(), ref["cand_classes"][rows].tolist()))
        our_keys = list(zip(anchor_index.tolist(), labels.tolist()))
        # The same (anchor, class) pairs; near-ties may swap neighbours in top-k order.
        assert set(our_keys) == set(ref_keys) and len(our_keys) == len(ref_keys)
        order = {key: i for i, key in enumerate(our_keys)}
        index = [order[key] for key in ref_keys]
        np.testing.assert_allclose(scores[index].numpy(), ref["cand_scores"][rows], atol=1e-4)
        assert_boxes_close(boxes[index].numpy(), ref["cand_boxes"][rows])


def test_retinanet_detections_in_input_coordinates(retinanet_case, retinanet):
    _, ref, batch, outputs = retinanet_case
    logits, deltas, anchors = head_and_anchors(retinanet, batch, outputs)
    levels = [int(name[1:]) for name in retinanet.model.level_names]
    with torch.inference_mode():
        dense = select_dense_detections(logits, deltas, anchors, levels, batch.image_sizes[0],
                                        retinanet.config.retina_head)
    det = outputs.instances[0]  # what the forward pass returned: the same selection
    assert torch.equal(dense.boxes, det.boxes) and torch.equal(dense.levels, det.levels)
    assert det.mask_probs is None and torch.equal(det.levels, det.box_levels)
    ours = {key: i for i, key in enumerate(zip((dense.levels - 3).tolist(), dense.anchor_index.tolist(),
                                               dense.labels.tolist()))}
    ref_keys = list(zip(ref["det_levels"].tolist(), ref["det_anchor_idx"].tolist(), ref["det_classes_input"].tolist()))
    assert set(ours) == set(ref_keys) and len(ours) == len(ref_keys) == 100
    index = [ours[key] for key in ref_keys]
    np.testing.assert_allclose(dense.scores[index].numpy(), ref["det_scores_input"], atol=1e-4)
    # Not clipped before NMS (detectron2): some boxes lie partly outside the image.
    assert_boxes_close(dense.boxes[index].numpy(), ref["det_boxes_input"])
    assert (ref["det_boxes_input"] < 0).any()


def test_retinanet_final_instances(retinanet_case, retinanet, parity_figures):
    name, ref, _, _ = retinanet_case
    result = retinanet.predict(ref["image_rgb"])
    inst = result.instances
    assert inst.masks is None and inst.mask_probs is None
    # detector_postprocess clips to the image and drops the empty boxes (one in coffee).
    assert len(inst) == len(ref["scores"]) == (99 if name == "coffee" else 100)
    agreement = compare_detections({"boxes": ref["pred_boxes"], "scores": ref["scores"], "labels": ref["pred_classes"]},
                                   {"boxes": inst.boxes, "scores": inst.scores, "labels": inst.labels})
    parity_figures("detectron2 RetinaNet mini", f"{ref['image_hw'][1]}x{ref['image_hw'][0]}", agreement.to_dict())
    assert agreement.ok, agreement
    assert agreement.max_score_diff <= 1e-4
    iou = box_iou(torch.from_numpy(ref["pred_boxes"]), torch.from_numpy(inst.boxes))
    match = iou.argmax(dim=1).numpy()
    assert np.array_equal(inst.levels[match], ref["pred_levels"] + 3)
    assert (inst.boxes[:, 0] >= 0).all() and (inst.boxes[:, 2] <= ref["image_hw"][1]).all()


@pytest.mark.parametrize("size", FORMULA_SIZES, ids=[f"{w}x{h}" for w, h in FORMULA_SIZES])
def test_retinanet_stages_defined_by_formula_at_more_sizes(retinanet, size):
    ref = dict(np.load(RETINANET / ("astronaut.npz" if FORMULA_SIZES.index(size) % 2 else "coffee.npz")))
    image = np.asarray(Image.fromarray(ref["image_rgb"]).resize(size, Image.BILINEAR))
    cfg = retinanet.config
    batch = preprocess([image], cfg.input)
    resized = detectron2_rules.output_shape(size[1], size[0], cfg.input.min_size, cfg.input.max_size)
    assert batch.image_sizes[0] == resized
    with torch.inference_mode():
        _, pyramid = retinanet.model.features(batch)
    grids = [tuple(pyramid[name].shape[-2:]) for name in retinanet.model.level_names]
    anchors = retinanet.model.anchor_generator(grids, batch.padded_size)
    for level, (grid, ours) in enumerate(zip(grids, anchors)):
        cell = detectron2_rules.generate_cell_anchors(detectron2_rules.RETINANET_ANCHOR_SIZES[level], (0.5, 1.0, 2.0))
        assert torch.equal(ours, detectron2_rules.grid_anchors(grid, 2 ** (level + 3), 0.0, cell))


# ---------------------------------------------------------------------------------------------
# Faster R-CNN


@pytest.fixture(scope="module")
def faster_rcnn():
    return segfpn.load(FASTER_RCNN / "faster_rcnn_mini.pkl", device="cpu", overrides=FASTER_RCNN_OVERRIDES)


@pytest.fixture(scope="module", params=FASTER_RCNN_CASES)
def faster_rcnn_case(request, faster_rcnn):
    ref = dict(np.load(FASTER_RCNN / f"{request.param}.npz"))
    batch, outputs = run(faster_rcnn, ref["image_rgb"])
    return request.param, ref, batch, outputs


def test_faster_rcnn_recognised_and_fully_loaded(faster_rcnn):
    assert faster_rcnn.arch == "faster_rcnn_R_50_FPN"
    assert faster_rcnn.report.ok and len(faster_rcnn.report.matched) == 300 - 5
    cfg = faster_rcnn.config
    assert cfg.detector == "rcnn" and cfg.mask_head is None and cfg.semantic_head is None
    assert cfg.box_head.fc_channels == (128, 128) and cfg.box_head.clip_output_boxes
    assert faster_rcnn.model.roi_heads.mask_head is None


def test_faster_rcnn_resize_and_padding(faster_rcnn_case):
    name, ref, batch, _ = faster_rcnn_case
    check_resize(batch, ref, name)


def test_faster_rcnn_pyramid_features(faster_rcnn_case):
    _, ref, _, outputs = faster_rcnn_case
    for level in ("p2", "p3", "p4", "p5", "p6"):
        np.testing.assert_allclose(outputs.pyramid[level][0].numpy(), ref[f"fpn_{level}"], rtol=1e-3, atol=1e-3)


def test_faster_rcnn_proposals_match_as_a_set(faster_rcnn_case):
    _, ref, _, outputs = faster_rcnn_case
    ours = outputs.proposals[0]
    ref_boxes = torch.from_numpy(ref["proposal_boxes"])
    assert len(ours.boxes) == len(ref_boxes) == 1000
    ref_logits = torch.from_numpy(ref["proposal_objectness_logits"])
    # Each proposal of detectron2 to ours with the same box and the nearest logit: the per-level NMS
    # keeps identical boxes from two levels (the whole-image box from p5 and p6 in the astronaut).
    same_box = box_iou(ref_boxes, ours.boxes) > 0.999
    distance = torch.where(same_box, (ref_logits[:, None] - ours.objectness[None, :]).abs(), torch.inf)
    best, index = distance.min(dim=1)
    matched = torch.isfinite(best)
    # Near-ties at the top-1000 cut and NMS decisions on the last bit may swap a few.
    assert matched.float().mean() >= 0.97
    np.testing.assert_allclose(ours.objectness[index[matched]].numpy(), ref_logits[matched].numpy(), atol=1e-3)


def test_faster_rcnn_box_head_on_detectron2s_proposals(faster_rcnn_case, faster_rcnn):
    """The box head alone, on detectron2's own proposals: RoI levels, classifier probabilities,
    (astronaut) the raw deltas, and the detections they give."""
    _, ref, batch, outputs = faster_rcnn_case
    heads = faster_rcnn.model.roi_heads
    proposals = torch.from_numpy(ref["proposal_boxes"])
    with torch.inference_mode():
        pooled, levels = heads.box_pooler(outputs.pyramid, [proposals])
        logits, deltas = heads.box_predictor(heads.box_head(pooled))
        given = Proposals(boxes=proposals, objectness=torch.zeros(len(proposals)))
        det = faster_rcnn.model.detect(outputs.pyramid, [given], batch.image_sizes)[0]
    assert np.array_equal(levels.numpy() - 2, ref["proposal_levels"])
    np.testing.assert_allclose(torch.softmax(logits, -1).numpy(), ref["roi_cls_probs"], atol=1e-4)
    if "roi_bbox_deltas" in ref:
        np.testing.assert_allclose(deltas.numpy(), ref["roi_bbox_deltas"], rtol=1e-3, atol=1e-3)
    assert np.array_equal(det.labels.numpy(), ref["det_classes_input"])
    np.testing.assert_allclose(det.scores.numpy(), ref["det_scores_input"], atol=1e-4)
    np.testing.assert_allclose(det.boxes.numpy(), ref["det_boxes_input"], atol=1e-2)
    assert np.array_equal(det.box_levels.numpy() - 2, ref["proposal_levels"][ref["det_proposal_idx"]])


@pytest.mark.parametrize("optimize", [False, True], ids=["checkpoint_parameters", "optimized"])
def test_faster_rcnn_final_instances(faster_rcnn_case, faster_rcnn, optimize, parity_figures):
    """End to end. The default inference rewrites (BN folded, channels-last) move the features by
    ~3e-4 against detectron2's (its own 1- vs 2-thread runs: 2.5e-5); this random model turns that,
    through the RPN's largest anchors, into proposals up to 0.08 px apart and final scores up to
    1.0e-3 apart (measured), so the optimized model is held to 2e-3, the checkpoint's own
    parameterisation (5e-4 measured) to the 1e-3 of the other parity tests."""
    name, ref, _, _ = faster_rcnn_case
    predictor = faster_rcnn if optimize else segfpn.load(FASTER_RCNN / "faster_rcnn_mini.pkl", device="cpu",
                                                         overrides=FASTER_RCNN_OVERRIDES, optimize=False)
    inst = predictor.predict(ref["image_rgb"]).instances
    assert inst.masks is None and len(inst) == len(ref["scores"]) == 100
    agreement = compare_detections({"boxes": ref["pred_boxes"], "scores": ref["scores"], "labels": ref["pred_classes"]},
                                   {"boxes": inst.boxes, "scores": inst.scores, "labels": inst.labels},
                                   tolerances=_tolerances(2e-3 if optimize else 1e-3))
    parity_figures(f"detectron2 Faster R-CNN mini ({'optimized' if optimize else 'checkpoint parameters'})",
                   f"{ref['image_hw'][1]}x{ref['image_hw'][0]}", agreement.to_dict())
    assert agreement.ok, agreement
    # Each detection's RoI level is its proposal's.
    iou = box_iou(torch.from_numpy(ref["pred_boxes"]), torch.from_numpy(inst.boxes)) \
        * torch.from_numpy(ref["pred_classes"][:, None] == inst.labels[None, :])
    match = iou.argmax(dim=1).numpy()
    assert (inst.box_levels[match] == ref["proposal_levels"][ref["pred_proposal_idx"]] + 2).mean() >= 0.98


def _tolerances(score_atol: float):
    from segfpn.evaluation.agreement import Tolerances

    return Tolerances(box_iou=0.99, score_atol=score_atol)
