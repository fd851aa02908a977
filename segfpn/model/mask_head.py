"""Mask head: 3x3 convs on 14x14 RoI features, a 2x deconv, per-class 1x1 logits (28x28), and pasting."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from segfpn.config import MaskHeadConfig
from segfpn.model.layers import conv_stack


class MaskHead(nn.Module):
    """[R, C, 14, 14] -> mask logits [R, K, 28, 28]."""

    def __init__(self, in_channels: int, num_classes: int, config: MaskHeadConfig):
        super().__init__()
        self.convs, channels = conv_stack(in_channels, config.conv_channels, norm=config.norm)
        self.deconv = nn.ConvTranspose2d(channels, channels, 2, stride=2)
        self.predictor = nn.Conv2d(channels, num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for conv in self.convs:
            x = F.relu(conv(x), inplace=True)
        return self.predictor(F.relu(self.deconv(x), inplace=True))


def class_mask_probabilities(mask_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Sigmoid of each RoI's own class channel: [R, K, M, M] -> [R, M, M]."""
    index = torch.arange(mask_logits.shape[0], device=mask_logits.device)
    return mask_logits[index, labels].float().sigmoid()


def paste_masks(masks: torch.Tensor, boxes: torch.Tensor, image_size: tuple[int, int], *, method: str,
                threshold: float) -> torch.Tensor:
    """Paste [N, M, M] mask probabilities into bool [N, H, W] at ``boxes`` [N, 4] (xyxy, image px).

    Full frames of :func:`paste_mask_crops` (which the model uses: it never makes N x H x W).
    """
    crops, regions = paste_mask_crops(masks, boxes, image_size, method=method, threshold=threshold)
    out = torch.zeros((len(crops), *image_size), dtype=torch.bool, device=masks.device)
    for i, (crop, (y0, y1, x0, x1)) in enumerate(zip(crops, regions.tolist())):
        out[i, y0:y0 + crop.shape[0], x0:x0 + crop.shape[1]] = crop
    return out


