"""torchvision's box-only detectors, Faster R-CNN and RetinaNet (v1 and v2), load into segfpn and
give torchvision's detections at every image size.

As for Mask R-CNN (test_torchvision_parity.py): torchvision's own builders with seeded, calibrated
random weights (tests/reference.py), saved, loaded with segfpn.load and run on real photos resized
to sizes photos come in, a panorama, a tall strip and a seeded random size. Faster R-CNN runs with
a score threshold of 0 (100 detections through every head); RetinaNet with its own 0.05
threshold, its logits calibrated so that a few thousand (anchor, class) pairs pass it, and its
defaults otherwise (up to 300 detections). Every torchvision detection must have one of
ours of the same class with box IoU >= 0.99 and a score within 1e-3, and the case must not be
degenerate: scores spread, detections from several pyramid levels (all of them over the sizes).
"""

import numpy as np
import pytest
import torch

import segfpn
from segfpn.checkpoints.loading import load_checkpoint
from segfpn.cli import main as cli_main
from segfpn.evaluation.agreement import compare_detections
from reference import build_torchvision_detector

#: builder -> (overrides for segfpn, keyword arguments for torchvision's builder): the same settings on
#: both sides. v2's GroupNorm standardises every level, so with random weights p3's ~12M (anchor,
#: class) pairs would take its whole top-1000 and every detection: a top-100 per level lets each
#: level reach the NMS (and tests that setting; v1 runs with the default 1000).
MODELS = {
    "fasterrcnn_resnet50_fpn": ({"box_head": {"score_threshold": 0.0}}, {"box_score_thresh": 0.0}),
    "fasterrcnn_resnet50_fpn_v2": ({"box_head": {"score_threshold": 0.0}}, {"box_score_thresh": 0.0}),
    "retinanet_resnet50_fpn": ({}, {}),
    "retinanet_resnet50_fpn_v2": ({"retina_head": {"topk_candidates": 100}}, {"topk_candidates": 100}),
}
#: The models' input size, on both sides: shorter side 512, longer at most 853 (the COCO setting,
#: 800 / 1333, scaled by 0.64), so that four full-size models at six sizes take ~2 minutes on two
#: cores. The resize rule is the same code at every size (test_reference_arithmetic.py checks it
#: against torchvision's at 800 / 1333 and random settings, test_torchvision_parity.py runs
#: Mask R-CNN at 800 / 1333).
INPUT_SIZE = {"min_size": 512, "max_size": 853}
#: (width, height): COCO's commonest sizes, a panorama and a tall strip (the long-side cap), and a
#: seeded random size.
SIZES = [(640, 427), (427, 640), (500, 375), (2000, 300), (300, 2000)]
SIZES += [tuple(int(v) for v in np.random.default_rng(4242).integers(150, 2400, size=2))]
#: The levels a model's detections come from: Faster R-CNN's RoI levels, RetinaNet's anchor levels.
LEVELS = {"fasterrcnn": {2, 3, 4, 5}, "retinanet": {3, 4, 5, 6, 7}}


class Pair:
    """torchvision's model and segfpn's loaded from its state dict; each size is run once."""

    def __init__(self, name: str, reference, ours, path, photo):
        self.name, self.reference, self.ours, self.path, self.photo = name, reference, ours, path, photo
        self.family = name.split("_")[0]
        self._runs = {}

    def run(self, size: tuple[int, int]):
        """(torchvision's network input, its detections, our Result) on the photo at ``size``."""
        if size not in self._runs:
            image = self.photo(SIZES.index(size), size)
            with torch.no_grad():
                tensor = torch.from_numpy(image).permute(2, 0, 1).float() / 255.0
                network_input, _ = self.reference.transform([tensor])
                ref = self.reference([tensor])[0]
            self._runs[size] = (network_input, ref, self.ours.predict(image))
        return self._runs[size]


@pytest.fixture(scope="module", params=list(MODELS))
def pair(request, tmp_path_factory, photo):
    name = request.param
    overrides, builder_kwargs = MODELS[name]
    # Calibrated on the photos at the sizes tested, shrunk (a random ResNet's output scale varies
    # from image to image; the weakest image sets RetinaNet's class bias).
    calibration = [photo(i, size) for i, size in enumerate(SIZES)]
    reference = build_torchvision_detector(name, seed=3, calibration_images=calibration, calibration_size=(384, 640),
                                           **builder_kwargs, **INPUT_SIZE)
    path = tmp_path_factory.mktemp("tv") / f"{name}.pth"
    torch.save(reference.state_dict(), path)
    ours = segfpn.load(path, device="cpu", overrides={**overrides, "input": INPUT_SIZE})
    return Pair(name, reference, ours, path, photo)


def test_architecture_recognised_and_every_tensor_loaded(pair):
    assert pair.ours.arch == pair.name
    assert pair.ours.report.ok
    expected = [k for k in pair.reference.state_dict() if not k.endswith("num_batches_tracked")]
    assert len(pair.ours.report.matched) == len(expected)
    assert not pair.ours.config.has_masks
    assert pair.ours.config.detector == ("retinanet" if pair.family == "retinanet" else "rcnn")


def test_convert_to_safetensors_keeps_the_architecture(pair, tmp_path):
    target = tmp_path / f"{pair.name}.safetensors"
    assert cli_main(["convert", str(pair.path), str(target)]) == 0
    converted, original = load_checkpoint(target), load_checkpoint(pair.path)
    assert converted.arch == pair.name and converted.source_format == "segfpn"
    assert converted.config == original.config and converted.report.ok
    state = converted.model.state_dict()
    assert all(torch.equal(state[k], v) for k, v in original.model.state_dict().items())


@pytest.mark.parametrize("size", SIZES, ids=[f"{w}x{h}" for w, h in SIZES])
def test_same_detections_as_torchvision(pair, size, parity_figures):
    network_input, ref, result = pair.run(size)
    assert result.input_size == tuple(network_input.image_sizes[0])
    assert result.padded_size == tuple(network_input.tensors.shape[-2:])
    inst = result.instances
    assert inst.masks is None and inst.mask_probs is None
    assert len(ref["boxes"]) >= 100, "degenerate reference: too few detections"
    assert ref["scores"].max() - ref["scores"].min() > 0.05, "degenerate reference scores"
    # torchvision labels are COCO ids (slot 0 = background); ours index the 90 foreground slots.
    assert (ref["labels"] > 0).all()
    reference_dets = {"boxes": ref["boxes"].numpy(), "scores": ref["scores"].numpy(),
                      "labels": ref["labels"].numpy() - 1}
    agreement = compare_detections(reference_dets, {"boxes": inst.boxes, "scores": inst.scores, "labels": inst.labels})
    parity_figures(f"torchvision {pair.name}", f"{size[0]}x{size[1]}", agreement.to_dict())
    assert agreement.ok, agreement
    assert set(inst.levels.tolist()) | set(inst.box_levels.tolist()) <= LEVELS[pair.family]
    assert len(set(inst.levels.tolist())) >= 2, "every detection from one level"


def test_every_level_is_used_over_the_sizes(pair):
    used = set()
    for size in SIZES:
        instances = pair.run(size)[2].instances
        used |= set(instances.levels.tolist()) | set(instances.box_levels.tolist())
    assert used == LEVELS[pair.family]
