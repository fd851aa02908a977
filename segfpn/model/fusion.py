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
                  instance_score_threshold: float = 0.5, things_label: int | None = 0) -> tuple[torch.Tensor, list[FusedSegment]]:
    """Combine instance masks and a semantic map into one segment-id map.

    masks: bool [N, H, W]; scores: float [N]; semantic_labels: int [H, W] (argmax of the semantic
    head; ``things_label`` is the merged "things" class, never turned into a stuff segment).
    Instances are placed in descending score order while score >= ``instance_score_threshold``;
    one whose mask is more than ``overlap_threshold`` covered by earlier ones is dropped, otherwise
    it takes its free pixels. Then every stuff class takes its free pixels if they number at least
    ``stuff_area_threshold``. Returns (segment ids int32 [H, W], 0 = void; segments in id order).
    """
    segment_ids = torch.zeros(semantic_labels.shape, dtype=torch.int32, device=semantic_labels.device)
    segments: list[FusedSegment] = []
    order = torch.argsort(-scores)
    for index in order.tolist():
        score = float(scores[index])
        if score < instance_score_threshold:
            break
        mask = masks[index]
        area = int(mask.sum())
        if area == 0:
            continue
        free = segment_ids == 0
        taken = area - int((mask & free).sum())
        if taken / area > overlap_threshold:
            continue
        if taken > 0:
            mask = mask & free
        new_id = len(segments) + 1
        segment_ids[mask] = new_id
        segments.append(FusedSegment(id=new_id, isthing=True, area=int(mask.sum()), instance=index, score=score))
    for label in torch.unique(semantic_labels).tolist():
        if label == things_label:
            continue
        mask = (semantic_labels == label) & (segment_ids == 0)
        area = int(mask.sum())
        if area < stuff_area_threshold:
            continue
        new_id = len(segments) + 1
        segment_ids[mask] = new_id
        segments.append(FusedSegment(id=new_id, isthing=False, area=area, semantic_label=int(label)))
    return segment_ids, segments
