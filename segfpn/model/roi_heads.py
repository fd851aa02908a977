"""RoI heads: level-based pooling -> box head -> detections -> level-based pooling -> mask head
(Mask R-CNN), or without the mask head (Faster R-CNN: boxes only)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from segfpn.config import ModelConfig, PoolerConfig
from segfpn.model.box_head import BoxHead, BoxPredictor, select_detections
from segfpn.model.losses import Targets, box_head_losses, mask_loss, mask_targets, sample_rois
from segfpn.model.mask_head import MaskHead, class_mask_probabilities
from segfpn.model.poolers import LevelRoIPooler, assign_levels
from segfpn.model.rpn import Proposals


@dataclass
class InstanceOutputs:
    """Detections of one image in network-input pixels.

    boxes float32 [N, 4] xyxy; scores float32 [N]; labels int64 [N]; mask_probs float32 [N, 28, 28],
    or None for a model without masks (Faster R-CNN, RetinaNet). Two-stage models: levels int64
    [N], the level of the final box's RoI (the mask head pools it; without a mask head the level
    the box maps to under the same rule), box_levels int64 [N], the level of the proposal that
    the box head classified, and proposal_index int64 [N], that proposal's index in the image's
    proposals. RetinaNet: levels and box_levels both the pyramid level (3..7) of the anchor that
    produced the detection; proposal_index None.
    """

    boxes: torch.Tensor
    scores: torch.Tensor
    labels: torch.Tensor
    mask_probs: torch.Tensor | None
    levels: torch.Tensor
    box_levels: torch.Tensor
    proposal_index: torch.Tensor | None = None


#: RoIs per mask-head call at inference (bounds its memory; smaller batches are as fast on CPU).
MASK_HEAD_CHUNK = 25


class RoIHeads(nn.Module):
    def __init__(self, in_channels: int, config: ModelConfig):
        super().__init__()
        self.config = config
        self.box_pooler = LevelRoIPooler(output_size=config.box_head.pooler_resolution, config=config.pooler)
        self.box_head = BoxHead(in_channels, config.box_head)
        self.box_predictor = BoxPredictor(self.box_head.out_features, config.num_classes)
        self.mask_pooler = self.mask_head = None
        if config.mask_head is not None:
            self.mask_pooler = LevelRoIPooler(output_size=config.mask_head.pooler_resolution, config=config.pooler)
            self.mask_head = MaskHead(in_channels, config.num_classes, config.mask_head)

    def forward(self, features: dict[str, torch.Tensor], proposals: list[Proposals],
                image_sizes: list[tuple[int, int]], *, pooler: PoolerConfig | None = None) -> list[InstanceOutputs]:
        """Detections of each image from its proposals. ``pooler`` replaces ``config.pooler`` (the
        level rule and RoIAlign settings) for this call."""
        # RoIAlign runs in float32 (torchvision's autocast does the same): low-precision features
        # (bf16 / fp16 modes) are converted once here rather than once per pooler and level.
        if any(f.dtype != torch.float32 and f.device.type == "cpu" for f in features.values()):
            features = {name: f.float() for name, f in features.items()}
        boxes = [p.boxes for p in proposals]
        pooled, proposal_levels = self.box_pooler(features, boxes, config=pooler)
        class_logits, box_deltas = self.box_predictor(self.box_head(pooled))
        detections = []
        start = 0
        for p, size in zip(proposals, image_sizes):
            end = start + len(p.boxes)
            det = select_detections(class_logits[start:end], box_deltas[start:end], p.boxes, size,
                                    self.config.box_head)
            detections.append((det, proposal_levels[start:end][det.proposal_index]))
            start = end
        final_boxes = [d.boxes for d, _ in detections]
        if self.mask_head is None:
            mask_probs = None
            mask_levels = assign_levels(torch.cat(final_boxes), pooler or self.config.pooler)
        else:
            mask_probs, mask_levels = self._mask_probabilities(features, final_boxes,
                                                               torch.cat([d.labels for d, _ in detections]), pooler)
        outputs = []
        start = 0
        for det, box_levels in detections:
            end = start + len(det.boxes)
            outputs.append(InstanceOutputs(boxes=det.boxes, scores=det.scores, labels=det.labels,
                                           mask_probs=None if mask_probs is None else mask_probs[start:end],
                                           levels=mask_levels[start:end], box_levels=box_levels,
                                           proposal_index=det.proposal_index))
            start = end
        return outputs

    def _mask_probabilities(self, features: dict[str, torch.Tensor], boxes: list[torch.Tensor], labels: torch.Tensor,
                            pooler: PoolerConfig | None) -> tuple[torch.Tensor, torch.Tensor]:
        """(float32 [N, M, M] probabilities of each box's class, int64 [N] levels its RoI was pooled from)."""
        mask_features, mask_levels = self.mask_pooler(features, boxes, config=pooler)
        if len(labels):
            # In chunks of RoIs: the head's 28x28 maps for every class of 100 RoIs would take
            # ~200 MB at once, and only each RoI's own class is kept.
            mask_probs = torch.cat([class_mask_probabilities(self.mask_head(chunk), chunk_labels)
                                    for chunk, chunk_labels in zip(mask_features.split(MASK_HEAD_CHUNK),
                                                                   labels.split(MASK_HEAD_CHUNK))])
        else:
            side = 2 * self.config.mask_head.pooler_resolution
            mask_probs = mask_features.new_zeros((0, side, side))
        return mask_probs, mask_levels

    def losses(self, features: dict[str, torch.Tensor], proposals: list[Proposals],
               targets: list[Targets]) -> dict[str, torch.Tensor]:
        """Box classification/regression losses on sampled RoIs, and the mask loss on their foreground."""
        box_cfg = self.config.box_head
        rois = [sample_rois(p.boxes, t, batch_size=box_cfg.batch_size_per_image,
                            positive_fraction=box_cfg.positive_fraction, iou_threshold=box_cfg.iou_threshold)
                for p, t in zip(proposals, targets)]
        pooled, _ = self.box_pooler(features, [r.boxes for r in rois])
        class_logits, box_deltas = self.box_predictor(self.box_head(pooled))
        losses = box_head_losses(class_logits, box_deltas, rois, targets,
                                 background_index=box_cfg.background_index, box_weights=box_cfg.box_weights)
        if self.mask_head is None:
            return losses
        fg_boxes = [r.boxes[r.foreground] for r in rois]
        side = 2 * self.config.mask_head.pooler_resolution
        mask_features, _ = self.mask_pooler(features, fg_boxes)
        labels = torch.cat([r.labels[r.foreground] for r in rois])
        gt = torch.cat([mask_targets(t.masks[r.matched[r.foreground]], b, side)
                        for r, t, b in zip(rois, targets, fg_boxes)])
        losses["loss_mask"] = mask_loss(self.mask_head(mask_features), labels, gt)
        return losses
