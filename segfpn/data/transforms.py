"""Training-time augmentation on :class:`Sample` objects, at the image's original resolution.

Resizing is the model's job (its preprocess scales the shorter side to ``min_size``); for
multi-scale training pick the size per batch with :func:`choose_min_size` and hand it to the
model. Randomness always comes from an explicit ``numpy.random.Generator``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from segfpn.data.sample import Sample

#: detectron2's multi-scale training sizes for COCO (shorter side, px).
DEFAULT_MIN_SIZES = (640, 672, 704, 736, 768, 800)


def horizontal_flip(sample: Sample) -> Sample:
    """The sample mirrored left-right: image, masks and semantic flipped, and the boxes
    (float32 [G, 4] xyxy) mapped to x1' = W - x2, x2' = W - x1. Returns a new Sample (the
    arrays are fresh copies); the input is not changed."""
    width = sample.image_size[1]
    boxes = sample.boxes.copy()
    boxes[:, 0] = width - sample.boxes[:, 2]
    boxes[:, 2] = width - sample.boxes[:, 0]
    semantic = None if sample.semantic is None else np.ascontiguousarray(sample.semantic[:, ::-1])
    return Sample(image=np.ascontiguousarray(sample.image[:, ::-1]), boxes=boxes,
                  labels=sample.labels.copy(), masks=np.ascontiguousarray(sample.masks[:, :, ::-1]),
                  semantic=semantic, image_id=sample.image_id, file_name=sample.file_name)


def random_horizontal_flip(sample: Sample, rng: np.random.Generator, *,
                           probability: float = 0.5) -> Sample:
    """:func:`horizontal_flip` with the given probability, else the sample unchanged (same object)."""
    if not 0.0 <= probability <= 1.0:
        raise ValueError(f"probability must be in [0, 1], got {probability}")
    return horizontal_flip(sample) if rng.random() < probability else sample


def choose_min_size(rng: np.random.Generator, *, sizes: Sequence[int] = DEFAULT_MIN_SIZES) -> int:
    """One shorter-side size for the next batch, uniformly from ``sizes`` (multi-scale training)."""
    if len(sizes) == 0:
        raise ValueError("sizes is empty; give at least one shorter-side size in px")
    if any(int(s) <= 0 for s in sizes):
        raise ValueError(f"sizes must be positive, got {list(sizes)}")
    return int(sizes[int(rng.integers(len(sizes)))])


def collate(batch: Sequence[Sample]) -> list[Sample]:
    """``collate_fn`` for a torch DataLoader: keeps the batch as a list of Samples (images of
    different sizes are batched by the model's preprocess, not here)."""
    return list(batch)
