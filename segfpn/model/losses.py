"""Training targets and losses (Ren et al. 2015; He et al. 2017; Kirillov et al. 2019).

Matching assigns every anchor or RoI to a ground-truth box by IoU; balanced sampling picks a fixed
number per image with at most a given fraction of positives; the losses are the papers': binary
cross-entropy for objectness and masks, cross-entropy for classes and semantics, L1 for box deltas.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torchvision.ops import box_iou, roi_align

from segfpn.model.boxes import encode_boxes

IGNORE = -1


@dataclass
class Targets:
    """Ground truth of one image, in network-input pixels (after the resize, before padding).

    boxes: float32 [G, 4] xyxy; labels: int64 [G] (0..K-1); masks: bool [G, h, w];
    semantic: int64 [h, w] (255 = ignore) or None.
    """

    boxes: torch.Tensor
    labels: torch.Tensor
    masks: torch.Tensor
    semantic: torch.Tensor | None = None

    def to(self, device) -> "Targets":
        return Targets(self.boxes.to(device), self.labels.to(device), self.masks.to(device),
                       None if self.semantic is None else self.semantic.to(device))


def match(iou: torch.Tensor, thresholds: tuple[float, ...], *,
          allow_low_quality: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Assign each of N candidates (columns of ``iou`` [G, N]) to its best ground truth.

    With thresholds (lo, hi): label 1 if IoU >= hi, 0 if < lo, -1 (ignored) between; with (t,):
    1 if >= t else 0. ``allow_low_quality`` also makes positive, for every ground truth, the
    candidates that overlap it most (so no box is left without a positive anchor).
    Returns (matched ground-truth index [N], label int64 [N]).
    """
    n = iou.shape[1]
    if iou.shape[0] == 0:
        none = torch.zeros(n, dtype=torch.int64, device=iou.device)
        return none, none.clone()
    best, index = iou.max(dim=0)
    labels = torch.ones(n, dtype=torch.int64, device=iou.device)
    if len(thresholds) == 2:
        lo, hi = thresholds
        labels[best < hi] = IGNORE
        labels[best < lo] = 0
    else:
        labels[best < thresholds[0]] = 0
    if allow_low_quality:
        best_per_gt = iou.max(dim=1, keepdim=True).values
        _, candidates = torch.nonzero((iou == best_per_gt) & (best_per_gt > 0), as_tuple=True)
        labels[candidates] = 1
    return index, labels


