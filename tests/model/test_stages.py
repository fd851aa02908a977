"""Each stage on its own: shapes, names, and the rules the papers and the reference libraries state."""

import math

import numpy as np
import pytest
import torch

from segfpn.config import (BackboneConfig, FPNConfig, ModelConfig, PoolerConfig, detectron2_input,
                           detectron2_panoptic_fpn, torchvision_maskrcnn_v1)
from segfpn.model.anchors import AnchorGenerator, cell_anchors
from segfpn.model.backbone import ResNet
from segfpn.model.boxes import decode_boxes, encode_boxes
from segfpn.model.fpn import FPN
from segfpn.model.poolers import LevelRoIPooler, assign_levels
from segfpn.model.preprocess import preprocess, resized_size


def test_backbone_levels_and_strides():
    for depth, stride_in_1x1 in [(50, False), (50, True), (18, False)]:
        cfg = BackboneConfig(depth=depth, stem_channels=8, res2_out_channels=16, bottleneck_channels=4,
                             stride_in_1x1=stride_in_1x1, norm="gn", norm_groups=4)
        out = ResNet(cfg)(torch.randn(1, 3, 64, 96))
        assert list(out) == ["c2", "c3", "c4", "c5"]
        assert [tuple(t.shape[-2:]) for t in out.values()] == [(16, 24), (8, 12), (4, 6), (2, 3)]
        assert [t.shape[1] for t in out.values()] == [16, 32, 64, 128]


def test_stride_placement_is_a_setting():
    msra = ResNet(BackboneConfig(stride_in_1x1=True, stem_channels=8, res2_out_channels=16, bottleneck_channels=4))
    tv = ResNet(BackboneConfig(stride_in_1x1=False, stem_channels=8, res2_out_channels=16, bottleneck_channels=4))
    assert msra.stages["c3"][0].conv1.conv.stride == (2, 2) and msra.stages["c3"][0].conv2.conv.stride == (1, 1)
    assert tv.stages["c3"][0].conv1.conv.stride == (1, 1) and tv.stages["c3"][0].conv2.conv.stride == (2, 2)


def test_fpn_top_down_sum_and_p6():
    fpn = FPN({"c2": 4, "c3": 4, "c4": 4, "c5": 4}, FPNConfig(out_channels=4))
    for module in fpn.modules():
        if isinstance(module, torch.nn.Conv2d):
            torch.nn.init.dirac_(module.weight)  # identity convs: the FPN reduces to its additions
            torch.nn.init.zeros_(module.bias)
    feats = {f"c{k}": torch.full((1, 4, 2 ** (7 - k), 2 ** (7 - k)), float(10 ** (k - 2))) for k in range(2, 6)}
    out = fpn(feats)
    assert list(out) == ["p2", "p3", "p4", "p5", "p6"]
    assert out["p5"].unique().tolist() == [1000.0]
    assert out["p4"].unique().tolist() == [1100.0]       # c4 + upsampled p5 merge
    assert out["p2"].unique().tolist() == [1111.0]
    assert out["p6"].shape[-1] == math.ceil(out["p5"].shape[-1] / 2)


def test_anchor_shapes_and_rounding():
    exact = cell_anchors(32, (0.5, 1.0, 2.0), round_corners=False)
    rounded = cell_anchors(32, (0.5, 1.0, 2.0), round_corners=True)
    widths, heights = exact[:, 2] - exact[:, 0], exact[:, 3] - exact[:, 1]
    torch.testing.assert_close(widths * heights, torch.full((3,), 1024.0))
    torch.testing.assert_close(heights / widths, torch.tensor([0.5, 1.0, 2.0]))
    assert rounded[0].tolist() == [-23.0, -11.0, 23.0, 11.0] and exact[0, 0].item() == pytest.approx(-22.627, abs=1e-3)
    gen = AnchorGenerator(strides=(4, 64), sizes=(32, 512), aspect_ratios=(1.0,), round_corners=False,
                          strides_from_grid=True)
    p2, p6 = gen([(200, 200), (13, 13)], padded_size=(800, 800))
    assert p2.shape == (200 * 200, 4) and p6[1, 0] - p6[0, 0] == 61  # torchvision: 800 // 13
    nominal = AnchorGenerator(strides=(64,), sizes=(512,), aspect_ratios=(1.0,), round_corners=False)
    assert nominal([(13, 13)], padded_size=(800, 800))[0][1, 0] - nominal([(13, 13)], (800, 800))[0][0, 0] == 64


