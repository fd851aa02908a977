"""The whole network, one line per stage: backbone -> FPN -> RPN -> RoI heads, + semantic head."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from segfpn.config import ModelConfig
from segfpn.model.backbone import ResNet
from segfpn.model.fpn import FPN, PYRAMID_STRIDES
from segfpn.model.losses import Targets, semantic_loss
from segfpn.model.preprocess import ImageBatch
from segfpn.model.roi_heads import InstanceOutputs, RoIHeads
from segfpn.model.rpn import RPN, Proposals
from segfpn.model.semantic_head import SemanticHead


@dataclass
class NetworkOutputs:
    """What one forward pass produces, all in network-input pixels.

    bottom_up: {"c2".."c5"} [B, C, h, w]; pyramid: {"p2".."p6"} [B, D, h, w];
    proposals / instances: one per image; semantic_logits: [B, S, Hp / semantic_stride,
    Wp / semantic_stride] or None (``SegFPN.forward`` gives them at the input size, stride 1).
    """

    bottom_up: dict[str, torch.Tensor]
    pyramid: dict[str, torch.Tensor]
    proposals: list[Proposals]
    instances: list[InstanceOutputs]
    semantic_logits: torch.Tensor | None
    semantic_stride: int = 1


class SegFPN(nn.Module):
    """Mask R-CNN on an FPN, plus the Panoptic FPN semantic branch when ``config.semantic_head`` is set."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.backbone = ResNet(config.backbone)
        self.fpn = FPN(self.backbone.out_channels, config.fpn)
        channels = self.fpn.out_channels
        self.rpn = RPN(in_channels=channels, level_names=tuple(PYRAMID_STRIDES),
                       strides=tuple(PYRAMID_STRIDES.values()), config=config.rpn)
        self.roi_heads = RoIHeads(channels, config)
        self.semantic_head = SemanticHead(channels, config.semantic_head) if config.semantic_head else None

    def forward(self, images: ImageBatch) -> NetworkOutputs:
        bottom_up = self.backbone(images.tensor)
        pyramid = self.fpn(bottom_up)
        proposals, _ = self.rpn(pyramid, images.image_sizes, images.padded_size)
        instances = self.roi_heads(pyramid, proposals, images.image_sizes)
        semantic = self.semantic_head(pyramid) if self.semantic_head is not None else None
        return NetworkOutputs(bottom_up=bottom_up, pyramid=pyramid, proposals=proposals, instances=instances,
                              semantic_logits=semantic)

    def losses(self, images: ImageBatch, targets: list[Targets]) -> dict[str, torch.Tensor]:
        """Training losses of a batch: RPN, box, mask, and semantic (when the branch exists).

        ``targets`` hold one :class:`Targets` per image, in network-input pixels.
        """
        pyramid = self.fpn(self.backbone(images.tensor))
        proposals, losses = self.rpn(pyramid, images.image_sizes, images.padded_size, targets)
        losses.update(self.roi_heads.losses(pyramid, proposals, targets))
        if self.semantic_head is not None:
            cfg = self.config.semantic_head
            losses["loss_semantic"] = semantic_loss(self.semantic_head(pyramid), targets, ignore_value=cfg.ignore_value,
                                                    weight=cfg.loss_weight)
        return losses
