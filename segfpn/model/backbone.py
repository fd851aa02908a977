"""Bottom-up pathway: a bottleneck ResNet returning c2-c5 (strides 4, 8, 16, 32)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from segfpn.config import BackboneConfig, Norm
from segfpn.model.layers import ConvNorm
from segfpn.model.levels import level_strides

#: Blocks per stage (res2..res5) by depth; 18 and 34 use basic blocks, 50 and 101 bottlenecks.
STAGE_BLOCKS = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3), 50: (3, 4, 6, 3), 101: (3, 4, 23, 3)}
BASIC_BLOCK_DEPTHS = (18, 34)
#: Output names and strides of the bottom-up levels.
BOTTOM_UP_STRIDES = level_strides(("c2", "c3", "c4", "c5"))


class Bottleneck(nn.Module):
    """1x1 -> 3x3 -> 1x1 with a projection shortcut when the shape changes.

    ``stride_in_1x1`` puts the stride in ``conv1`` (MSRA / detectron2) instead of ``conv2``.
    """

    def __init__(self, in_channels: int, bottleneck_channels: int, out_channels: int, *, stride: int,
                 stride_in_1x1: bool, norm: Norm, eps: float, groups: int = 32):
        super().__init__()
        stride_1x1, stride_3x3 = (stride, 1) if stride_in_1x1 else (1, stride)
        kw = dict(norm=norm, eps=eps, num_groups=groups)
        self.conv1 = ConvNorm(in_channels, bottleneck_channels, 1, stride=stride_1x1, **kw)
        self.conv2 = ConvNorm(bottleneck_channels, bottleneck_channels, 3, stride=stride_3x3, **kw)
        self.conv3 = ConvNorm(bottleneck_channels, out_channels, 1, **kw)
        self.shortcut = None
        if stride != 1 or in_channels != out_channels:
            self.shortcut = ConvNorm(in_channels, out_channels, 1, stride=stride, **kw)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.shortcut is None else self.shortcut(x)
        out = F.relu(self.conv1(x), inplace=True)
        out = F.relu(self.conv2(out), inplace=True)
        out = self.conv3(out)
        return F.relu(out + identity, inplace=True)


class BasicBlock(nn.Module):
    """3x3 -> 3x3 with a projection shortcut when the shape changes (ResNet-18/34)."""

    def __init__(self, in_channels: int, out_channels: int, *, stride: int, norm: Norm, eps: float, groups: int = 32):
        super().__init__()
        kw = dict(norm=norm, eps=eps, num_groups=groups)
        self.conv1 = ConvNorm(in_channels, out_channels, 3, stride=stride, **kw)
        self.conv2 = ConvNorm(out_channels, out_channels, 3, **kw)
        self.shortcut = None
        if stride != 1 or in_channels != out_channels:
            self.shortcut = ConvNorm(in_channels, out_channels, 1, stride=stride, **kw)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.shortcut is None else self.shortcut(x)
        out = F.relu(self.conv1(x), inplace=True)
        return F.relu(self.conv2(out) + identity, inplace=True)


class ResNet(nn.Module):
    """Input ``[B, 3, H, W]`` float; returns ``{"c2": [B, C2, H/4, W/4], ..., "c5": [B, C5, H/32, W/32]}``.

    Depth 18/34: basic blocks, c2 has ``res2_out_channels`` channels; 50/101: bottlenecks of width
    ``bottleneck_channels`` in res2. Channels double at every stage.
    """

    def __init__(self, config: BackboneConfig):
        super().__init__()
        if config.depth not in STAGE_BLOCKS:
            raise ValueError(f"ResNet depth must be one of {sorted(STAGE_BLOCKS)}, got {config.depth}")
        self.config = config
        self.stem = ConvNorm(3, config.stem_channels, 7, stride=2, norm=config.norm, eps=config.norm_eps,
                             num_groups=config.norm_groups)
        in_channels = config.stem_channels
        out_channels = config.res2_out_channels
        bottleneck = config.bottleneck_channels
        self.stages = nn.ModuleDict()
        self.out_channels: dict[str, int] = {}
        for i, (name, num_blocks) in enumerate(zip(BOTTOM_UP_STRIDES, STAGE_BLOCKS[config.depth])):
            first_stride = 1 if i == 0 else 2
            blocks = []
            for b in range(num_blocks):
                stride = first_stride if b == 0 else 1
                if config.depth in BASIC_BLOCK_DEPTHS:
                    block = BasicBlock(in_channels, out_channels, stride=stride, norm=config.norm,
                                       eps=config.norm_eps, groups=config.norm_groups)
                else:
                    block = Bottleneck(in_channels, bottleneck, out_channels, stride=stride,
                                       stride_in_1x1=config.stride_in_1x1, norm=config.norm,
                                       eps=config.norm_eps, groups=config.norm_groups)
                blocks.append(block)
                in_channels = out_channels
            self.stages[name] = nn.Sequential(*blocks)
            self.out_channels[name] = out_channels
            out_channels *= 2
            bottleneck *= 2

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        x = F.relu(self.stem(x), inplace=True)
        x = F.max_pool2d(x, kernel_size=3, stride=2, padding=1)
        features = {}
        for name, stage in self.stages.items():
            x = stage(x)
            features[name] = x
        return features
