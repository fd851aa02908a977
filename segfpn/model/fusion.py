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


#: Pixels of the segment-id map written per step when stuff fills the free pixels (bounds the
#: int64 index copy of the semantic labels that the lookup needs).
STUFF_BAND_PIXELS = 1 << 20


def fuse_panoptic(mask_crops: list[torch.Tensor], regions: torch.Tensor, scores: torch.Tensor,
                  semantic_labels: torch.Tensor, *, overlap_threshold: float = 0.5, stuff_area_threshold: int = 4096,
                  instance_score_threshold: float = 0.5,
                  things_label: int | None = 0) -> tuple[torch.Tensor, list[FusedSegment]]:
    """Combine instance masks and a semantic map into one segment-id map.

    mask_crops / regions: the instance masks as :func:`~segfpn.model.mask_head.paste_mask_crops`
    gives them (bool [y1 - y0, x1 - x0] each, regions int [N, 4] (y0, y1, x0, x1) half-open);
    scores: float [N]; semantic_labels: int [H, W] (argmax of the semantic head; ``things_label``
    is the merged "things" class, never turned into a stuff segment).
    Instances are placed in descending score order while score >= ``instance_score_threshold``;
    one whose mask is more than ``overlap_threshold`` covered by earlier ones is dropped, otherwise
    it takes its free pixels. Then every stuff class takes its free pixels if they number at least
    ``stuff_area_threshold``. Returns (segment ids int32 [H, W], 0 = void; segments in id order).
    Each instance costs time in proportion to its region, not to the image.
    """
    segment_ids = torch.zeros(semantic_labels.shape, dtype=torch.int32, device=semantic_labels.device)
    segments: list[FusedSegment] = []
    order = torch.argsort(-scores)
    for index, score in zip(order.tolist(), scores[order].tolist()):
        if score < instance_score_threshold:
            break
        y0, y1, x0, x1 = (int(v) for v in regions[index])
        if y1 <= y0 or x1 <= x0:
            continue  # empty mask
        mask = mask_crops[index]
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
    areas = torch.bincount(semantic_labels[free], minlength=num_labels).tolist()
    # A class present in the image but with no free pixel has area 0: kept only if the threshold allows.
    present = areas if stuff_area_threshold > 0 else torch.bincount(semantic_labels.flatten(),
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
        rows = max(1, STUFF_BAND_PIXELS // max(segment_ids.shape[1], 1))
        for top in range(0, segment_ids.shape[0], rows):
            band = slice(top, top + rows)
            segment_ids[band] = torch.where(free[band], lookup[semantic_labels[band].long()], segment_ids[band])
    return segment_ids, segments
