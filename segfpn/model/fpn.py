"""Top-down pathway with lateral connections (Lin et al., CVPR 2017): c_l -> p_l, plus the levels
above the coarsest (p6 for Mask R-CNN, p6 and p7 for RetinaNet)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from segfpn.config import FPNConfig
from segfpn.model.layers import ConvNorm
from segfpn.model.levels import level_number, level_strides


def pyramid_strides(config: FPNConfig) -> dict[str, int]:
    """``{"p<l>": 2**l}`` for every level the FPN of ``config`` returns, fine to coarse: one per
    bottom-up input, then one ("max_pool_p5") or two ("p6p7_*") from the top block."""
    levels = [level_number(name) for name in config.in_features]
    top = levels[-1]
    levels += [top + 1] if config.top_block == "max_pool_p5" else [top + 1, top + 2]
    return level_strides(f"p{level}" for level in levels)


class TopBlockP6P7(nn.Module):
    """RetinaNet's extra levels: p6 = 3x3 conv, stride 2, on ``source`` (p5 or c5), and
    p7 = 3x3 conv, stride 2, on relu(p6). p6 itself goes to the heads without the ReLU."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.p6 = nn.Conv2d(in_channels, out_channels, 3, stride=2, padding=1)
        self.p7 = nn.Conv2d(out_channels, out_channels, 3, stride=2, padding=1)

    def forward(self, source: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        p6 = self.p6(source)
        return p6, self.p7(F.relu(p6))


class FPN(nn.Module):
    """Input ``{"c2".."c5"}`` (those of ``config.in_features`` are read); returns
    ``{"p<l>": [B, out_channels, H/2**l, W/2**l]}`` for the levels of :func:`pyramid_strides`
    (``self.strides``), fine to coarse.

    A 1x1 lateral conv maps every c_l to ``out_channels``; going down, the coarser merged map is
    upsampled 2x (nearest) and added; a 3x3 conv smooths every merged map. Then the top block:
    p6 subsamples p5 with stride 2 (max-pool of kernel 1), or RetinaNet's p6/p7 convs
    (:class:`TopBlockP6P7`). No non-linearities except before p7.
    """

    def __init__(self, in_channels: dict[str, int], config: FPNConfig):
        super().__init__()
        self.config = config
        self.lateral = nn.ModuleDict()
        self.output = nn.ModuleDict()
        for c_name in config.in_features:
            if c_name not in in_channels:
                raise ValueError(f"FPN input {c_name!r} is not a bottom-up level; the backbone has {list(in_channels)}")
            p_name = "p" + c_name[1:]
            kw = dict(norm=config.norm, num_groups=config.norm_groups)
            self.lateral[p_name] = ConvNorm(in_channels[c_name], config.out_channels, 1, **kw)
            self.output[p_name] = ConvNorm(config.out_channels, config.out_channels, 3, **kw)
        self.top_block = None
        if config.top_block != "max_pool_p5":
            source = in_channels[config.in_features[-1]] if config.top_block == "p6p7_from_c5" else config.out_channels
            self.top_block = TopBlockP6P7(source, config.out_channels)
        self.out_channels = config.out_channels
        self.strides = pyramid_strides(config)

    def forward(self, features: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        names = list(self.lateral)  # fine to coarse, e.g. p2, p3, p4, p5
        merged = {}
        top_down = None
        for p_name in reversed(names):
            lateral = self.lateral[p_name](features["c" + p_name[1:]])
            if top_down is not None:
                lateral = lateral + F.interpolate(top_down, size=lateral.shape[-2:], mode="nearest")
            top_down = lateral
            merged[p_name] = self.output[p_name](lateral)
        out = {name: merged[name] for name in names}
        top = level_number(names[-1])
        if self.top_block is None:
            out[f"p{top + 1}"] = F.max_pool2d(out[names[-1]], kernel_size=1, stride=2)
        else:
            from_c5 = self.config.top_block == "p6p7_from_c5"
            source = features[self.config.in_features[-1]] if from_c5 else out[names[-1]]
            out[f"p{top + 1}"], out[f"p{top + 2}"] = self.top_block(source)
        return out
