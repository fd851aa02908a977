"""Level-based RoI pooling: every RoI reads only the pyramid level that suits its size."""

from __future__ import annotations

import torch
from torch import nn
from segfpn.config import PoolerConfig
from segfpn.model.levels import level_stride
from segfpn.model.roi_align import roi_align


def assign_levels(boxes: torch.Tensor, config: PoolerConfig) -> torch.Tensor:
    """int64 [R] pyramid level of each xyxy box [R, 4] (network-input pixels).

    k = floor(k0 + log2(sqrt(w * h) / s0 + log_eps) + eps), clamped to [min_level, max_level]:
    a box of 224x224 reads p4, one of 112x112 p3, so the RoI always spans a similar number of
    cells. The arithmetic is both references' to the bit, since a box near a boundary changes
    level on the last bit: float32 throughout, area (x1 - x0) * (y1 - y0), torchvision's eps
    1e-6 added after the log2 (``LevelMapper``), detectron2's 1e-8 inside it
    (``assign_boxes_to_levels``).
    """
    boxes = boxes.float()
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    log_size = torch.log2(torch.sqrt(area) / config.canonical_size + config.level_log_epsilon)
    k = torch.floor(config.canonical_level + log_size + config.level_epsilon)
    return k.clamp(config.min_level, config.max_level).to(torch.int64)


class LevelRoIPooler(nn.Module):
    """RoIAlign each box on its assigned level of ``{"p2".."p5"}``.

    ``forward(features, boxes_per_image, config=None)`` -> (pooled [R, C, S, S] in
    image-then-box order, levels int64 [R]); ``config`` replaces the pooler's own for one call.
    """

    def __init__(self, *, output_size: int, config: PoolerConfig):
        super().__init__()
        self.output_size = output_size
        self.config = config

    def forward(self, features: dict[str, torch.Tensor], boxes: list[torch.Tensor], *,
                config: PoolerConfig | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        cfg = config or self.config
        all_boxes = torch.cat(boxes)
        batch_index = torch.cat([torch.full((len(b), 1), i, dtype=all_boxes.dtype, device=all_boxes.device)
                                 for i, b in enumerate(boxes)])
        rois = torch.cat([batch_index, all_boxes], dim=1)
        levels = assign_levels(all_boxes, cfg)
        first = features[f"p{cfg.min_level}"]
        out = first.new_zeros((len(rois), first.shape[1], self.output_size, self.output_size))
        for level in range(cfg.min_level, cfg.max_level + 1):
            idx = torch.nonzero(levels == level).squeeze(1)
            if idx.numel() == 0:
                continue
            name = f"p{level}"
            out[idx] = roi_align(features[name], rois[idx], self.output_size, spatial_scale=1.0 / level_stride(name),
                                 sampling_ratio=cfg.sampling_ratio, aligned=cfg.aligned).to(out.dtype)
        return out, levels
