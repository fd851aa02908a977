"""The inference speed-ups of segfpn.model.optimize give the outputs of what they replace."""

import copy

import pytest
import torch
from torch import nn
from torchvision.ops import FrozenBatchNorm2d, batched_nms
from torchvision.ops import roi_align as tv_roi_align

from segfpn.config import BackboneConfig
from segfpn.model.backbone import ResNet
from segfpn.model.layers import ConvNorm
from segfpn.model.boxes import batched_nms_top_k
from segfpn.model.optimize import count_foldable, fold_frozen_batchnorm
from segfpn.model.roi_align import roi_align


def randomise_norms(model, generator):
    for m in model.modules():
        if isinstance(m, (FrozenBatchNorm2d, nn.BatchNorm2d)):
            m.weight.data.uniform_(0.5, 1.5, generator=generator)
            m.bias.data.normal_(0, 0.2, generator=generator)
            m.running_mean.normal_(0, 0.2, generator=generator)
            m.running_var.uniform_(0.5, 2.0, generator=generator)


@pytest.mark.parametrize("norm", ["frozen_bn", "bn"])
def test_folded_batchnorm_gives_the_same_features(norm):
    generator = torch.Generator().manual_seed(0)
    model = ResNet(BackboneConfig(norm=norm, stem_channels=16, res2_out_channels=32, bottleneck_channels=8)).eval()
    randomise_norms(model, generator)
    folded = copy.deepcopy(model)
    assert fold_frozen_batchnorm(folded) == count_foldable(model) > 0
    assert count_foldable(folded) == 0
    assert not any(isinstance(m, (FrozenBatchNorm2d, nn.BatchNorm2d)) for m in folded.modules())
    x = torch.randn(1, 3, 64, 96, generator=generator)
    with torch.no_grad():
        ref, ours = model(x), folded(x)
    for name in ref:
        torch.testing.assert_close(ours[name], ref[name], rtol=1e-4, atol=1e-4)


def test_fold_leaves_group_norm_and_training_batchnorm_alone():
    gn = ConvNorm(4, 32, 3, norm="gn")
    bn = ConvNorm(4, 8, 3, norm="bn").train()
    assert fold_frozen_batchnorm(nn.ModuleList([gn, bn])) == 0
    assert isinstance(gn.norm, nn.GroupNorm) and isinstance(bn.norm, nn.BatchNorm2d)


def random_rois(generator, n, height, width, scale, batch):
    size = torch.tensor([width, height], dtype=torch.float32) / scale
    xy = torch.rand(n, 2, generator=generator) * (size * 1.1) - size * 0.05
    wh = torch.rand(n, 2, generator=generator) * size * 0.5
    boxes = torch.cat([xy, xy + wh], dim=1)
    boxes[:10, 2:] = boxes[:10, :2]  # empty boxes
    boxes[10:20] = torch.tensor([-60.0, -60.0, -40.0, -30.0])  # outside, before the start
    boxes[20:30] = torch.cat([size - 3, size + 20])  # across the far border
    boxes[30:40, 2:] = boxes[30:40, :2] + 0.3  # far under a cell
    index = torch.randint(0, batch, (n, 1), generator=generator).float()
    return torch.cat([index, boxes], dim=1)


@pytest.mark.parametrize("aligned,sampling_ratio", [(False, 2), (True, 0), (True, 3)],
                         ids=["torchvision", "detectron2", "fixed3"])
@pytest.mark.parametrize("output_size", [7, 14, (5, 9)])
def test_roi_align_matches_torchvision(aligned, sampling_ratio, output_size):
    generator = torch.Generator().manual_seed(1)
    features = torch.randn(2, 32, 40, 56, generator=generator)
    rois = random_rois(generator, 300, 40, 56, 0.25, 2)
    with torch.inference_mode():
        expected = tv_roi_align(features, rois, output_size, 0.25, sampling_ratio, aligned)
        for layout in (torch.contiguous_format, torch.channels_last):
            ours = roi_align(features.contiguous(memory_format=layout), rois, output_size, 0.25, sampling_ratio,
                             aligned)
            assert ours.shape == expected.shape
            torch.testing.assert_close(ours, expected, rtol=0, atol=2e-6)


