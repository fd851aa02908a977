"""torchvision's COCO Mask R-CNN state dicts load into segfpn and give torchvision's outputs.

The real files cannot be downloaded here, so torchvision's own models are built with seeded,
calibrated random weights (segfpn.reference), saved, loaded with segfpn.load and compared on real
photos with a score threshold of 0, so that 100 detections flow through every head.
"""

import numpy as np
import pytest
import torch
from torchvision.ops import box_iou

import segfpn
from segfpn.reference import build_torchvision_maskrcnn

from testdata import load_rgb

IMAGES = {1: ["astronaut.png", "dogs_people_16004479832.jpg"], 2: ["cyclists_33823288584.jpg", "camera_gray.png"]}
ALL_DETECTIONS = {"box_head": {"score_threshold": 0.0}}


@pytest.fixture(scope="module", params=[1, 2], ids=["v1", "v2"])
def pair(request, tmp_path_factory):
    images = {name: load_rgb(name) for name in IMAGES[request.param]}
    reference = build_torchvision_maskrcnn(request.param, seed=request.param, calibration_images=list(images.values()))
    path = tmp_path_factory.mktemp("tv") / f"maskrcnn_v{request.param}.pth"
    torch.save(reference.state_dict(), path)
    ours = segfpn.load(path, device="cpu", overrides=ALL_DETECTIONS)
    return request.param, reference, ours, images


def test_architecture_recognised_and_every_tensor_loaded(pair):
    version, reference, ours, _ = pair
    assert ours.arch == {1: "maskrcnn_resnet50_fpn", 2: "maskrcnn_resnet50_fpn_v2"}[version]
    assert ours.report.ok
    expected = [k for k in reference.state_dict() if not k.endswith("num_batches_tracked")]
    assert len(ours.report.matched) == len(expected)


def test_same_detections_as_torchvision(pair):
    _, reference, ours, images = pair
    for name, image in images.items():
        with torch.no_grad():
            ref = reference([torch.from_numpy(image).permute(2, 0, 1).float() / 255.0])[0]
        result = ours.predict(image).instances
        assert len(ref["boxes"]) == 100 and len(result) == 100, name
        assert ref["scores"].max() - ref["scores"].min() > 0.05, f"{name}: degenerate reference scores"
        # torchvision labels are COCO ids (slot 0 = background); ours index the 90 foreground slots.
        same_class = torch.from_numpy(result.labels + 1)[None, :] == ref["labels"][:, None]
        iou = box_iou(ref["boxes"], torch.from_numpy(result.boxes)) * same_class
        best, match = iou.max(dim=1)
        assert best.min() >= 0.99, f"{name}: {(best < 0.99).sum()} torchvision detections unmatched"
        np.testing.assert_allclose(result.scores[match.numpy()], ref["scores"].numpy(), atol=1e-3)
        ref_masks = (ref["masks"][:, 0] > 0.5).numpy()
        our_masks = result.masks[match.numpy()]
        inter = (ref_masks & our_masks).sum(axis=(1, 2))
        union = (ref_masks | our_masks).sum(axis=(1, 2))
        mask_iou = np.where(union > 0, inter / np.maximum(union, 1), 1.0)
        assert mask_iou.min() >= 0.98, f"{name}: mask IoU {mask_iou.min():.3f}"
        assert result.masks.shape[1:] == image.shape[:2]
