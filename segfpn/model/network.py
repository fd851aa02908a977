"""What every segfpn detector shares: a ResNet with an FPN on it (:class:`PyramidNetwork`), the
outputs of one forward pass (:class:`NetworkOutputs`) and the clock of its stages
(:class:`StageClock`). The detectors are :class:`~segfpn.model.detector.SegFPN` (two-stage) and
:class:`~segfpn.model.retinanet.RetinaNet` (one-stage)."""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from torch import nn

from segfpn.config import ModelConfig
from segfpn.model.backbone import ResNet
from segfpn.model.fpn import FPN
from segfpn.model.preprocess import ImageBatch
from segfpn.model.roi_heads import InstanceOutputs
from segfpn.model.rpn import Proposals


@dataclass
class NetworkOutputs:
    """What one forward pass produces, all in network-input pixels.

    bottom_up: {"c2".."c5"} [B, C, h, w] (empty when not kept); pyramid: {"p2".."p6"}
    (RetinaNet: {"p3".."p7"}) [B, D, h, w]; proposals / instances: one per image (RetinaNet:
    no proposals, an empty list); semantic_logits: [B, S, Hp / stride,
    Wp / stride], the semantic head's logits before its last upsampling (``semantic_stride``
    times, :func:`~segfpn.model.semantic_head.upsample_logits`), or None (no semantic head, or
    left out with ``semantic=False``).
    """

    bottom_up: dict[str, torch.Tensor]
    pyramid: dict[str, torch.Tensor]
    proposals: list[Proposals]
    instances: list[InstanceOutputs]
    semantic_logits: torch.Tensor | None
    semantic_stride: int = 1


class PyramidNetwork(nn.Module):
    """A ResNet (``backbone``) with an FPN on it (``fpn``), built from ``config``: the stage
    every detector starts with (:meth:`features`). A detector adds its heads and a ``forward``
    taking ``(images, *, keep_bottom_up, timings, pooler, semantic)`` and returning
    :class:`NetworkOutputs`; ``clip_output_boxes`` says whether its boxes are clipped to the
    original image after resizing (detectron2's ``detector_postprocess``)."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.backbone = ResNet(config.backbone)
        self.fpn = FPN(self.backbone.out_channels, config.fpn)

    def features(self, images: ImageBatch, *,
                 keep_bottom_up: bool = True) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """(bottom-up {"c2".."c5"} [B, C_l, Hp / 2**l, Wp / 2**l], pyramid {"p<l>": [B, D, Hp / 2**l,
        Wp / 2**l]} for the levels of ``fpn.strides``) of ``images.tensor`` [B, 3, Hp, Wp].
        ``keep_bottom_up=False``: the bottom-up maps are {} (freed once the FPN has them, ~80 MB
        less at the heads' peak at 800x800)."""
        bottom_up = self.backbone(images.tensor)
        pyramid = self.fpn(bottom_up)
        return (bottom_up if keep_bottom_up else {}), pyramid


class StageClock:
    """Seconds between laps, into ``timings`` (nothing when it is None); on CUDA the device is
    synchronised at each lap, so that a lap holds the work its stage queued."""

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

    def restart(self) -> None:
        """Start the next lap now, leaving the time since the last one out (stages timed elsewhere)."""
        self.start = time.perf_counter()