def test_roi_align_single_thread_bf16_no_grad_and_empty():
    generator = torch.Generator().manual_seed(2)
    features = torch.randn(1, 16, 30, 30, generator=generator)
    rois = random_rois(generator, 8, 30, 30, 0.5, 1)
    with torch.no_grad():
        expected = tv_roi_align(features, rois, 7, 0.5, 2, False)
        torch.testing.assert_close(roi_align(features, rois, 7, 0.5, 2, False), expected, rtol=0, atol=2e-6)
        low = roi_align(features.bfloat16(), rois, 7, 0.5, 2, False)
        assert low.dtype == torch.bfloat16
        torch.testing.assert_close(low.float(), tv_roi_align(features.bfloat16().float(), rois, 7, 0.5, 2, False),
                                   rtol=1e-2, atol=1e-2)
        assert roi_align(features, rois[:0], 7, 0.5, 2, False).shape == (0, 16, 7, 7)
        with torch.autocast("cpu", dtype=torch.bfloat16):  # the bf16 mode calls it under autocast
            assert roi_align(features.bfloat16(), rois, 7, 0.5, 2, False).dtype == torch.bfloat16
    # With gradients it is torchvision's op (differentiable).
    grad_features = features.clone().requires_grad_()
    roi_align(grad_features, rois, 7, 0.5, 2, False).sum().backward()
    assert grad_features.grad is not None


def random_detections(generator, n, num_classes):
    xy = torch.rand(n, 2, generator=generator) * 700
    boxes = torch.cat([xy, xy + 5 + torch.rand(n, 2, generator=generator) * 150], dim=1)
    scores = torch.rand(n, generator=generator)
    labels = torch.randint(0, num_classes, (n,), generator=generator)
    return boxes, scores, labels


@pytest.mark.parametrize("n,k", [(90000, 100), (20000, 100), (3000, 1000), (900, 100), (5000, 0)])
def test_nms_top_k_equals_batched_nms(n, k):
    boxes, scores, labels = random_detections(torch.Generator().manual_seed(n), n, 90)
    torch.testing.assert_close(batched_nms_top_k(boxes, scores, labels, 0.5, k),
                               batched_nms(boxes, scores, labels, 0.5)[:k])


def test_nms_top_k_with_tied_scores_keeps_the_same_boxes():
    boxes, scores, labels = random_detections(torch.Generator().manual_seed(5), 20000, 90)
    scores = (scores * 20).round() / 20  # 21 distinct scores: ties everywhere
    expected = batched_nms(boxes, scores, labels, 0.5)
    ours = batched_nms_top_k(boxes, scores, labels, 0.5, 100)
    # Among equal scores torchvision's order is arbitrary (an unstable sort); the scores in
    # order, and the kept boxes above the last score, are the same.
    torch.testing.assert_close(scores[ours], scores[expected[:100]])
    above = scores[ours] > scores[ours[-1]]
    assert set(ours[above].tolist()) == set(expected[:100][scores[expected[:100]] > scores[ours[-1]]].tolist())
    assert set(ours.tolist()) <= set(expected.tolist())


def test_predictions_are_the_same_in_any_thread():
    """The app predicts in server worker threads: after the model has run once (in any thread),
    a new thread must run it with the same settings (thread count included) and get the same
    outputs. Calling torch.set_num_threads() anywhere in the model would break this."""
    import threading

    import numpy as np

    import segfpn
    from testdata import D2_MINI, load_rgb

    predictor = segfpn.load(D2_MINI / "panoptic_fpn_mini.pkl", device="cpu")
    image = load_rgb("astronaut.png")
    threads_before = torch.get_num_threads()
    first = predictor.predict(image)
    seen = {}

    def in_new_thread():
        seen["threads"] = torch.get_num_threads()
        seen["result"] = predictor.predict(image)

    worker = threading.Thread(target=in_new_thread)
    worker.start()
    worker.join()
    assert torch.get_num_threads() == threads_before and seen["threads"] == threads_before
    again = seen["result"]
    assert len(again.instances.scores) == len(first.instances.scores) > 10
    np.testing.assert_array_equal(again.instances.boxes, first.instances.boxes)
    np.testing.assert_array_equal(again.instances.masks, first.instances.masks)
    np.testing.assert_array_equal(again.panoptic.segment_ids, first.panoptic.segment_ids)
