"""The network a :class:`~segfpn.config.ModelConfig` describes: two-stage (Faster R-CNN, Mask
R-CNN, Panoptic FPN) or RetinaNet."""

from __future__ import annotations

from segfpn.config import ModelConfig
from segfpn.model.detector import SegFPN
from segfpn.model.retinanet import RetinaNet

#: Either network; both take an ImageBatch and return NetworkOutputs (``forward``), with the
#: stages ``features`` and ``detect``.
Detector = SegFPN | RetinaNet


def build_model(config: ModelConfig) -> Detector:
    """A new :class:`SegFPN` (``config.detector == "rcnn"``) or :class:`RetinaNet` ("retinanet"),
    randomly initialised, in training mode (as any ``nn.Module``)."""
    if config.detector == "retinanet":
        return RetinaNet(config)
    return SegFPN(config)
