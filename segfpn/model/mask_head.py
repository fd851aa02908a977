"""Mask head: 3x3 convs on 14x14 RoI features, a 2x deconv, per-class 1x1 logits (28x28), and pasting."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from segfpn.config import MaskHeadConfig
from segfpn.model.layers import ConvNorm


class MaskHead(nn.Module):
    """[R, C, 14, 14] -> mask logits [R, K, 28, 28]."""

    def __init__(self, in_channels: int, num_classes: int, config: MaskHeadConfig):
        super().__init__()
        self.convs = nn.ModuleList()
        channels = in_channels
        for out_channels in config.conv_channels:
            self.convs.append(ConvNorm(channels, out_channels, 3, norm=config.norm))
            channels = out_channels
        self.deconv = nn.ConvTranspose2d(channels, channels, 2, stride=2)
        self.predictor = nn.Conv2d(channels, num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for conv in self.convs:
            x = F.relu(conv(x))
        return self.predictor(F.relu(self.deconv(x)))


def class_mask_probabilities(mask_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Sigmoid of each RoI's own class channel: [R, K, M, M] -> [R, M, M]."""
    index = torch.arange(mask_logits.shape[0], device=mask_logits.device)
    return mask_logits[index, labels].float().sigmoid()


def paste_masks(masks: torch.Tensor, boxes: torch.Tensor, image_size: tuple[int, int], *, method: str,
                threshold: float) -> torch.Tensor:
    """Paste [N, M, M] mask probabilities into bool [N, H, W] at ``boxes`` [N, 4] (xyxy, image px).

    "box_resize": the mask, padded by one cell, is resized to its box rounded to integers
    (torchvision). "grid_sample": the mask is sampled bilinearly at every pixel centre of the
    box plus a one-pixel margin (detectron2 on CPU).
    """
    h, w = image_size
    out = torch.zeros((masks.shape[0], h, w), dtype=torch.bool, device=masks.device)
    if masks.shape[0] == 0:
        return out
    paste_one = _paste_box_resize if method == "box_resize" else _paste_grid_sample
    for i in range(masks.shape[0]):
        paste_one(masks[i], boxes[i], out[i], threshold)
    return out


def _paste_box_resize(mask: torch.Tensor, box: torch.Tensor, out: torch.Tensor, threshold: float) -> None:
    m = mask.shape[-1]
    scale = (m + 2.0) / m
    padded = F.pad(mask, (1, 1, 1, 1))
    # Grow the box by the same factor as the mask grew, then round it to whole pixels.
    half_w = (box[2] - box[0]) * 0.5 * scale
    half_h = (box[3] - box[1]) * 0.5 * scale
    cx = (box[2] + box[0]) * 0.5
    cy = (box[3] + box[1]) * 0.5
    x0, y0, x1, y1 = (int(v) for v in torch.stack((cx - half_w, cy - half_h, cx + half_w, cy + half_h)).to(torch.int64))
    bw, bh = max(x1 - x0 + 1, 1), max(y1 - y0 + 1, 1)
    resized = F.interpolate(padded[None, None], size=(bh, bw), mode="bilinear", align_corners=False)[0, 0]
    ih, iw = out.shape
    cx0, cx1 = max(x0, 0), min(x1 + 1, iw)
    cy0, cy1 = max(y0, 0), min(y1 + 1, ih)
    if cx1 <= cx0 or cy1 <= cy0:
        return
    out[cy0:cy1, cx0:cx1] = resized[cy0 - y0:cy1 - y0, cx0 - x0:cx1 - x0] >= threshold


def _paste_grid_sample(mask: torch.Tensor, box: torch.Tensor, out: torch.Tensor, threshold: float) -> None:
    ih, iw = out.shape
    x0 = max(int(torch.floor(box[0]).item()) - 1, 0)
    y0 = max(int(torch.floor(box[1]).item()) - 1, 0)
    x1 = min(int(torch.ceil(box[2]).item()) + 1, iw)
    y1 = min(int(torch.ceil(box[3]).item()) + 1, ih)
    if x1 <= x0 or y1 <= y0:
        return
    ys = torch.arange(y0, y1, device=mask.device, dtype=torch.float32) + 0.5
    xs = torch.arange(x0, x1, device=mask.device, dtype=torch.float32) + 0.5
    # Pixel centres in the box's normalised [-1, 1] frame.
    gy = (ys - box[1]) / (box[3] - box[1]) * 2 - 1
    gx = (xs - box[0]) / (box[2] - box[0]) * 2 - 1
    grid = torch.stack((gx[None, :].expand(len(gy), -1), gy[:, None].expand(-1, len(gx))), dim=2)
    sampled = F.grid_sample(mask[None, None].float(), grid[None], align_corners=False)[0, 0]
    out[y0:y1, x0:x1] = sampled >= threshold
