"""Top-down pathway with lateral connections (Lin et al., CVPR 2017): c2-c5 -> p2-p6."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from segfpn.config import FPNConfig
from segfpn.model.layers import ConvNorm

#: Output names and strides of the pyramid.
PYRAMID_STRIDES = {"p2": 4, "p3": 8, "p4": 16, "p5": 32, "p6": 64}


class FPN(nn.Module):
    """Input ``{"c2".."c5"}``; returns ``{"p2".."p6"}``, each ``[B, out_channels, H/stride, W/stride]``.

    A 1x1 lateral conv maps every c_l to ``out_channels``; going down, the coarser merged map is
    upsampled 2x (nearest) and added; a 3x3 conv smooths every merged map. p6 subsamples p5 with
    stride 2 (max-pool of kernel 1). No non-linearities.
    """

    def __init__(self, in_channels: dict[str, int], config: FPNConfig):
        super().__init__()
        self.config = config
        self.lateral = nn.ModuleDict()
        self.output = nn.ModuleDict()
        for c_name, channels in in_channels.items():
            p_name = "p" + c_name[1:]
            kw = dict(norm=config.norm, num_groups=config.norm_groups)
            self.lateral[p_name] = ConvNorm(channels, config.out_channels, 1, **kw)
            self.output[p_name] = ConvNorm(config.out_channels, config.out_channels, 3, **kw)
        self.out_channels = config.out_channels

    def forward(self, features: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        names = list(self.lateral)  # fine to coarse: p2, p3, p4, p5
        merged = {}
        top_down = None
        for p_name in reversed(names):
            lateral = self.lateral[p_name](features["c" + p_name[1:]])
            if top_down is not None:
                lateral = lateral + F.interpolate(top_down, size=lateral.shape[-2:], mode="nearest")
            top_down = lateral
            merged[p_name] = self.output[p_name](lateral)
        out = {name: merged[name] for name in names}
        out["p6"] = F.max_pool2d(out[names[-1]], kernel_size=1, stride=2)
        return out
