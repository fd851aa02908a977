"""Box encoding: deltas (dx, dy, dw, dh) relative to reference boxes, boxes as xyxy float."""

from __future__ import annotations

import math

import torch

#: Largest dw/dh before exp(): boxes can grow at most 1000/16 times.
DELTA_CLAMP = math.log(1000.0 / 16)


def decode_boxes(deltas: torch.Tensor, reference: torch.Tensor, weights: tuple[float, float, float, float]) -> torch.Tensor:
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


def encode_boxes(targets: torch.Tensor, reference: torch.Tensor, weights: tuple[float, float, float, float]) -> torch.Tensor:
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
