"""The two-stage network, one line per stage: backbone -> FPN -> RPN -> RoI heads, + semantic head
(Faster R-CNN, Mask R-CNN, Panoptic FPN). RetinaNet, the one-stage one, is in :mod:`retinanet`."""

from __future__ import annotations

import torch

from segfpn.config import ModelConfig, PoolerConfig
from segfpn.model.losses import Targets, semantic_loss
from segfpn.model.network import NetworkOutputs, PyramidNetwork, StageClock
from segfpn.model.preprocess import ImageBatch
from segfpn.model.roi_heads import InstanceOutputs, RoIHeads
from segfpn.model.rpn import RPN, Proposals
from segfpn.model.semantic_head import SemanticHead


class SegFPN(PyramidNetwork):
    """Mask R-CNN on an FPN (Faster R-CNN when ``config.mask_head`` is None), plus the Panoptic
    FPN semantic branch when ``config.semantic_head`` is set.

    The stages can be run one by one, which is what :meth:`forward` does:
    :meth:`features` (backbone and FPN) -> :meth:`propose` (RPN) -> :meth:`detect` (RoI heads),
    and :meth:`segment` (semantic head) on the same pyramid. Re-running :meth:`detect` on a kept
    pyramid with another level rule (``pooler=``) costs the heads only.
    """

    def __init__(self, config: ModelConfig):
        if config.detector != "rcnn":
            raise ValueError(f"SegFPN builds two-stage (rcnn) models, this config is a {config.detector}; "
                             "use segfpn.model.build.build_model")
        super().__init__(config)
        channels = self.fpn.out_channels
        self.rpn = RPN(in_channels=channels, level_names=tuple(self.fpn.strides),
                       strides=tuple(self.fpn.strides.values()), config=config.rpn)
        self.roi_heads = RoIHeads(channels, config)
        self.semantic_head = SemanticHead(channels, config.semantic_head) if config.semantic_head else None

    @property
    def clip_output_boxes(self) -> bool:
        """Whether the boxes are clipped to the original image after resizing (empty ones dropped)."""
        return self.config.box_head.clip_output_boxes

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

    def forward(self, images: ImageBatch, *, keep_bottom_up: bool = True, timings: dict[str, float] | None = None,
                pooler: PoolerConfig | None = None, semantic: bool = True) -> NetworkOutputs:
        """Every stage in turn on ``images`` (``tensor`` [B, 3, Hp, Wp], normalised).

        ``keep_bottom_up=False`` drops c2-c5 once the FPN has them (~80 MB less at the heads'
        peak at 800x800). ``timings``: seconds per stage are added to it ("backbone_fpn",
        "heads", "semantic_head"; CUDA is synchronised for them). ``pooler``: a
        :class:`~segfpn.config.PoolerConfig` replacing the RoI level rule (``config.pooler``)
        for this call, e.g. every RoI on one level (``min_level == max_level``).
        ``semantic=False`` leaves the semantic head out (``semantic_logits`` None).
        """
        clock = StageClock(timings, images.tensor.device)
        bottom_up, pyramid = self.features(images, keep_bottom_up=keep_bottom_up)
        clock.lap("backbone_fpn")
        proposals = self.propose(pyramid, images)
        instances = self.detect(pyramid, proposals, images.image_sizes, pooler=pooler)
        clock.lap("heads")
        logits = self.segment(pyramid) if semantic else None
        clock.lap("semantic_head")
        stride = self.semantic_head.config.common_stride if logits is not None else 1
        return NetworkOutputs(bottom_up=bottom_up, pyramid=pyramid, proposals=proposals, instances=instances,
                              semantic_logits=logits, semantic_stride=stride)

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