def paste_mask_crops(masks: torch.Tensor, boxes: torch.Tensor, image_size: tuple[int, int], *, method: str,
                     threshold: float) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Paste [N, M, M] mask probabilities at ``boxes`` [N, 4] (xyxy, image px) of an image of
    ``image_size`` (H, W), keeping each mask only inside the region it is written in.

    "box_resize": the mask, padded by one cell, is resized to its box grown by (M + 2) / M and
    truncated to integers (torchvision). "grid_sample": the mask is sampled bilinearly at every
    pixel centre of the box plus a one-pixel margin (detectron2 on CPU). Pixels are
    ``>= threshold``.

    Returns (crops, regions): regions int64 [N, 4] (y0, y1, x0, x1), half-open and clipped to
    the image (every pixel outside is False); crops[i] bool [y1 - y0, x1 - x0] (empty when the
    region is).
    """
    if masks.shape[0] == 0:
        return [], torch.zeros((0, 4), dtype=torch.int64, device=masks.device)
    if method == "box_resize":
        return _paste_box_resize(masks.float(), boxes.float(), image_size, threshold)
    if method == "grid_sample":
        return _paste_grid_sample(masks.float(), boxes.float(), image_size, threshold)
    raise ValueError(f"unknown paste method {method!r}; expected box_resize or grid_sample")


def box_resize_boxes(boxes: torch.Tensor, mask_size: int) -> torch.Tensor:
    """int64 [N, 4] (x0, y0, x1, y1), inclusive integer boxes that torchvision resizes each mask
    into: the box grown by (M + 2) / M around its centre (the mask's one-cell padding), truncated."""
    scale = (mask_size + 2.0) / mask_size
    half_w = (boxes[:, 2] - boxes[:, 0]) * 0.5 * scale
    half_h = (boxes[:, 3] - boxes[:, 1]) * 0.5 * scale
    cx = (boxes[:, 2] + boxes[:, 0]) * 0.5
    cy = (boxes[:, 3] + boxes[:, 1]) * 0.5
    return torch.stack((cx - half_w, cy - half_h, cx + half_w, cy + half_h), dim=1).to(torch.int64)


def _paste_box_resize(masks: torch.Tensor, boxes: torch.Tensor, image_size: tuple[int, int],
                      threshold: float) -> tuple[list[torch.Tensor], torch.Tensor]:
    # One bilinear resize per mask, to its own box size: that is torchvision's arithmetic, which
    # a batched resize to a common size would round differently. Only the box is resized and
    # only its part inside the image is kept.
    ih, iw = image_size
    boxes = box_resize_boxes(boxes, masks.shape[-1])
    # The regions: each integer box (inclusive) clipped to the image.
    regions = torch.stack((boxes[:, 1].clamp(min=0), (boxes[:, 3] + 1).clamp(max=ih),
                           boxes[:, 0].clamp(min=0), (boxes[:, 2] + 1).clamp(max=iw)), dim=1)
    padded = F.pad(masks, (1, 1, 1, 1))[:, None]
    crops = []
    for i, ((x0, y0, x1, y1), (cy0, cy1, cx0, cx1)) in enumerate(zip(boxes.tolist(), regions.tolist())):
        if cx1 <= cx0 or cy1 <= cy0:
            crops.append(torch.zeros((max(cy1 - cy0, 0), max(cx1 - cx0, 0)), dtype=torch.bool, device=masks.device))
            continue
        size = (max(y1 - y0 + 1, 1), max(x1 - x0 + 1, 1))
        resized = F.interpolate(padded[i:i + 1], size=size, mode="bilinear", align_corners=False)[0, 0]
        crops.append(resized[cy0 - y0:cy1 - y0, cx0 - x0:cx1 - x0] >= threshold)
    return crops, regions


def _grid_sample_ranges(boxes: torch.Tensor, image_size: tuple[int, int]) -> torch.Tensor:
    """int64 [N, 4] (x0, y0, x1, y1), half-open pixel ranges detectron2 samples each box on:
    the box's pixels plus a one-pixel margin, clipped to the image."""
    ih, iw = image_size
    x0 = (torch.floor(boxes[:, 0]) - 1).clamp(min=0)
    y0 = (torch.floor(boxes[:, 1]) - 1).clamp(min=0)
    x1 = (torch.ceil(boxes[:, 2]) + 1).clamp(max=iw)
    y1 = (torch.ceil(boxes[:, 3]) + 1).clamp(max=ih)
    return torch.stack((x0, y0, x1, y1), dim=1).to(torch.int64)


#: Most sampled pixels per grid_sample call when pasting (bounds the temporary memory).
PASTE_CHUNK_PIXELS = 1 << 22


def _paste_grid_sample(masks: torch.Tensor, boxes: torch.Tensor, image_size: tuple[int, int],
                       threshold: float) -> tuple[list[torch.Tensor], torch.Tensor]:
    # grid_sample computes each output pixel from its own grid point, so masks can share one call:
    # every region is padded to the largest of its chunk, and the padding is discarded.
    regions = _grid_sample_ranges(boxes, image_size)
    heights = (regions[:, 3] - regions[:, 1]).clamp(min=0)
    widths = (regions[:, 2] - regions[:, 0]).clamp(min=0)
    hw = torch.stack((heights, widths), dim=1).tolist()
    crops = [torch.zeros((h, w), dtype=torch.bool, device=masks.device) for h, w in hw]
    order = torch.argsort(heights * widths, descending=True)
    order = order[(heights[order] > 0) & (widths[order] > 0)].tolist()
    start = 0
    while start < len(order):
        # Masks sorted by area; grow the chunk while its padded size stays in budget.
        max_h, max_w = hw[order[start]]
        end = start + 1
        while end < len(order):
            h, w = hw[order[end]]
            new_h, new_w = max(max_h, h), max(max_w, w)
            if (end - start + 1) * new_h * new_w > PASTE_CHUNK_PIXELS:
                break
            max_h, max_w, end = new_h, new_w, end + 1
        indices = order[start:end]
        chunk = torch.tensor(indices, device=masks.device)
        sampled = _sample_chunk(masks[chunk], boxes[chunk], regions[chunk], (max_h, max_w), threshold)
        for j, i in enumerate(indices):
            h, w = hw[i]
            crops[i] = sampled[j, :h, :w].clone()
        start = end
    return crops, regions[:, [1, 3, 0, 2]]


def _sample_chunk(masks: torch.Tensor, boxes: torch.Tensor, regions: torch.Tensor, padded_size: tuple[int, int],
                  threshold: float) -> torch.Tensor:
    """bool [n, max_h, max_w]: each mask sampled on its region (x0, y0, x1, y1), padded."""
    max_h, max_w = padded_size
    device = masks.device
    # Pixel centres (+0.5) of every region, in each box's normalised [-1, 1] frame, computed
    # with the same float32 operations as detectron2's per-box code.
    ys = (regions[:, 1:2] + torch.arange(max_h, device=device)).to(torch.float32) + 0.5
    xs = (regions[:, 0:1] + torch.arange(max_w, device=device)).to(torch.float32) + 0.5
    x0, y0, x1, y1 = boxes[:, 0:1], boxes[:, 1:2], boxes[:, 2:3], boxes[:, 3:4]
    gy = (ys - y0) / (y1 - y0) * 2 - 1
    gx = (xs - x0) / (x1 - x0) * 2 - 1
    n = len(masks)
    grid = torch.stack((gx[:, None, :].expand(n, max_h, max_w), gy[:, :, None].expand(n, max_h, max_w)), dim=3)
    return F.grid_sample(masks[:, None], grid, align_corners=False)[:, 0] >= threshold
