"""Semantic-FPN branch (Kirillov et al., "Panoptic Feature Pyramid Networks", CVPR 2019)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from segfpn.config import SemanticHeadConfig
from segfpn.model.layers import ConvNorm
from segfpn.model.levels import level_strides

SEMANTIC_LEVELS = level_strides(("p2", "p3", "p4", "p5"))


class ScaleBranch(nn.Module):
    """Stages of 3x3 conv + norm + ReLU (+ 2x bilinear upsampling) that bring one level to 1/4 scale."""

    def __init__(self, in_channels: int, stride: int, config: SemanticHeadConfig):
        super().__init__()
        num_stages = max(1, int(math.log2(stride) - math.log2(config.common_stride)))
        self.upsample = stride != config.common_stride
        self.stages = nn.ModuleList(
            ConvNorm(in_channels if i == 0 else config.conv_channels, config.conv_channels, 3, norm=config.norm,
                     num_groups=config.num_groups)
            for i in range(num_stages))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for stage in self.stages:
            x = F.relu(stage(x), inplace=True)
            if self.upsample:
                x = F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False)
        return x


class SemanticHead(nn.Module):
    """``{"p2".."p5"}`` -> class logits [B, num_classes, Hp, Wp] at the padded input size.

    Each level is brought to 1/4 scale, the four maps are summed, a 1x1 conv predicts the classes
    and the logits are upsampled 4x (bilinear).
    """

    def __init__(self, in_channels: int, config: SemanticHeadConfig):
        super().__init__()
        self.config = config
        self.branches = nn.ModuleDict({name: ScaleBranch(in_channels, stride, config)
                                       for name, stride in SEMANTIC_LEVELS.items()})
        self.predictor = nn.Conv2d(config.conv_channels, config.num_classes, 1)

    def forward(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        return upsample_logits(self.coarse_logits(features), self.config.common_stride)

    def coarse_logits(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        """[B, num_classes, Hp / 4, Wp / 4]: the logits before the last upsampling, which
        :func:`upsample_logits` does (inference does it a few classes at a time)."""
        x = None
        for name, branch in self.branches.items():
            y = branch(features[name])
            x = y if x is None else x + y
        return self.predictor(x)


def upsample_logits(logits: torch.Tensor, stride: int) -> torch.Tensor:
    """[B, S, h, w] -> [B, S, h * stride, w * stride], bilinear (the semantic head's last step)."""
    if stride == 1:
        return logits
    return F.interpolate(logits, scale_factor=float(stride), mode="bilinear", align_corners=False)
