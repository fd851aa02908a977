"""Every discrete decision of the data path equals the reference's, on inputs nobody picked.

A one-pixel difference in the input size, a corner rounded the other way or a box one ulp across a
level boundary changes which detections come out, so each decision point is checked bit for bit
against the reference's own code over thousands of seeded random cases:

* torchvision: its own ``GeneralizedRCNNTransform``, ``AnchorGenerator``, ``LevelMapper``,
  ``BoxCoder``, ``RegionProposalNetwork.filter_proposals``, ``RoIHeads.postprocess_detections``
  and ``paste_masks_in_image``, called here;
* detectron2 (which cannot be installed here): its arithmetic written out as facts, each with the
  function it comes from, in tests/detectron2_rules.py.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from torchvision.models.detection import _utils as tv_utils
from torchvision.models.detection.anchor_utils import AnchorGenerator as TorchvisionAnchorGenerator
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.roi_heads import RoIHeads as TorchvisionRoIHeads
from torchvision.models.detection.roi_heads import paste_masks_in_image
from torchvision.models.detection.rpn import RegionProposalNetwork
from torchvision.models.detection.transform import GeneralizedRCNNTransform
from torchvision.ops.poolers import _setup_scales, initLevelMapper

from segfpn.config import (BoxHeadConfig, InputConfig, PoolerConfig, RPNConfig, detectron2_mask_rcnn,
                           torchvision_maskrcnn_v1)
from segfpn.imageio import ImageError
from segfpn.model.anchors import AnchorGenerator, cell_anchors
from segfpn.model.box_head import select_detections
from segfpn.model.boxes import decode_boxes
from segfpn.model.fpn import pyramid_strides
from segfpn.model.mask_head import paste_masks
from segfpn.model.poolers import assign_levels
from segfpn.model.preprocess import resized_size
from segfpn.model.rpn import RPN

import detectron2_rules

TORCHVISION = torchvision_maskrcnn_v1()
DETECTRON2 = detectron2_mask_rcnn()
#: The Mask R-CNN pyramid both references build (p2-p6), {name: stride}.
PYRAMID_STRIDES = pyramid_strides(TORCHVISION.fpn)
#: Sizes at which a float32 scale gave another input size than torchvision's, as (height, width).
REPORTED_SIZES = [(427, 640), (640, 427), (328, 400), (600, 1116), (375, 500), (480, 640), (683, 1024)]


def random_sizes(seed: int, count: int, low: int = 2, high: int = 4000) -> list[tuple[int, int]]:
    rng = np.random.default_rng(seed)
    return REPORTED_SIZES + [tuple(int(v) for v in rng.integers(low, high + 1, size=2)) for _ in range(count)]


# ---------------------------------------------------------------------------------------------
# Input size


def torchvision_resized_size(transform: GeneralizedRCNNTransform, height: int, width: int) -> tuple[int, int] | None:
    """torchvision's own eager resize on a meta tensor (shapes only, no pixels); None when
    torchvision itself cannot resize (a side would be 0 pixels)."""
    try:
        resized, _ = transform.resize(torch.empty(3, height, width, device="meta"), None)
    except ZeroDivisionError:
        return None
    return tuple(resized.shape[-2:])


def test_torchvision_eager_resize_on_meta_tensors_is_the_real_one():
    transform = GeneralizedRCNNTransform(800, 1333, [0.0] * 3, [1.0] * 3).eval()
    for height, width in [(427, 640), (333, 1777)]:
        images, _ = transform([torch.rand(3, height, width)])
        assert tuple(images.image_sizes[0]) == torchvision_resized_size(transform, height, width)


@pytest.mark.parametrize("min_size, max_size", [(800, 1333), (None, None)], ids=["coco", "random"])
def test_input_size_equals_torchvision_on_random_sizes(min_size, max_size):
    rng = np.random.default_rng(13)
    checked = refused = 0
    for trial, (height, width) in enumerate(random_sizes(seed=0, count=1500)):
        low, high = (min_size, max_size) if min_size else sorted(int(v) for v in rng.integers(64, 2000, size=2))
        config = InputConfig(min_size=low, max_size=high)
        transform = GeneralizedRCNNTransform(low, high, [0.0] * 3, [1.0] * 3).eval()
        expected = torchvision_resized_size(transform, height, width)
        if expected is None:
            with pytest.raises(ImageError, match="too thin"):
                resized_size(height, width, config)
            refused += 1
            continue
        assert resized_size(height, width, config) == expected, (height, width, low, high)
        checked += 1
    assert checked > 1400 and refused < 20


@pytest.mark.parametrize("min_size, max_size", [(800, 1333), (None, None)], ids=["coco", "random"])
def test_input_size_equals_detectron2_on_random_sizes(min_size, max_size):
    rng = np.random.default_rng(14)
    for height, width in random_sizes(seed=1, count=3000):
        low, high = (min_size, max_size) if min_size else sorted(int(v) for v in rng.integers(64, 2000, size=2))
        config = DETECTRON2.input.__class__(**{**DETECTRON2.input.__dict__, "min_size": low, "max_size": high})
        expected = detectron2_rules.output_shape(height, width, low, high)
        if min(expected) < 1:
            with pytest.raises(ImageError, match="too thin"):
                resized_size(height, width, config)
        else:
            assert resized_size(height, width, config) == expected, (height, width, low, high)


def test_the_reported_sizes():
    assert resized_size(427, 640, TORCHVISION.input) == (800, 1199)
    assert resized_size(640, 427, TORCHVISION.input) == (1199, 800)
    assert resized_size(328, 400, TORCHVISION.input)[0] == 800
    assert resized_size(600, 1116, TORCHVISION.input)[1] == 1333


# ---------------------------------------------------------------------------------------------
# Anchors


def pyramid_grid_sizes(padded: tuple[int, int]) -> list[tuple[int, int]]:
    """Feature-map (h, w) of p2-p6 for a padded input (a multiple of 32): p6 is max_pool(p5, 1, 2)."""
    sizes = [(padded[0] // s, padded[1] // s) for s in (4, 8, 16, 32)]
    sizes.append(((sizes[-1][0] + 1) // 2, (sizes[-1][1] + 1) // 2))
    return sizes


def test_cell_anchors_equal_torchvision_for_random_sizes_and_ratios():
    rng = np.random.default_rng(2)
    reference = TorchvisionAnchorGenerator()
    for _ in range(3000):
        size = int(rng.integers(4, 1025))
        ratios = tuple(float(r) for r in np.round(rng.uniform(0.1, 6.0, size=3), int(rng.integers(1, 4))))
        expected = reference.generate_anchors([size], list(ratios))
        ours = cell_anchors(size, ratios, round_corners=True, arithmetic="float32")
        assert torch.equal(ours, expected), (size, ratios)


def test_cell_anchors_equal_detectron2_for_random_sizes_and_ratios():
    rng = np.random.default_rng(3)
    for _ in range(3000):
        size = float(rng.integers(4, 1025)) if rng.random() < 0.5 else float(rng.uniform(4, 1024))
        ratios = tuple(float(r) for r in rng.uniform(0.1, 6.0, size=3))
        expected = detectron2_rules.cell_anchors(size, ratios)
        assert torch.equal(cell_anchors(size, ratios, round_corners=False, arithmetic="float64"), expected)


@pytest.mark.parametrize("seed", range(3))
def test_anchor_grids_equal_both_references_at_random_input_sizes(seed):
    rng = np.random.default_rng(100 + seed)
    rpn = TORCHVISION.rpn
    ours_tv = AnchorGenerator(strides=tuple(PYRAMID_STRIDES.values()), sizes=rpn.anchor_sizes,
                              aspect_ratios=rpn.aspect_ratios, round_corners=True, arithmetic="float32",
                              strides_from_grid=True)
    reference = TorchvisionAnchorGenerator(tuple((s,) for s in rpn.anchor_sizes), (rpn.aspect_ratios,) * 5)
    d2 = DETECTRON2.rpn
    ours_d2 = AnchorGenerator(strides=tuple(PYRAMID_STRIDES.values()), sizes=d2.anchor_sizes,
                              aspect_ratios=d2.aspect_ratios, round_corners=False, arithmetic="float64",
                              offset=d2.anchor_offset, strides_from_grid=False)
    for _ in range(4):
        height, width = (int(v) for v in rng.integers(2, 3000, size=2))
        try:
            size = resized_size(height, width, TORCHVISION.input)
        except ImageError:
            continue
        padded = tuple(-(-s // 32) * 32 for s in size)
        grids = pyramid_grid_sizes(padded)
        features = [torch.empty(1, 1, *g) for g in grids]
        expected = reference(ImageList(torch.empty(1, 3, *padded), [size]), features)[0]
        assert torch.equal(torch.cat(ours_tv(grids, padded)), expected), (height, width)
        expected_d2 = torch.cat([
            detectron2_rules.grid_anchors(g, s, d2.anchor_offset, detectron2_rules.cell_anchors(a, d2.aspect_ratios))
            for g, s, a in zip(grids, PYRAMID_STRIDES.values(), d2.anchor_sizes)])
        assert torch.equal(torch.cat(ours_d2(grids, padded)), expected_d2), (height, width)


# ---------------------------------------------------------------------------------------------
# Level assignment


def boxes_near_level_boundaries(rng: np.random.Generator, count: int, canonical_size: float) -> torch.Tensor:
    """xyxy float32 boxes whose sqrt(wh) lies within a few ulps of canonical_size * 2**k, plus random
    ones: the boxes whose level depends on the last bit."""
    k = rng.integers(-4, 4, size=count)
    aspect = np.exp(rng.uniform(-1.5, 1.5, size=count))
    side = canonical_size * 2.0 ** k
    w = (side * np.sqrt(aspect)).astype(np.float32)
    h = (side / np.sqrt(aspect)).astype(np.float32)
    # Nudge the height by -3..3 ulps so that sqrt(w * h) straddles the boundary.
    h = np.array([np.float32(v) for v in h])
    for _ in range(3):
        step = rng.integers(-1, 2, size=count)
        h = np.where(step > 0, np.nextafter(h, np.float32(np.inf)),
                     np.where(step < 0, np.nextafter(h, np.float32(0)), h))
    x0 = rng.uniform(0, 500, size=count).astype(np.float32)
    y0 = rng.uniform(0, 500, size=count).astype(np.float32)
    near = np.stack([x0, y0, x0 + w, y0 + h], axis=1).astype(np.float32)
    random = rng.uniform(0, 1400, size=(count, 4)).astype(np.float32)
    random[:, 2:] = random[:, :2] + np.abs(random[:, 2:] - random[:, :2]) + 1e-3
    return torch.from_numpy(np.concatenate([near, random]))


@pytest.mark.parametrize("canonical_level, canonical_size", [(4, 224), (4, 160), (3, 96), (5, 320)])
def test_levels_equal_torchvision_level_mapper(canonical_level, canonical_size):
    rng = np.random.default_rng(canonical_size)
    boxes = boxes_near_level_boundaries(rng, 4000, canonical_size)
    mapper = initLevelMapper(2, 5, canonical_scale=canonical_size, canonical_level=canonical_level)
    config = PoolerConfig(canonical_level=canonical_level, canonical_size=float(canonical_size))
    expected = mapper([boxes]) + 2
    assert torch.equal(assign_levels(boxes, config), expected)


@pytest.mark.parametrize("canonical_level, canonical_size", [(4, 224), (4, 160), (3, 96), (5, 320)])
def test_levels_equal_detectron2_assign_boxes_to_levels(canonical_level, canonical_size):
    rng = np.random.default_rng(canonical_size + 1)
    boxes = boxes_near_level_boundaries(rng, 4000, canonical_size)
    config = PoolerConfig(**{**DETECTRON2.pooler.__dict__, "canonical_level": canonical_level,
                             "canonical_size": float(canonical_size)})
    expected = detectron2_rules.assign_levels(boxes, 2, 5, canonical_size, canonical_level)
    assert torch.equal(assign_levels(boxes, config), expected)


def test_the_two_epsilons_decide_different_boxes():
    # The settings are not interchangeable: some boundary boxes get another level under the other rule.
    boxes = boxes_near_level_boundaries(np.random.default_rng(7), 4000, 224.0)
    config = PoolerConfig(min_level=0, max_level=8)
    swapped = PoolerConfig(min_level=0, max_level=8, level_epsilon=0.0, level_log_epsilon=1e-8)
    assert (assign_levels(boxes, config) != assign_levels(boxes, swapped)).any()


#: Heights of the resized (unpadded) input at which torchvision's MultiScaleRoIAlign infers a
#: level's scale from the image height (``_infer_scale``) as something other than 1 / stride.
TORCHVISION_SCALE_QUIRK_HEIGHTS = set(range(1, 23)) | set(range(33, 46)) | {65, 66, 67}


def test_where_torchvision_infers_other_pooler_scales():
    # README, Parity: for these input heights (images at least ~20 times wider than high)
    # torchvision pools from other levels than its own level rule says; segfpn uses the exact strides.
    found = set()
    for height in range(1, 1400):
        padded = -(-height // 32) * 32
        features = [torch.empty(1, 1, padded // 2**level, 8, device="meta") for level in range(2, 6)]
        scales, _ = _setup_scales(features, [(height, 1333)], 224, 4)
        if scales != [0.25, 0.125, 0.0625, 0.03125]:
            found.add(height)
    assert found == TORCHVISION_SCALE_QUIRK_HEIGHTS


# ---------------------------------------------------------------------------------------------
# Box decoding, proposal and detection selection


def random_boxes(rng: np.random.Generator, count: int, limit: float = 1300.0) -> torch.Tensor:
    xy = rng.uniform(-50, limit, size=(count, 2))
    wh = np.exp(rng.uniform(-3, 6.5, size=(count, 2)))
    return torch.from_numpy(np.concatenate([xy, xy + wh], axis=1).astype(np.float32))


@pytest.mark.parametrize("weights", [(1.0, 1.0, 1.0, 1.0), (10.0, 10.0, 5.0, 5.0)])
def test_box_decoding_equals_torchvision_box_coder(weights):
    rng = np.random.default_rng(4)
    reference = tv_utils.BoxCoder(weights)
    for _ in range(20):
        boxes = random_boxes(rng, 500)
        deltas = torch.from_numpy(rng.normal(0, 3, size=(500, 8)).astype(np.float32))
        deltas[::7] *= 40  # past the exp clamp
        expected = reference.decode_single(deltas, boxes)
        assert torch.equal(decode_boxes(deltas, boxes, weights), expected)


def torchvision_rpn(config: RPNConfig) -> RegionProposalNetwork:
    return RegionProposalNetwork(TorchvisionAnchorGenerator(), torch.nn.Identity(), 0.7, 0.3, 256, 0.5,
                                 dict(training=config.pre_nms_topk_train, testing=config.pre_nms_topk),
                                 dict(training=config.post_nms_topk_train, testing=config.post_nms_topk),
                                 config.nms_threshold).eval()


@pytest.mark.parametrize("seed", range(4))
def test_proposals_equal_torchvision_filter_proposals_with_saturated_scores(seed):
    # Objectness logits above ~17 all have sigmoid 1.0 in float32: torchvision's NMS then sees ties
    # that the logits do not have, and keeps another set of boxes.
    rng = np.random.default_rng(seed)
    config = TORCHVISION.rpn
    ours = RPN(in_channels=8, level_names=tuple(PYRAMID_STRIDES), strides=tuple(PYRAMID_STRIDES.values()),
               config=config).eval()
    reference = torchvision_rpn(config)
    image_size = (800, 1216)
    per_level = [1200, 900, 600, 300, 120]
    anchors = [random_boxes(rng, n, limit=1200) for n in per_level]
    logits = [torch.from_numpy(rng.normal(8, 10, size=n).astype(np.float32)) for n in per_level]
    deltas = [torch.from_numpy(rng.normal(0, 0.5, size=(n, 4)).astype(np.float32)) for n in per_level]
    assert (torch.cat(logits).sigmoid() == 1.0).sum() > 100
    proposals = reference.box_coder.decode(torch.cat(deltas), [torch.cat(anchors)]).view(1, -1, 4)
    expected, _ = reference.filter_proposals(proposals, torch.cat(logits)[None], [image_size], per_level)
    got = ours.select_proposals(logits, deltas, anchors, image_size)
    assert torch.equal(got.boxes, expected[0])
    by_logit = RPN(in_channels=8, level_names=tuple(PYRAMID_STRIDES), strides=tuple(PYRAMID_STRIDES.values()),
                   config=RPNConfig(**{**config.__dict__, "nms_score": "logit"})).eval()
    assert not torch.equal(by_logit.select_proposals(logits, deltas, anchors, image_size).boxes, expected[0])


@pytest.mark.parametrize("seed", range(4))
def test_detections_equal_torchvision_postprocess_detections(seed):
    rng = np.random.default_rng(seed)
    config = BoxHeadConfig(score_threshold=float(rng.choice([0.0, 0.05])))
    reference = TorchvisionRoIHeads(None, None, None, 0.5, 0.5, 512, 0.25, config.box_weights,
                                    config.score_threshold, config.nms_threshold, config.detections_per_image)
    num_classes, count = 91, 1000
    proposals = random_boxes(rng, count, limit=1100)
    logits = torch.from_numpy(rng.normal(0, 2.5, size=(count, num_classes)).astype(np.float32))
    deltas = torch.from_numpy(rng.normal(0, 1, size=(count, num_classes * 4)).astype(np.float32))
    image_size = (800, 1199)
    boxes, scores, labels = reference.postprocess_detections(logits, deltas, [proposals], [image_size])
    ours = select_detections(logits, deltas[:, 4:], proposals, image_size, config)
    assert torch.equal(ours.boxes, boxes[0]) and torch.equal(ours.scores, scores[0])
    assert torch.equal(ours.labels + 1, labels[0])


# ---------------------------------------------------------------------------------------------
# Mask pasting


@pytest.mark.parametrize("seed", range(3))
def test_paste_equals_torchvision_paste_masks_in_image(seed):
    # torchvision grows each box by (M + 2) / M and truncates it to integers: boxes whose grown
    # corner lies near an integer decide the paste box on the last bit. >= 0.5 on both sides.
    rng = np.random.default_rng(seed)
    image_size = (int(rng.integers(50, 900)), int(rng.integers(50, 900)))
    boxes = random_boxes(rng, 200, limit=max(image_size))
    boxes[::3] = boxes[::3].round() + torch.tensor([1e-4, 1e-4, -1e-4, -1e-4])
    # As after postprocessing: clipped to the image, none empty.
    boxes = torch.stack([boxes[:, 0].clamp(0, image_size[1]), boxes[:, 1].clamp(0, image_size[0]),
                         boxes[:, 2].clamp(0, image_size[1]), boxes[:, 3].clamp(0, image_size[0])], dim=1)
    boxes = boxes[((boxes[:, 2] - boxes[:, 0]) > 0.01) & ((boxes[:, 3] - boxes[:, 1]) > 0.01)][:60]
    masks = torch.from_numpy(rng.uniform(0, 1, size=(len(boxes), 28, 28)).astype(np.float32))
    masks[:, 10:14] = 0.5  # exact ties at the threshold
    expected = paste_masks_in_image(masks[:, None], boxes, image_size)[:, 0] >= 0.5
    ours = paste_masks(masks, boxes, image_size, method="box_resize", threshold=0.5)
    assert torch.equal(ours, expected)


# ---------------------------------------------------------------------------------------------
# RetinaNet: anchors and the selection of detections


def retinanet_grid_sizes(padded: tuple[int, int]) -> list[tuple[int, int]]:
    """Feature-map (h, w) of p3-p7 for a padded input: p6 and p7 are stride-2 convs with padding 1."""
    sizes = [(padded[0] // s, padded[1] // s) for s in (8, 16, 32)]
    for _ in range(2):
        sizes.append(((sizes[-1][0] + 1) // 2, (sizes[-1][1] + 1) // 2))
    return sizes


@pytest.mark.parametrize("seed", range(2))
def test_retinanet_anchors_equal_both_references_at_random_input_sizes(seed):
    from torchvision.models.detection.retinanet import _default_anchorgen

    from segfpn.config import detectron2_retinanet, torchvision_retinanet_v1

    rng = np.random.default_rng(300 + seed)
    tv, d2 = torchvision_retinanet_v1().retina_head, detectron2_retinanet().retina_head
    strides = (8, 16, 32, 64, 128)
    ours_tv = AnchorGenerator(strides=strides, sizes=tv.level_anchor_sizes(), aspect_ratios=tv.aspect_ratios,
                              round_corners=True, arithmetic="float32", strides_from_grid=True, order="ratio_major")
    ours_d2 = AnchorGenerator(strides=strides, sizes=d2.level_anchor_sizes(), aspect_ratios=d2.aspect_ratios,
                              round_corners=False, arithmetic="float64", strides_from_grid=False, order="size_major")
    reference = _default_anchorgen()
    for _ in range(4):
        height, width = (int(v) for v in rng.integers(2, 3000, size=2))
        try:
            size = resized_size(height, width, TORCHVISION.input)
        except ImageError:
            continue
        padded = tuple(-(-s // 32) * 32 for s in size)
        grids = retinanet_grid_sizes(padded)
        features = [torch.empty(1, 1, *g) for g in grids]
        expected = reference(ImageList(torch.empty(1, 3, *padded), [size]), features)[0]
        assert torch.equal(torch.cat(ours_tv(grids, padded)), expected), (height, width)
        expected_d2 = torch.cat([
            detectron2_rules.grid_anchors(g, s, 0.0, detectron2_rules.generate_cell_anchors(a, d2.aspect_ratios))
            for g, s, a in zip(grids, strides, detectron2_rules.RETINANET_ANCHOR_SIZES)])
        assert torch.equal(torch.cat(ours_d2(grids, padded)), expected_d2), (height, width)


def random_dense_outputs(rng: np.random.Generator, per_level: list[int], num_classes: int, image_size: tuple[int, int]):
    """Per level: logits [M, K] (a few thousand pairs above 0.05, exact ties included), deltas
    [M, 4] (some past the exp clamp) and anchors [M, 4], some outside the image."""
    logits, deltas, anchors = [], [], []
    for m in per_level:
        lg = rng.normal(-6.0, 2.0, size=(m, num_classes)).astype(np.float32)
        lg[rng.random(lg.shape) < 0.002] = 1.5  # ties
        logits.append(torch.from_numpy(lg))
        dl = rng.normal(0, 0.5, size=(m, 4)).astype(np.float32)
        dl[::50, 2:] = 7.0
        deltas.append(torch.from_numpy(dl))
        anchors.append(random_boxes(rng, m, limit=float(max(image_size))))
    return logits, deltas, anchors


@pytest.mark.parametrize("seed", range(3))
def test_retinanet_detections_equal_torchvision_postprocess_detections(seed):
    """Our selection with torchvision's settings against ``RetinaNet.postprocess_detections``
    itself, with its background slot (class 0) below the threshold as in trained files."""
    import types

    from torchvision.models.detection.retinanet import RetinaNet as TorchvisionRetinaNet

    from segfpn.config import torchvision_retinanet_v1
    from segfpn.model.retinanet import select_dense_detections

    rng = np.random.default_rng(seed)
    config = torchvision_retinanet_v1().retina_head
    per_level, num_classes, image_size = [2400, 900, 300, 90, 30], 12, (800, 1216)
    logits, deltas, anchors = random_dense_outputs(rng, per_level, num_classes, image_size)
    background = [torch.full((m, 1), -30.0) for m in per_level]
    reference = types.SimpleNamespace(score_thresh=config.score_threshold, topk_candidates=config.topk_candidates,
                                      nms_thresh=config.nms_threshold, detections_per_img=config.detections_per_image,
                                      box_coder=tv_utils.BoxCoder(config.box_weights))
    head_outputs = {"cls_logits": [torch.cat([b, lg], dim=1)[None] for b, lg in zip(background, logits)],
                    "bbox_regression": [d[None] for d in deltas]}
    expected = TorchvisionRetinaNet.postprocess_detections(reference, head_outputs, [anchors], [image_size])[0]
    ours = select_dense_detections(logits, deltas, anchors, [3, 4, 5, 6, 7], image_size, config)
    assert len(ours.boxes) == config.detections_per_image
    assert torch.equal(ours.boxes, expected["boxes"]) and torch.equal(ours.scores, expected["scores"])
    assert torch.equal(ours.labels + 1, expected["labels"])
    assert set(ours.levels.tolist()) == {3, 4, 5, 6, 7}


@pytest.mark.parametrize("seed", range(3))
def test_retinanet_detections_equal_detectron2_inference_single_image(seed):
    from segfpn.config import detectron2_retinanet
    from segfpn.model.retinanet import select_dense_detections

    rng = np.random.default_rng(100 + seed)
    config = detectron2_retinanet().retina_head
    logits, deltas, anchors = random_dense_outputs(rng, [2400, 900, 300, 90, 30], 10, (800, 1216))
    boxes, scores, classes, levels, anchor_index = detectron2_rules.retinanet_inference_single_image(
        anchors, [lg.sigmoid() for lg in logits], deltas, score_thresh=config.score_threshold,
        topk_candidates=config.topk_candidates, nms_thresh=config.nms_threshold,
        max_detections=config.detections_per_image)
    ours = select_dense_detections(logits, deltas, anchors, [3, 4, 5, 6, 7], (800, 1216), config)
    assert torch.equal(ours.boxes, boxes) and torch.equal(ours.scores, scores)
    assert torch.equal(ours.labels, classes) and torch.equal(ours.levels, levels + 3)
    assert torch.equal(ours.anchor_index, anchor_index)
    assert (ours.boxes < 0).any()  # not clipped before NMS


def test_the_retinanet_settings_decide_different_detections():
    """Each library's settings are needed: torchvision's clipping before NMS and detectron2's
    top 100 each change the outcome on the same head outputs."""
    from segfpn.config import detectron2_retinanet, torchvision_retinanet_v1
    from segfpn.model.retinanet import select_dense_detections

    rng = np.random.default_rng(7)
    logits, deltas, anchors = random_dense_outputs(rng, [2400, 900, 300, 90, 30], 10, (800, 1216))
    tv, d2 = torchvision_retinanet_v1().retina_head, detectron2_retinanet().retina_head

    def run(cfg):
        return select_dense_detections(logits, deltas, anchors, [3, 4, 5, 6, 7], (800, 1216), cfg)

    unclipped = dataclasses.replace(tv, clip_before_nms=False)
    assert not torch.equal(run(tv).boxes, run(unclipped).boxes[:len(run(tv).boxes)])
    assert len(run(d2).boxes) == 100 < len(run(tv).boxes) == 300
