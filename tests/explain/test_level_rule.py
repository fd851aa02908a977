"""The level rule worked out for one box (segfpn.explain.level_rule_for_box), against hand-worked
boxes at the boundaries sqrt(wh) = 112, 224, 448 and one pixel either side, under torchvision's
epsilon (1e-6 after the log2) and detectron2's (1e-8 inside it), and against the model's own
assign_levels on boxes nobody picked."""

import dataclasses
import math

import numpy as np
import pytest
import torch

from segfpn.config import PoolerConfig, detectron2_mask_rcnn, torchvision_maskrcnn_v1
from segfpn.explain import changed_rule, level_rule_for_box
from segfpn.model.poolers import assign_levels

TORCHVISION = torchvision_maskrcnn_v1().pooler
DETECTRON2 = detectron2_mask_rcnn().pooler

#: sqrt(wh) in network pixels -> level, worked out by hand from k = floor(4 + log2(s / 224)):
#: log2(112 / 224) = -1 and log2(448 / 224) = 1 exactly, so 112, 224 and 448 open p3, p4, p5.
HAND_WORKED = {111: 2, 112: 3, 113: 3, 223: 3, 224: 4, 225: 4, 447: 4, 448: 5, 449: 5}


@pytest.mark.parametrize("rule", [TORCHVISION, DETECTRON2], ids=["torchvision", "detectron2"])
@pytest.mark.parametrize("side, level", sorted(HAND_WORKED.items()))
def test_square_boxes_at_the_boundaries(rule, side, level):
    worked = level_rule_for_box([10.0, 20.0, 10.0 + side, 20.0 + side], rule)
    assert (worked.width, worked.height, worked.size) == (side, side, side)
    assert worked.level == level
    assert math.floor(worked.value) == level and not worked.clamped
    # The value itself: k0 + log2(s / 224) (+ the epsilon after the log2 for torchvision).
    expected = 4 + math.log2(side / 224)
    assert worked.value == pytest.approx(expected, abs=2e-6)
    assert worked.text().endswith(f"= {level}: p{level}")


@pytest.mark.parametrize("rule", [TORCHVISION, DETECTRON2], ids=["torchvision", "detectron2"])
def test_exact_boundaries_sit_on_the_integer(rule):
    # At exactly 112, 224, 448 the value is the integer (+1e-6 with torchvision's epsilon; detectron2's
    # 1e-8 inside the log2 vanishes in float32 next to 0.5, 1 and 2).
    for side, level in ((112, 3), (224, 4), (448, 5)):
        value = level_rule_for_box([0.0, 0.0, side, side], rule).value
        if rule.level_epsilon:
            assert value == float(np.float32(level) + np.float32(1e-6))
        else:
            assert value == level


@pytest.mark.parametrize("rule", [TORCHVISION, DETECTRON2], ids=["torchvision", "detectron2"])
@pytest.mark.parametrize("w, h, level", [(112, 448, 4), (56, 224, 3), (224, 896, 5), (111, 448, 3), (448, 449, 5)])
def test_elongated_boxes_use_the_geometric_mean(rule, w, h, level):
    worked = level_rule_for_box([0.0, 0.0, w, h], rule)
    assert worked.size == pytest.approx(math.sqrt(w * h))
    assert worked.level == level


def test_clamped_levels_say_so():
    small = level_rule_for_box([0, 0, 20, 20], TORCHVISION)
    large = level_rule_for_box([0, 0, 2000, 2000], TORCHVISION)
    assert (small.unclamped, small.level, small.clamped) == (0, 2, True)
    assert (large.unclamped, large.level, large.clamped) == (7, 5, True)
    assert "clamped to 2…5: p2" in small.text() and "clamped to 2…5: p5" in large.text()
    empty = level_rule_for_box([5, 5, 5, 9], TORCHVISION)
    assert empty.level == 2 and empty.value == -math.inf and "-∞" in empty.text()


def test_other_k0_and_s0():
    rule = dataclasses.replace(TORCHVISION, canonical_level=3, canonical_size=112.0)
    for side, level in ((111, 2), (112, 3), (223, 3), (224, 4)):
        assert level_rule_for_box([0, 0, side, side], rule).level == level
    text = level_rule_for_box([0, 0, 150, 80], rule).text()
    assert text.startswith("k = ⌊3 + log2(√(150.0 × 80.0) / 112)") and "log2(109.5 / 112)" in text


@pytest.mark.parametrize("rule", [TORCHVISION, DETECTRON2, PoolerConfig(canonical_level=3, canonical_size=96.0)],
                         ids=["torchvision", "detectron2", "k0=3,s0=96"])
def test_worked_value_floors_to_the_models_level_on_boxes_nobody_picked(rule):
    rng = np.random.default_rng(11)
    # Sides within a few ulps of every boundary, and random boxes.
    sides = np.concatenate([[rule.canonical_size * 2.0**e for e in range(-3, 4)]] * 40).astype(np.float32)
    for _ in range(3):
        step = rng.integers(-1, 2, size=sides.size)
        sides = np.where(step > 0, np.nextafter(sides, np.float32(np.inf)),
                         np.where(step < 0, np.nextafter(sides, np.float32(0)), sides)).astype(np.float32)
    aspect = rng.uniform(0.25, 4.0, size=sides.size).astype(np.float32)
    x0, y0 = rng.uniform(0, 900, size=(2, sides.size)).astype(np.float32)
    near = np.stack([x0, y0, x0 + sides * np.sqrt(aspect), y0 + sides / np.sqrt(aspect)], axis=1).astype(np.float32)
    random = rng.uniform(0, 1400, size=(400, 4)).astype(np.float32)
    random[:, 2:] = random[:, :2] + np.abs(random[:, 2:] - random[:, :2]) + 1e-3
    boxes = np.concatenate([near, random])
    model_levels = assign_levels(torch.from_numpy(boxes), rule).numpy()
    for box, level in zip(boxes, model_levels):
        worked = level_rule_for_box(box, rule)
        assert worked.level == level
        assert min(max(math.floor(worked.value), rule.min_level), rule.max_level) == level


def test_changed_rule():
    forced = changed_rule(TORCHVISION, level=3)
    assert (forced.min_level, forced.max_level) == (3, 3) and forced.canonical_size == 224.0
    assert changed_rule(TORCHVISION, level=6).max_level == 6  # p6 is in the pyramid, the heads can read it
    other = changed_rule(DETECTRON2, canonical_level=3, canonical_size=112)
    assert (other.canonical_level, other.canonical_size, other.level_log_epsilon) == (3, 112.0, 1e-8)
    assert changed_rule(TORCHVISION) == TORCHVISION


@pytest.mark.parametrize("kwargs, message", [
    (dict(level=7), "level must be one of"), (dict(level=1), "level must be one of"),
    (dict(level="3"), "level must be one of"), (dict(level=True), "level must be one of"),
    (dict(level=3.0), "level must be one of"), (dict(level=3, canonical_size=112), "one or the other"),
    (dict(canonical_size=0), "canonical_size"), (dict(canonical_size=float("nan")), "canonical_size"),
    (dict(canonical_size="big"), "canonical_size"), (dict(canonical_size=-224), "canonical_size"),
    (dict(canonical_level=2.5), "canonical_level"), (dict(canonical_level=99), "canonical_level"),
])
def test_changed_rule_refuses_what_makes_no_sense(kwargs, message):
    with pytest.raises(ValueError, match=message):
        changed_rule(TORCHVISION, **kwargs)
