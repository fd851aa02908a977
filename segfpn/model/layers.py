"""Small building blocks shared by the stages: a conv followed by an optional norm."""

from __future__ import annotations

from torch import nn
from torchvision.ops import FrozenBatchNorm2d

from segfpn.config import Norm


def make_norm(norm: Norm, channels: int, *, eps: float = 1e-5, num_groups: int = 32) -> nn.Module | None:
    """The norm layer named by ``norm`` for ``channels`` channels, or None for "none"."""
    if norm == "none":
        return None
    if norm == "frozen_bn":
        return FrozenBatchNorm2d(channels, eps=eps)
    if norm == "bn":
        return nn.BatchNorm2d(channels, eps=eps)
    if norm == "gn":
        return nn.GroupNorm(num_groups, channels)
    raise ValueError(f"unknown norm {norm!r}; expected one of none, frozen_bn, bn, gn")


class ConvNorm(nn.Module):
    """``conv`` (bias only when there is no norm) then ``norm``; activation is the caller's."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, *, stride: int = 1,
                 norm: Norm = "none", eps: float = 1e-5, num_groups: int = 32):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride,
                              padding=kernel_size // 2, bias=norm == "none")
        self.norm = make_norm(norm, out_channels, eps=eps, num_groups=num_groups)

    def forward(self, x):
        x = self.conv(x)
        return x if self.norm is None else self.norm(x)


def conv_stack(in_channels: int, channels: tuple[int, ...], *, norm: Norm) -> tuple[nn.ModuleList, int]:
    """3x3 ConvNorms of the given widths (the heads apply ReLU after each); returns (layers, out channels)."""
    layers = nn.ModuleList()
    for out_channels in channels:
        layers.append(ConvNorm(in_channels, out_channels, 3, norm=norm))
        in_channels = out_channels
    return layers, in_channels
