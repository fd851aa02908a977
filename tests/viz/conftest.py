"""Small synthetic images and detections for the drawing tests (64x96, fixed seeds)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from segfpn.categories import coco_things
from segfpn.structures import Instances

H, W = 64, 96


def _make_instances(boxes, scores, names, masks=None, levels=None, image_size=(H, W)) -> Instances:
    """Instances over the 80 COCO thing classes; each mask defaults to its (integer) box."""
    things = coco_things()
    class_names = [c.name for c in things]
    boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    n = len(boxes)
    if masks is None:
        masks = np.zeros((n, *image_size), dtype=bool)
        for m, (x0, y0, x1, y1) in zip(masks, boxes.astype(int)):
            m[y0:y1, x0:x1] = True
    levels = np.full(n, 3, np.int64) if levels is None else np.asarray(levels, np.int64)
    return Instances(boxes=boxes, scores=np.asarray(scores, np.float32),
                     labels=np.array([class_names.index(x) for x in names], np.int64),
                     class_names=class_names, category_ids=[c.id for c in things],
                     masks=np.asarray(masks, bool), levels=levels, box_levels=levels.copy())


@pytest.fixture
def make_instances():
    """Factory: ``make_instances(boxes, scores, names, masks=None, levels=None, image_size=(H, W))``."""
    return _make_instances


@pytest.fixture
def image() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (H, W, 3), dtype=np.uint8)


@pytest.fixture
def instances() -> Instances:
    """Three non-overlapping detections, score-sorted: person 0.9 and cat 0.3 (masks fill their
    boxes), dog 0.7 (an ellipse inside its box, so a box-shaped fill would show)."""
    boxes = [[10, 10, 40, 30], [50, 35, 90, 60], [60, 5, 80, 20]]
    masks = np.zeros((3, H, W), dtype=bool)
    for m, (x0, y0, x1, y1) in zip(masks, boxes):
        m[y0:y1, x0:x1] = True
    ellipse = np.zeros((H, W), np.uint8)
    cv2.ellipse(ellipse, (70, 47), (19, 12), 0, 0, 360, 1, -1)
    masks[1] = ellipse.astype(bool)
    return _make_instances(boxes=boxes, scores=[0.9, 0.7, 0.3], names=["person", "dog", "cat"], masks=masks,
                           levels=[2, 3, 5])
