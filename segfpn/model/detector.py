"""The two-stage network, one line per stage: backbone -> FPN -> RPN -> RoI heads, + semantic head
(Faster R-CNN, Mask R-CNN, Panoptic FPN). RetinaNet, the one-stage one, is in :mod:`retinanet`."""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from torch import nn

from segfpn.config import ModelConfig, PoolerConfig
from segfpn.model.backbone import ResNet
from segfpn.model.fpn import FPN
from segfpn.model.losses import Targets, semantic_loss
from segfpn.model.preprocess import ImageBatch
from segfpn.model.roi_heads import InstanceOutputs, RoIHeads
from segfpn.model.rpn import RPN, Proposals
from segfpn.model.semantic_head import SemanticHead


@dataclass
class NetworkOutputs:
    """What one forward pass produces, all in network-input pixels.

    bottom_up: {"c2".."c5"} [B, C, h, w] (empty when not kept); pyramid: {"p2".."p6"}
    (RetinaNet: {"p3".."p7"}) [B, D, h, w]; proposals / instances: one per image (RetinaNet:
    no proposals, an empty list); semantic_logits: [B, S, Hp / stride,
    Wp / stride], the semantic head's logits before its last upsampling (``semantic_stride``
    times, :func:`~segfpn.model.semantic_head.upsample_logits`), or None.
    """

    bottom_up: dict[str, torch.Tensor]
    pyramid: dict[str, torch.Tensor]
    proposals: list[Proposals]
    instances: list[InstanceOutputs]
    semantic_logits: torch.Tensor | None
    semantic_stride: int = 1


class SegFPN(nn.Module):
    """Mask R-CNN on an FPN (Faster R-CNN when ``config.mask_head`` is None), plus the Panoptic
    FPN semantic branch when ``config.semantic_head`` is set.

    The stages can be run one by one, which is what :meth:`forward` does:
    :meth:`features` (backbone and FPN) -> :meth:`propose` (RPN) -> :meth:`detect` (RoI heads),
    and :meth:`segment` (semantic head) on the same pyramid. Re-running :meth:`detect` on a kept
    pyramid with another level rule (``pooler=``) costs the heads only.
    """

    def __init__(self, config: ModelConfig):
        super().__init__()
        if config.detector != "rcnn":
            raise ValueError(f"SegFPN builds two-stage (rcnn) models, this config is a {config.detector}; "
                             "use segfpn.model.build.build_model")
        self.config = config
        self.backbone = ResNet(config.backbone)
        self.fpn = FPN(self.backbone.out_channels, config.fpn)
        channels = self.fpn.out_channels
        self.rpn = RPN(in_channels=channels, level_names=tuple(self.fpn.strides),
                       strides=tuple(self.fpn.strides.values()), config=config.rpn)
        self.roi_heads = RoIHeads(channels, config)
        self.semantic_head = SemanticHead(channels, config.semantic_head) if config.semantic_head else None

    def features(self, images: ImageBatch) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """(bottom-up {"c2".."c5"}, pyramid {"p2".."p6"}) of ``images.tensor`` [B, 3, Hp, Wp]."""
        bottom_up = self.backbone(images.tensor)
        return bottom_up, self.fpn(bottom_up)

    def propose(self, pyramid: dict[str, torch.Tensor], images: ImageBatch) -> list[Proposals]:
        """The RPN's proposals, one :class:`Proposals` per image."""
        return self.rpn(pyramid, images.image_sizes, images.padded_size)[0]

    def detect(self, pyramid: dict[str, torch.Tensor], proposals: list[Proposals],
               image_sizes: list[tuple[int, int]], *, pooler: PoolerConfig | None = None) -> list[InstanceOutputs]:
        """The RoI heads on ``proposals``: one :class:`InstanceOutputs` per image. ``pooler``
        replaces the model's level rule (``config.pooler``) for this call, e.g. every RoI on one
        level (``min_level == max_level``) or another canonical size."""
        return self.roi_heads(pyramid, proposals, image_sizes, pooler=pooler)

    def segment(self, pyramid: dict[str, torch.Tensor]) -> torch.Tensor | None:
        """The semantic head's logits before its last upsampling (stride
        ``config.semantic_head.common_stride``), or None without the branch."""
        return self.semantic_head.coarse_logits(pyramid) if self.semantic_head is not None else None

    def forward(self, images: ImageBatch, *, keep_bottom_up: bool = True,
                timings: dict[str, float] | None = None) -> NetworkOutputs:
        """Every stage in turn. ``keep_bottom_up=False`` drops c2-c5 once the FPN has them
        (~80 MB less at the heads' peak at 800x800). ``timings``: seconds per stage are added
        to it ("backbone_fpn", "heads", "semantic_head"; CUDA is synchronised for them)."""
        clock = StageClock(timings, images.tensor.device)
        bottom_up, pyramid = self.features(images)
        if not keep_bottom_up:
            bottom_up = {}
        clock.lap("backbone_fpn")
        proposals = self.propose(pyramid, images)
        instances = self.detect(pyramid, proposals, images.image_sizes)
        clock.lap("heads")
        semantic = self.segment(pyramid)
        clock.lap("semantic_head")
        stride = self.semantic_head.config.common_stride if self.semantic_head is not None else 1
        return NetworkOutputs(bottom_up=bottom_up, pyramid=pyramid, proposals=proposals, instances=instances,
                              semantic_logits=semantic, semantic_stride=stride)

    def losses(self, images: ImageBatch, targets: list[Targets]) -> dict[str, torch.Tensor]:
        """Training losses of a batch: RPN, box, mask, and semantic (when the branch exists).

        ``targets`` hold one :class:`Targets` per image, in network-input pixels.
        """
        _, pyramid = self.features(images)
        proposals, losses = self.rpn(pyramid, images.image_sizes, images.padded_size, targets)
        losses.update(self.roi_heads.losses(pyramid, proposals, targets))
        if self.semantic_head is not None:
            cfg = self.config.semantic_head
            losses["loss_semantic"] = semantic_loss(self.semantic_head(pyramid), targets, ignore_value=cfg.ignore_value,
                                                    weight=cfg.loss_weight)
        return losses


class StageClock:
    """Seconds between laps, into ``timings`` (nothing when it is None)."""

    def __init__(self, timings: dict[str, float] | None, device: torch.device):
        self.timings = timings
        self.sync = torch.cuda.synchronize if device.type == "cuda" and timings is not None else None
        self.start = time.perf_counter()

    def lap(self, name: str) -> None:
        if self.timings is None:
            return
        if self.sync is not None:
            self.sync()
        now = time.perf_counter()
        self.timings[name] = self.timings.get(name, 0.0) + now - self.start
        self.start = now
