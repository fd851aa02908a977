"""Box-only detectors (Faster R-CNN, RetinaNet) end to end on small random models, and what their
results go through: configs, the FPN's top block, results without masks, drawing, COCO export and
the detection-agreement measure."""

import json

import numpy as np
import pytest
import torch

from segfpn.categories import coco_instance_categories
from segfpn.checkpoints.loading import load_checkpoint, save_native
from segfpn.config import (ARCHITECTURES, ConfigError, FPNConfig, ModelConfig, RetinaHeadConfig,
                           SemanticHeadConfig, detectron2_faster_rcnn, detectron2_retinanet, torchvision_retinanet_v2)
from segfpn.evaluation.agreement import compare_detections
from segfpn.export import instances_to_coco_results
from segfpn.model.build import build_model
from segfpn.model.fpn import FPN, pyramid_strides
from segfpn.model.poolers import assign_levels
from segfpn.model.retinanet import RetinaNet
from segfpn.predictor import Predictor
from segfpn.structures import Instances
from segfpn.viz import draw_instances, draw_levels
from segfpn.viz.levels import PYRAMID_LEVEL_COLORS, RETINANET_LEVELS

from testdata import load_rgb, random_detector
from testdata import tiny_detector_config as tiny


def predictor(config: ModelConfig, seed: int = 0) -> Predictor:
    model = random_detector(config, seed=seed, class_score_spread=0.5)
    return Predictor(model, coco_instance_categories(), device="cpu", optimize=True)


@pytest.mark.parametrize("arch", ["faster_rcnn_R_50_FPN", "retinanet_R_50_FPN", "retinanet_resnet50_fpn_v2"])
def test_box_only_models_predict_boxes_and_levels(arch):
    config = tiny(ARCHITECTURES[arch]())
    model = predictor(config)
    image = load_rgb("voc2007_000001_portrait.jpg")
    result = model.predict(image, return_features=True)
    inst = result.instances
    assert inst.masks is None and inst.mask_probs is None and result.panoptic is None
    assert len(inst) > 10 and (np.diff(inst.scores) <= 0).all()
    retina = config.detector == "retinanet"
    allowed = set(range(3, 8)) if retina else {2, 3, 4, 5}
    assert set(inst.levels.tolist()) <= allowed and set(inst.box_levels.tolist()) <= allowed
    if retina:
        assert np.array_equal(inst.levels, inst.box_levels)
        assert {"c2", "c5", "p3", "p7"} <= set(result.features) and "p2" not in result.features
    else:
        # The level of the final box under the pooler's rule, in network-input pixels.
        scale = result.input_size[0] / image.shape[0]
        boxes = torch.from_numpy(inst.boxes * scale)
        assert (assign_levels(boxes, config.pooler).numpy() == inst.levels).mean() > 0.9  # ~1e-6 scale rounding
    # Clipped and non-empty where the library clips (detectron2), as detector_postprocess does.
    h, w = image.shape[:2]
    assert (inst.boxes[:, 2] > inst.boxes[:, 0]).all() and (inst.boxes[:, 2] <= w).all()
    assert len(model.predict_batch([image, image[:, ::-1]])) == 2
    selected = inst.select(inst.scores > np.median(inst.scores))
    assert selected.masks is None and len(selected) < len(inst)


def test_a_box_only_native_file_round_trips(tmp_path):
    config = tiny(detectron2_retinanet())
    model = build_model(config).eval()
    path = save_native(tmp_path / "retina.safetensors", model, coco_instance_categories(), arch="retinanet_R_50_FPN")
    loaded = load_checkpoint(path)
    assert loaded.config == config and isinstance(loaded.model, RetinaNet) and loaded.report.ok


def test_configs_say_which_sections_a_detector_has():
    for name, preset in ARCHITECTURES.items():
        config = preset()
        assert ModelConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config, name
    with pytest.raises(ValueError, match="retinanet model needs .* this config has rpn"):
        detectron2_retinanet().replace(rpn=ARCHITECTURES["mask_rcnn_R_50_FPN"]().rpn)
    with pytest.raises(ValueError, match="rcnn model needs .* this config lacks box_head"):
        detectron2_faster_rcnn().replace(box_head=None)
    with pytest.raises(ValueError, match="semantic head .* needs the mask head"):
        detectron2_faster_rcnn().replace(semantic_head=SemanticHeadConfig())
    with pytest.raises(ConfigError, match="'box_head' is not used by this model"):
        detectron2_retinanet().with_overrides({"box_head": {"score_threshold": 0.3}})
    overridden = detectron2_retinanet().with_overrides({"retina_head": {"score_threshold": 0.3}})
    assert overridden.retina_head.score_threshold == 0.3
    assert detectron2_retinanet().detection_head == "retina_head"
    assert detectron2_faster_rcnn().detection_head == "box_head"


def test_native_configs_written_before_box_only_models_still_load():
    """Earlier versions kept ``clip_output_boxes`` in the mask head section."""
    data = ARCHITECTURES["mask_rcnn_R_50_FPN"]().to_dict()
    data["mask_head"]["clip_output_boxes"] = data["box_head"].pop("clip_output_boxes")
    assert ModelConfig.from_dict(data) == ARCHITECTURES["mask_rcnn_R_50_FPN"]()
    bundled = load_checkpoint("weights/synthetic_panoptic_fpn.safetensors")
    assert bundled.config.box_head.clip_output_boxes is False and bundled.report.ok


