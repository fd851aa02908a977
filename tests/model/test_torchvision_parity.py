"""torchvision's COCO Mask R-CNN state dicts load into segfpn and give torchvision's outputs, at
every image size, not only the ones that happen to agree.

The real files cannot be downloaded here, so torchvision's own models are built with seeded,
calibrated random weights (tests/reference.py), saved, loaded with segfpn.load and compared on real
photos resized to many sizes (the sizes photos come in, and seeded random ones), with a score
threshold of 0 so that 100 detections flow through every head. Masks are binarised with >= 0.5
on both sides (segfpn.evaluation.agreement).
"""

import numpy as np
import pytest
import torch

import segfpn
from segfpn.evaluation.agreement import MASK_THRESHOLD, compare_detections
from reference import build_torchvision_maskrcnn

ALL_DETECTIONS = {"box_head": {"score_threshold": 0.0}}
#: (width, height): the sizes photos come in (COCO's commonest among them), a panorama and a tall
#: strip, then three seeded random sizes.
SIZES = [(640, 427), (427, 640), (640, 480), (500, 375), (333, 500), (1024, 683), (1333, 800), (2000, 1500),
         (300, 2000), (2000, 300)]
SIZES += [tuple(int(v) for v in np.random.default_rng(2026 + i).integers(150, 2400, size=2)) for i in range(3)]


@pytest.fixture(scope="module", params=[1, 2], ids=["v1", "v2"])
def pair(request, tmp_path_factory, photo):
    calibration = [photo(0, (640, 427)), photo(4, (333, 500))]
    reference = build_torchvision_maskrcnn(request.param, seed=request.param, calibration_images=calibration)
    path = tmp_path_factory.mktemp("tv") / f"maskrcnn_v{request.param}.pth"
    torch.save(reference.state_dict(), path)
    ours = segfpn.load(path, device="cpu", overrides=ALL_DETECTIONS)
    return request.param, reference, ours


def test_architecture_recognised_and_every_tensor_loaded(pair):
    version, reference, ours = pair
    assert ours.arch == {1: "maskrcnn_resnet50_fpn", 2: "maskrcnn_resnet50_fpn_v2"}[version]
    assert ours.report.ok
    expected = [k for k in reference.state_dict() if not k.endswith("num_batches_tracked")]
    assert len(ours.report.matched) == len(expected)


@pytest.mark.parametrize("size", SIZES, ids=[f"{w}x{h}" for w, h in SIZES])
def test_same_detections_as_torchvision(pair, size, parity_figures, photo):
    version, reference, ours = pair
    image = photo(SIZES.index(size), size)
    with torch.no_grad():
        tensor = torch.from_numpy(image).permute(2, 0, 1).float() / 255.0
        network_input, _ = reference.transform([tensor])
        ref = reference([tensor])[0]
    result = ours.predict(image)
    assert result.input_size == tuple(network_input.image_sizes[0])
    assert result.padded_size == tuple(network_input.tensors.shape[-2:])
    assert len(ref["boxes"]) == 100 and len(result.instances) == 100
    assert ref["scores"].max() - ref["scores"].min() > 0.05, "degenerate reference scores"
    # torchvision labels are COCO ids (slot 0 = background); ours index the 90 foreground slots.
    reference_dets = {"boxes": ref["boxes"].numpy(), "scores": ref["scores"].numpy(),
                      "labels": ref["labels"].numpy() - 1, "masks": (ref["masks"][:, 0] >= MASK_THRESHOLD).numpy()}
    inst = result.instances
    agreement = compare_detections(reference_dets, {"boxes": inst.boxes, "scores": inst.scores, "labels": inst.labels,
                                                    "masks": np.asarray(inst.masks), "mask_probs": inst.mask_probs})
    parity_figures(f"torchvision v{version}", f"{size[0]}x{size[1]}", agreement.to_dict())
    # Every detection matched; a mask may differ only where torchvision's paste box, truncated to
    # whole pixels, falls on the other side of an integer for a box 1e-4 px away (paste_rounding:
    # our probabilities pasted into torchvision's box match its mask).
    assert agreement.ok, agreement
    assert agreement.paste_rounding <= 3, agreement
    assert inst.masks.shape[1:] == image.shape[:2]
