"""The network a :class:`~segfpn.config.ModelConfig` describes: two-stage (Faster R-CNN, Mask
R-CNN, Panoptic FPN) or RetinaNet."""

from __future__ import annotations

from segfpn.config import ModelConfig
from segfpn.model.detector import SegFPN
from segfpn.model.retinanet import RetinaNet

#: Either network (both :class:`~segfpn.model.network.PyramidNetwork`): ``forward(images, *,
#: keep_bottom_up, timings, pooler, semantic)`` takes an ImageBatch and returns NetworkOutputs,
#: with the stages ``features`` and ``detect``; ``clip_output_boxes`` says how boxes reach the image.
Detector = SegFPN | RetinaNet


def build_model(config: ModelConfig) -> Detector:
    """A new :class:`SegFPN` (``config.detector == "rcnn"``) or :class:`RetinaNet` ("retinanet"),
    randomly initialised, in training mode (as any ``nn.Module``)."""
    if config.detector == "retinanet":
        return RetinaNet(config)
    return SegFPN(config)