def sample_balanced(labels: torch.Tensor, batch_size: int, positive_fraction: float,
                    generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices of sampled positives (label >= 1) and negatives (label 0): at most
    ``positive_fraction`` of ``batch_size`` positives, negatives fill the rest."""
    positive = torch.nonzero(labels >= 1).squeeze(1)
    negative = torch.nonzero(labels == 0).squeeze(1)
    num_pos = min(int(batch_size * positive_fraction), positive.numel())
    num_neg = min(batch_size - num_pos, negative.numel())
    pos = positive[torch.randperm(positive.numel(), device=labels.device, generator=generator)[:num_pos]]
    neg = negative[torch.randperm(negative.numel(), device=labels.device, generator=generator)[:num_neg]]
    return pos, neg


def rpn_losses(objectness: torch.Tensor, deltas: torch.Tensor, anchors: torch.Tensor, targets: Targets, *,
               batch_size: int, positive_fraction: float, iou_thresholds: tuple[float, float],
               box_weights) -> dict[str, torch.Tensor]:
    """Objectness BCE and box L1 over ``batch_size`` sampled anchors of one image.

    objectness [A], deltas [A, 4], anchors [A, 4] xyxy, all levels concatenated.
    """
    iou = box_iou(targets.boxes, anchors)
    index, labels = match(iou, iou_thresholds, allow_low_quality=True)
    pos, neg = sample_balanced(labels, batch_size, positive_fraction)
    sampled = torch.cat([pos, neg])
    target_objectness = torch.cat([torch.ones_like(pos), torch.zeros_like(neg)]).to(objectness.dtype)
    normaliser = max(sampled.numel(), 1)
    loss_objectness = F.binary_cross_entropy_with_logits(objectness[sampled], target_objectness,
                                                         reduction="sum") / normaliser
    if pos.numel():
        target_deltas = encode_boxes(targets.boxes[index[pos]], anchors[pos], box_weights)
        loss_box = F.l1_loss(deltas[pos], target_deltas, reduction="sum") / normaliser
    else:
        loss_box = deltas.sum() * 0.0
    return {"loss_rpn_objectness": loss_objectness, "loss_rpn_box": loss_box}


@dataclass
class SampledRoIs:
    """RoIs of one image picked for the box head: boxes [R, 4], labels [R] (-1 background, else the
    class), the matched ground truth [R], and which of them are foreground."""

    boxes: torch.Tensor
    labels: torch.Tensor
    matched: torch.Tensor

    @property
    def foreground(self) -> torch.Tensor:
        return torch.nonzero(self.labels >= 0).squeeze(1)


def sample_rois(proposals: torch.Tensor, targets: Targets, *, batch_size: int, positive_fraction: float,
                iou_threshold: float) -> SampledRoIs:
    """Proposals plus the ground-truth boxes, matched at ``iou_threshold`` and sampled."""
    boxes = torch.cat([proposals.detach(), targets.boxes])
    iou = box_iou(targets.boxes, boxes)
    index, is_fg = match(iou, (iou_threshold,), allow_low_quality=False)
    pos, neg = sample_balanced(is_fg, batch_size, positive_fraction)
    chosen = torch.cat([pos, neg])
    labels = torch.full((chosen.numel(),), -1, dtype=torch.int64, device=boxes.device)
    if targets.labels.numel():
        labels[: pos.numel()] = targets.labels[index[pos]]
    return SampledRoIs(boxes=boxes[chosen], labels=labels, matched=index[chosen])


def box_head_losses(class_logits: torch.Tensor, box_deltas: torch.Tensor, rois: list[SampledRoIs],
                    targets: list[Targets], *, background_index: str, box_weights) -> dict[str, torch.Tensor]:
    """Cross-entropy over K + 1 classes and class-specific L1 on foreground RoIs (all images)."""
    num_classes = class_logits.shape[1] - 1
    labels = torch.cat([r.labels for r in rois])
    background = 0 if background_index == "first" else num_classes
    cls_targets = torch.where(labels < 0, torch.full_like(labels, background),
                              labels + 1 if background_index == "first" else labels)
    loss_cls = F.cross_entropy(class_logits, cls_targets)
    fg_deltas, fg_targets = [], []
    start = 0
    for r, t in zip(rois, targets):
        fg = r.foreground
        if fg.numel():
            rows = start + fg
            cols = r.labels[fg]
            d = box_deltas[rows].view(-1, num_classes, 4)[torch.arange(fg.numel(), device=fg.device), cols]
            fg_deltas.append(d)
            fg_targets.append(encode_boxes(t.boxes[r.matched[fg]], r.boxes[fg], box_weights))
        start += len(r.labels)
    if fg_deltas:
        loss_box = F.l1_loss(torch.cat(fg_deltas), torch.cat(fg_targets), reduction="sum") / max(labels.numel(), 1)
    else:
        loss_box = box_deltas.sum() * 0.0
    return {"loss_cls": loss_cls, "loss_box": loss_box}


def mask_targets(gt_masks: torch.Tensor, boxes: torch.Tensor, size: int) -> torch.Tensor:
    """The part of each ground-truth mask [R, h, w] inside its RoI [R, 4], resampled to [R, size, size] in {0, 1}."""
    rois = torch.cat([torch.arange(len(boxes), device=boxes.device, dtype=boxes.dtype)[:, None], boxes], dim=1)
    sampled = roi_align(gt_masks[:, None].float(), rois, (size, size), spatial_scale=1.0, sampling_ratio=0,
                        aligned=True)
    return (sampled[:, 0] >= 0.5).float()


def mask_loss(mask_logits: torch.Tensor, labels: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per-pixel BCE on each RoI's own class channel: logits [R, K, M, M], labels [R], targets [R, M, M]."""
    if labels.numel() == 0:
        return mask_logits.sum() * 0.0
    chosen = mask_logits[torch.arange(labels.numel(), device=labels.device), labels]
    return F.binary_cross_entropy_with_logits(chosen, targets)


def semantic_loss(logits: torch.Tensor, targets: list[Targets], *, ignore_value: int, weight: float) -> torch.Tensor:
    """Cross-entropy of [B, S, Hp, Wp] logits against each image's semantic map, padding ignored."""
    target = torch.full((logits.shape[0], *logits.shape[-2:]), ignore_value, dtype=torch.int64, device=logits.device)
    for i, t in enumerate(targets):
        h, w = t.semantic.shape
        target[i, :h, :w] = t.semantic
    return weight * F.cross_entropy(logits, target, ignore_index=ignore_value)