@pytest.mark.parametrize("top_block, p6_input", [("max_pool_p5", None), ("p6p7_from_p5", 16), ("p6p7_from_c5", 128)])
def test_fpn_top_blocks(top_block, p6_input):
    in_features = ("c2", "c3", "c4", "c5") if top_block == "max_pool_p5" else ("c3", "c4", "c5")
    config = FPNConfig(out_channels=16, in_features=in_features, top_block=top_block)
    fpn = FPN({"c2": 16, "c3": 32, "c4": 64, "c5": 128}, config)
    features = {f"c{k}": torch.randn(1, 16 * 2 ** (k - 2), 2 ** (9 - k), 3 * 2 ** (8 - k)) for k in range(2, 6)}
    out = fpn(features)
    assert fpn.strides == pyramid_strides(config) and list(out) == list(fpn.strides)
    for name, stride in fpn.strides.items():
        assert out[name].shape[-2:] == (-(-512 // stride), -(-768 // stride)), name
    if p6_input is None:
        assert list(out) == ["p2", "p3", "p4", "p5", "p6"] and torch.equal(out["p6"], out["p5"][..., ::2, ::2])
    else:
        assert list(out) == ["p3", "p4", "p5", "p6", "p7"] and fpn.top_block.p6.in_channels == p6_input
        source = out["p5"] if top_block == "p6p7_from_p5" else features["c5"]
        assert torch.allclose(out["p7"], fpn.top_block.p7(torch.relu(fpn.top_block.p6(source))))


def box_only_instances() -> Instances:
    boxes = np.array([[10, 10, 40, 30], [50, 35, 90, 60], [60.4, 5.4, 79.6, 19.6]], np.float32)
    return Instances(boxes=boxes, scores=np.array([0.9, 0.7, 0.3], np.float32), labels=np.array([0, 16, 15]),
                     class_names=[c.name for c in coco_instance_categories().things],
                     category_ids=[c.id for c in coco_instance_categories().things], masks=None,
                     levels=np.array([3, 6, 7]), box_levels=np.array([3, 6, 7]))


def test_drawing_fills_boxes_when_there_are_no_masks():
    image = np.random.default_rng(0).integers(0, 256, (64, 96, 3), dtype=np.uint8)
    inst = box_only_instances()
    out = draw_instances(image, inst, score_threshold=0.5, alpha=0.5, show_labels=False, show_boxes=False,
                         show_contours=False)
    inside, outside = (slice(10, 30), slice(10, 40)), (slice(0, 64), slice(0, 8))
    assert (out[inside] != image[inside]).any(axis=-1).mean() > 0.95  # a translucent fill over the box
    np.testing.assert_array_equal(out[outside], image[outside])
    np.testing.assert_array_equal(out[5:20, 60:80], image[5:20, 60:80])  # score 0.3: not drawn
    opaque = draw_instances(image, inst, score_threshold=0.0, alpha=1.0, show_labels=False)
    assert (opaque[20, 25] != image[20, 25]).any()
    highlighted = draw_instances(image, inst, score_threshold=0.0, highlight=1, show_labels=False)
    assert highlighted[0, 0].sum() < image[0, 0].sum() or image[0, 0].sum() == 0  # the rest is dimmed
    levels = draw_levels(image, inst, score_threshold=0.0, mask_alpha=1.0, show_labels=False, show_legend=False)
    assert (levels[45, 70] == PYRAMID_LEVEL_COLORS[6]).all()  # box of level 6, filled
    assert (levels[10, 70] == PYRAMID_LEVEL_COLORS[7]).all()
    big = np.full((192, 288, 3), 255, np.uint8)
    legend = draw_levels(big, inst, score_threshold=0.0, show_labels=False, level_range=RETINANET_LEVELS,
                         title="Anchor level")
    for level in range(3, 8):  # a swatch per RetinaNet level, none for p2
        assert (legend == PYRAMID_LEVEL_COLORS[level]).all(axis=-1).sum() >= 9, level
    assert not (legend == PYRAMID_LEVEL_COLORS[2]).all(axis=-1).any()


def test_coco_results_without_masks_have_no_segmentation():
    results = instances_to_coco_results(box_only_instances(), image_id=7)
    assert len(results) == 3 and all("segmentation" not in r for r in results)
    assert results[1]["category_id"] == 18 and results[1]["bbox"] == [50.0, 35.0, 40.0, 25.0]


def test_agreement_on_boxes_alone():
    inst = box_only_instances()
    ours = {"boxes": inst.boxes + 0.01, "scores": inst.scores + 1e-4, "labels": inst.labels}
    reference = {"boxes": inst.boxes, "scores": inst.scores, "labels": inst.labels}
    agreement = compare_detections(reference, ours)
    assert agreement.ok and agreement.matched == 3 and agreement.min_mask_iou is None
    moved = compare_detections(reference, {**ours, "boxes": inst.boxes + 3})
    assert not moved.ok and moved.min_box_iou < 0.99
    # Boxes clipped flat against an image edge (RetinaNet keeps them): the same when their corners are.
    flat = {"boxes": np.array([[375.4, 0, 519.8, 0]], np.float32), "scores": np.array([0.5]), "labels": np.array([3])}
    assert compare_detections(flat, {**flat, "boxes": flat["boxes"] + [0.001, 0, 0, 0]}).ok
    assert not compare_detections(flat, {**flat, "boxes": flat["boxes"] + [5, 0, 5, 0]}).ok
    with pytest.raises(ValueError, match="only the reference has masks"):
        compare_detections({**reference, "masks": np.zeros((3, 64, 96), bool)}, ours)


def test_retinanet_v2_head_has_group_norm():
    model = build_model(tiny(torchvision_retinanet_v2()))
    assert isinstance(model.head.cls_subnet[0].norm, torch.nn.GroupNorm)
    assert model.head.cls_subnet[0].conv.bias is None
    config = RetinaHeadConfig(anchor_sizes=(32, 64))
    with pytest.raises(ValueError, match="2 sizes for the 5 pyramid levels"):
        build_model(tiny(detectron2_retinanet()).replace(retina_head=config))