@pytest.mark.parametrize("side, level", [(224, 4), (112, 3), (56, 2), (448, 5), (10, 2), (2000, 5), (223, 3), (225, 4)])
def test_level_assignment_rule(side, level):
    boxes = torch.tensor([[10.0, 10.0, 10.0 + side, 10.0 + side]])
    assert assign_levels(boxes, PoolerConfig()).item() == level


def test_pooler_reads_only_the_assigned_level():
    features = {f"p{k}": torch.full((1, 1, 256 // 2 ** k, 256 // 2 ** k), float(k)) for k in range(2, 6)}
    boxes = torch.tensor([[0.0, 0.0, 40.0, 40.0], [0.0, 0.0, 120.0, 120.0], [0.0, 0.0, 250.0, 250.0]])
    pooler = LevelRoIPooler(output_size=7, config=PoolerConfig(aligned=True, sampling_ratio=0))
    pooled, levels = pooler(features, [boxes])
    assert levels.tolist() == [2, 3, 4]
    assert [pooled[i].unique().item() for i in range(3)] == [2.0, 3.0, 4.0]


def test_box_coding_round_trip():
    reference = torch.tensor([[10.0, 20.0, 50.0, 80.0], [0.0, 0.0, 5.0, 5.0]])
    target = torch.tensor([[12.0, 18.0, 60.0, 70.0], [1.0, 1.0, 4.0, 9.0]])
    deltas = encode_boxes(target, reference, (10.0, 10.0, 5.0, 5.0))
    torch.testing.assert_close(decode_boxes(deltas, reference, (10.0, 10.0, 5.0, 5.0)), target)


def test_resize_rules_of_both_families():
    tv, d2 = torchvision_maskrcnn_v1().input, detectron2_input()
    assert resized_size(512, 512, tv) == (800, 800) == resized_size(512, 512, d2)
    assert resized_size(301, 517, d2) == (776, 1333)   # long side capped at 1333, rounded
    from torchvision.models.detection.transform import GeneralizedRCNNTransform

    reference = GeneralizedRCNNTransform(800, 1333, list(tv.pixel_mean), list(tv.pixel_std)).eval()
    for h, w in [(301, 517), (300, 8000), (600, 906), (353, 500), (1200, 1800)]:
        images, _ = reference([torch.rand(3, h, w)])
        assert resized_size(h, w, tv) == tuple(images.image_sizes[0])
        assert preprocess([np.zeros((h, w, 3), np.uint8)], tv).padded_size == tuple(images.tensors.shape[-2:])
    batch = preprocess([np.zeros((301, 517, 3), np.uint8)], d2)
    assert batch.padded_size == (800, 1344) and batch.image_sizes == [(776, 1333)]
    # Padding is zero after normalisation.
    assert batch.tensor[0, :, 780:, :].abs().max() == 0


def test_config_round_trip_and_overrides():
    cfg = detectron2_panoptic_fpn(101)
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg
    changed = cfg.with_overrides({"box_head": {"score_threshold": 0.3}})
    assert changed.box_head.score_threshold == 0.3 and changed.backbone == cfg.backbone
    with pytest.raises(ValueError, match="unknown field"):
        cfg.with_overrides({"box_head": {"score": 0.3}})
    with pytest.raises(ValueError, match="not used by this model"):
        torchvision_maskrcnn_v1().with_overrides({"semantic_head": {"num_classes": 3}})
