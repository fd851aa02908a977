"""Panoptic fusion: instances first, by score, then stuff on the pixels left (Kirillov et al. 2019)."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class FusedSegment:
    """``id`` > 0; things carry ``instance`` (index into the instances) and ``score``; stuff a
    ``semantic_label``. ``area`` in pixels."""

    id: int
    isthing: bool
    area: int
    instance: int | None = None
    score: float | None = None
    semantic_label: int | None = None


def fuse_panoptic(masks: torch.Tensor, scores: torch.Tensor, semantic_labels: torch.Tensor, *,
                  overlap_threshold: float = 0.5, stuff_area_threshold: int = 4096,
                  instance_score_threshold: float = 0.5, things_label: int | None = 0,
                  regions: torch.Tensor | None = None) -> tuple[torch.Tensor, list[FusedSegment]]:
    """Combine instance masks and a semantic map into one segment-id map.

    masks: bool [N, H, W]; scores: float [N]; semantic_labels: int [H, W] (argmax of the semantic
    head; ``things_label`` is the merged "things" class, never turned into a stuff segment).
    Instances are placed in descending score order while score >= ``instance_score_threshold``;
    one whose mask is more than ``overlap_threshold`` covered by earlier ones is dropped, otherwise
    it takes its free pixels. Then every stuff class takes its free pixels if they number at least
    ``stuff_area_threshold``. Returns (segment ids int32 [H, W], 0 = void; segments in id order).
    ``regions``: optional int [N, 4] (y0, y1, x0, x1), a half-open box holding each mask's pixels
    (what :func:`~segfpn.model.mask_head.paste_masks_with_regions` returns); found from the
    masks when None. Each instance then costs time in proportion to its box, not to the image.
    """
    segment_ids = torch.zeros(semantic_labels.shape, dtype=torch.int32, device=semantic_labels.device)
    segments: list[FusedSegment] = []
    order = torch.argsort(-scores)
    placed, placed_scores = [], []
    for index, score in zip(order.tolist(), scores[order].tolist()):
        if score < instance_score_threshold:
            break
        placed.append(index)
        placed_scores.append(score)
    # Every step below reads and writes only the bounding box of the instance's mask.
    placed_index = torch.tensor(placed, dtype=torch.int64, device=masks.device)
    if regions is not None:
        regions = regions.to(torch.int64)[placed_index]
    elif 2 * len(placed) > len(masks):
        regions = mask_regions(masks)[placed_index]
    else:
        regions = mask_regions(masks[placed_index])
    for index, score, (y0, y1, x0, x1) in zip(placed, placed_scores, regions.tolist()):
        if y1 <= y0 or x1 <= x0:
            continue  # empty mask
        mask = masks[index, y0:y1, x0:x1]
        ids = segment_ids[y0:y1, x0:x1]
        area = int(mask.sum())
        if area == 0:
            continue
        free_part = mask & (ids == 0)
        free_area = int(free_part.sum())
        if (area - free_area) / area > overlap_threshold:
            continue
        new_id = len(segments) + 1
        ids.masked_fill_(free_part, new_id)
        segments.append(FusedSegment(id=new_id, isthing=True, area=free_area, instance=index, score=score))
    # Stuff: one pass counts each class's free pixels, one pass writes the ids (classes are disjoint).
    free = segment_ids == 0
    num_labels = int(semantic_labels.max()) + 1 if semantic_labels.numel() else 0
    areas = torch.bincount(semantic_labels[free].long(), minlength=num_labels).tolist()
    # A class present in the image but with no free pixel has area 0: kept only if the threshold allows.
    present = areas if stuff_area_threshold > 0 else torch.bincount(semantic_labels.flatten().long(),
                                                                   minlength=num_labels).tolist()
    lookup = torch.zeros(max(num_labels, 1), dtype=torch.int32, device=segment_ids.device)
    has_stuff = False
    for label, area in enumerate(areas):
        if present[label] == 0 or label == things_label or area < stuff_area_threshold:
            continue
        new_id = len(segments) + 1
        lookup[label] = new_id
        has_stuff = True
        segments.append(FusedSegment(id=new_id, isthing=False, area=area, semantic_label=label))
    if has_stuff:
        segment_ids = torch.where(free, lookup[semantic_labels.long()], segment_ids)
    return segment_ids, segments


def mask_regions(masks: torch.Tensor) -> torch.Tensor:
    """int64 [N, 4] (y0, y1, x0, x1): the half-open bounding box of each bool mask [N, H, W]'s
    pixels; (0, 0, 0, 0) for an empty mask."""
    n, h, w = masks.shape
    if n == 0:
        return torch.zeros((0, 4), dtype=torch.int64, device=masks.device)
    rows, cols = masks.any(dim=2), masks.any(dim=1)
    nonempty = rows.any(dim=1)

    def span(flags: torch.Tensor, size: int) -> tuple[torch.Tensor, torch.Tensor]:
        first = flags.to(torch.uint8).argmax(dim=1)
        last = size - flags.flip(1).to(torch.uint8).argmax(dim=1)
        return first, last

    y0, y1 = span(rows, h)
    x0, x1 = span(cols, w)
    regions = torch.stack((y0, y1, x0, x1), dim=1)
    return torch.where(nonempty[:, None], regions, torch.zeros_like(regions))
