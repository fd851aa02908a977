"""The forward's options: ``pooler=`` (another RoI level rule) is the run of a model built with
that rule, ``semantic=False`` the same run without the semantic head, for both detectors; and the
RoI heads say which proposal each detection came from."""

import dataclasses

import numpy as np
import pytest
import torch
from PIL import Image
from testdata import ROOT, load_rgb

import segfpn
from segfpn.categories import coco_instance_categories
from segfpn.config import BackboneConfig, PoolerConfig, detectron2_retinanet
from segfpn.model.build import build_model
from segfpn.model.poolers import assign_levels
from segfpn.model.preprocess import preprocess
from segfpn.predictor import Predictor

BUNDLED = ROOT / "weights" / "synthetic_panoptic_fpn.safetensors"
PHOTOS = ["synthetic_shapes_0.png", "synthetic_shapes_1.png", "synthetic_shapes_2.png"]


@pytest.fixture(scope="module")
def bundled():
    return segfpn.load(BUNDLED, device="cpu")


def random_batch(predictor, seed: int):
    """A synthetic example resized to a random size, preprocessed for ``predictor``."""
    rng = np.random.default_rng(seed)
    width, height = (int(v) for v in rng.integers(160, 400, size=2))
    image = np.asarray(Image.fromarray(load_rgb(PHOTOS[seed % len(PHOTOS)])).resize((width, height)))
    batch = preprocess([image], predictor.config.input)
    batch.tensor = batch.tensor.contiguous(memory_format=torch.channels_last)  # as the optimized predictor runs
    return batch


def random_rule(rule: PoolerConfig, seed: int) -> dict:
    """Changes to the level rule: every RoI on one level, or another k0 and s0."""
    rng = np.random.default_rng(1000 + seed)
    if seed % 2:
        level = int(rng.integers(rule.min_level, rule.max_level + 1))
        return {"min_level": level, "max_level": level}
    return {"canonical_level": int(rng.integers(3, 6)), "canonical_size": float(rng.uniform(56, 448))}


def assert_same_detections(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        for name in ("boxes", "scores", "labels", "mask_probs", "levels", "box_levels", "proposal_index"):
            assert torch.equal(getattr(x, name), getattr(y, name)), name


@pytest.mark.parametrize("seed", range(2))
@torch.inference_mode()
def test_forward_with_another_rule_is_the_model_built_with_it(bundled, seed):
    changes = random_rule(bundled.config.pooler, seed)
    built = segfpn.load(BUNDLED, device="cpu", overrides={"pooler": changes})
    batch = random_batch(bundled, seed)
    rule = dataclasses.replace(bundled.config.pooler, **changes)
    assert rule == built.config.pooler
    ours, theirs = bundled.model(batch, pooler=rule), built.model(batch)
    assert sum(len(d.boxes) for d in theirs.instances) > 0
    assert_same_detections(ours.instances, theirs.instances)
    assert torch.equal(ours.semantic_logits, theirs.semantic_logits)


@torch.inference_mode()
def test_forward_without_the_semantic_head(bundled):
    batch = random_batch(bundled, 5)
    full_timings, timings = {}, {}
    full = bundled.model(batch, timings=full_timings)
    without = bundled.model(batch, semantic=False, timings=timings, keep_bottom_up=False)
    assert full.semantic_logits is not None and full.semantic_stride == 4
    assert without.semantic_logits is None and without.semantic_stride == 1
    assert_same_detections(without.instances, full.instances)
    assert without.bottom_up == {} and list(full.bottom_up) == ["c2", "c3", "c4", "c5"]
    assert set(timings) == set(full_timings) == {"backbone_fpn", "heads", "semantic_head"}


@torch.inference_mode()
def test_each_detection_names_its_proposal(bundled):
    batch = random_batch(bundled, 7)
    outputs = bundled.model(batch)
    detections, proposals = outputs.instances[0], outputs.proposals[0]
    index = detections.proposal_index
    assert len(detections.boxes) > 5 and index.dtype == torch.int64
    assert 0 <= int(index.min()) and int(index.max()) < len(proposals.boxes)
    # The box level is the level of that proposal under the rule.
    assert torch.equal(assign_levels(proposals.boxes[index], bundled.config.pooler), detections.box_levels)


@torch.inference_mode()
def test_retinanet_takes_the_same_keywords():
    torch.manual_seed(0)
    config = detectron2_retinanet()
    config = config.replace(
        num_classes=80, backbone=BackboneConfig(depth=18, stem_channels=8, res2_out_channels=16),
        fpn=dataclasses.replace(config.fpn, out_channels=16),
        retina_head=dataclasses.replace(config.retina_head, num_convs=2, norm_groups=8, score_threshold=0.0))
    retinanet = Predictor(build_model(config), coco_instance_categories(), device="cpu", optimize=True)
    batch = random_batch(retinanet, 3)
    full = retinanet.model(batch)
    without = retinanet.model(batch, semantic=False, keep_bottom_up=False)
    assert without.semantic_logits is None and without.bottom_up == {}
    assert len(full.instances[0].boxes) > 0 and full.instances[0].proposal_index is None
    for x, y in zip(full.instances, without.instances):
        assert torch.equal(x.boxes, y.boxes) and torch.equal(x.scores, y.scores) and torch.equal(x.levels, y.levels)
    with pytest.raises(ValueError, match="RetinaNet has no RoI heads"):
        retinanet.model(batch, pooler=PoolerConfig())
