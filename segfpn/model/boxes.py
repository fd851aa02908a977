"""Box encoding: deltas (dx, dy, dw, dh) relative to reference boxes, boxes as xyxy float."""

from __future__ import annotations

import math

import torch
from torchvision.ops import batched_nms, nms

#: Largest dw/dh before exp(): boxes can grow at most 1000/16 times.
DELTA_CLAMP = math.log(1000.0 / 16)


def decode_boxes(deltas: torch.Tensor, reference: torch.Tensor,
                 weights: tuple[float, float, float, float]) -> torch.Tensor:
    """Apply ``deltas`` [R, K*4] to ``reference`` boxes [R, 4] (xyxy); returns [R, K*4] xyxy."""
    deltas = deltas.float()
    reference = reference.to(deltas.dtype)
    widths = reference[:, 2] - reference[:, 0]
    heights = reference[:, 3] - reference[:, 1]
    ctr_x = reference[:, 0] + 0.5 * widths
    ctr_y = reference[:, 1] + 0.5 * heights
    wx, wy, ww, wh = weights
    dx = deltas[:, 0::4] / wx
    dy = deltas[:, 1::4] / wy
    dw = (deltas[:, 2::4] / ww).clamp(max=DELTA_CLAMP)
    dh = (deltas[:, 3::4] / wh).clamp(max=DELTA_CLAMP)
    pred_ctr_x = dx * widths[:, None] + ctr_x[:, None]
    pred_ctr_y = dy * heights[:, None] + ctr_y[:, None]
    pred_w = torch.exp(dw) * widths[:, None]
    pred_h = torch.exp(dh) * heights[:, None]
    x1 = pred_ctr_x - 0.5 * pred_w
    y1 = pred_ctr_y - 0.5 * pred_h
    x2 = pred_ctr_x + 0.5 * pred_w
    y2 = pred_ctr_y + 0.5 * pred_h
    return torch.stack((x1, y1, x2, y2), dim=2).flatten(1)


def encode_boxes(targets: torch.Tensor, reference: torch.Tensor,
                 weights: tuple[float, float, float, float]) -> torch.Tensor:
    """Inverse of :func:`decode_boxes` for one box per reference: [R, 4] xyxy -> [R, 4] deltas."""
    widths = reference[:, 2] - reference[:, 0]
    heights = reference[:, 3] - reference[:, 1]
    ctr_x = reference[:, 0] + 0.5 * widths
    ctr_y = reference[:, 1] + 0.5 * heights
    t_widths = targets[:, 2] - targets[:, 0]
    t_heights = targets[:, 3] - targets[:, 1]
    t_ctr_x = targets[:, 0] + 0.5 * t_widths
    t_ctr_y = targets[:, 1] + 0.5 * t_heights
    wx, wy, ww, wh = weights
    return torch.stack((wx * (t_ctr_x - ctr_x) / widths, wy * (t_ctr_y - ctr_y) / heights,
                        ww * torch.log(t_widths / widths), wh * torch.log(t_heights / heights)), dim=1)


def clip_boxes(boxes: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Clamp xyxy boxes [..., 4] to an image of ``size`` (h, w)."""
    h, w = size
    x = boxes[..., 0::2].clamp(min=0, max=w)
    y = boxes[..., 1::2].clamp(min=0, max=h)
    return torch.stack((x[..., 0], y[..., 0], x[..., 1], y[..., 1]), dim=-1)


def nonempty(boxes: torch.Tensor, min_size: float) -> torch.Tensor:
    """bool [N]: both sides at least ``min_size`` and non-zero."""
    w = boxes[:, 2] - boxes[:, 0]
    h = boxes[:, 3] - boxes[:, 1]
    return (w >= min_size) & (h >= min_size) & (w > 0) & (h > 0)


def batched_nms_top_k(boxes: torch.Tensor, scores: torch.Tensor, idxs: torch.Tensor, iou_threshold: float,
                      k: int) -> torch.Tensor:
    """``torchvision.ops.batched_nms(boxes, scores, idxs, iou_threshold)[:k]``, without running
    NMS on boxes that cannot reach the top k.

    Greedy NMS keeps a box when no kept box of its class with a higher score overlaps it, so
    whether a box is kept depends only on the boxes scored above it: NMS on the highest-scored
    boxes alone decides them exactly. This runs per-class NMS (torchvision's per-class loop, the
    one it uses itself for this many boxes) on the best 4k boxes, then 16k, ..., until k are kept.
    With 90 classes x 1000 proposals (score threshold 0) that is ~60x less work.
    """
    n = scores.numel()
    # Below this size torchvision offsets the boxes per class and runs one NMS (a different
    # rounding); keep its exact behaviour there, it is cheap anyway.
    vanilla_from = 4000 if boxes.device.type == "cpu" else 20000
    if boxes.numel() <= vanilla_from or k <= 0:
        return batched_nms(boxes, scores, idxs, iou_threshold)[:max(k, 0)]
    size = 4 * k
    while True:
        if size < n:
            cut = scores.topk(size, sorted=False).values.min()
            chosen = torch.nonzero(scores >= cut).squeeze(1)  # every box tied with the cut, in index order
        else:
            chosen = torch.arange(n, device=scores.device)
        keep = _per_class_nms(boxes[chosen], scores[chosen], idxs[chosen], iou_threshold)
        if keep.numel() >= k or chosen.numel() == n:
            return chosen[keep[:k]]
        size *= 4


def _per_class_nms(boxes: torch.Tensor, scores: torch.Tensor, idxs: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """torchvision's ``_batched_nms_vanilla``: NMS within each class (boxes in index order), kept
    indices sorted by descending score. Classes are found with one sort instead of a pass per class."""
    order = torch.argsort(idxs, stable=True)
    counts = torch.unique_consecutive(idxs[order], return_counts=True)[1].tolist()
    kept = []
    for group in torch.split(order, counts):
        kept.append(group[nms(boxes[group], scores[group], iou_threshold)])
    keep = torch.cat(kept).sort().values if kept else order[:0]
    return keep[scores[keep].sort(descending=True)[1]]
