"""Region proposal network: a shared conv head over p2-p6, anchor decoding, per-level top-k, NMS."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import batched_nms

from segfpn.config import RPNConfig
from segfpn.model.anchors import AnchorGenerator
from segfpn.model.boxes import clip_boxes, decode_boxes, nonempty
from segfpn.model.losses import Targets, rpn_losses

RPN_BOX_WEIGHTS = (1.0, 1.0, 1.0, 1.0)


class RPNHead(nn.Module):
    """3x3 conv(s) + ReLU, then 1x1 objectness (A per position) and 1x1 deltas (4A per position)."""

    def __init__(self, channels: int, num_anchors: int, *, num_convs: int = 1):
        super().__init__()
        self.convs = nn.ModuleList(nn.Conv2d(channels, channels, 3, padding=1) for _ in range(num_convs))
        self.objectness = nn.Conv2d(channels, num_anchors, 1)
        self.deltas = nn.Conv2d(channels, num_anchors * 4, 1)

    def forward(self, features: list[torch.Tensor]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Per level: objectness logits [B, H*W*A] and deltas [B, H*W*A, 4] (anchor order of the generator)."""
        logits, deltas = [], []
        for x in features:
            for conv in self.convs:
                x = F.relu(conv(x), inplace=True)
            b, _, h, w = x.shape
            logits.append(self.objectness(x).permute(0, 2, 3, 1).reshape(b, -1))
            d = self.deltas(x)
            deltas.append(d.view(b, -1, 4, h, w).permute(0, 3, 4, 1, 2).reshape(b, -1, 4))
        return logits, deltas


@dataclass
class Proposals:
    """Proposals of one image, sorted by descending objectness.

    boxes: float32 [R, 4] xyxy in network-input pixels (clipped to the resized image).
    objectness: float32 [R] logits.
    """

    boxes: torch.Tensor
    objectness: torch.Tensor


class RPN(nn.Module):
    """``forward(features, image_sizes, padded_size)`` -> one :class:`Proposals` per image."""

    def __init__(self, *, in_channels: int, level_names: tuple[str, ...], strides: tuple[int, ...], config: RPNConfig):
        super().__init__()
        self.config = config
        self.level_names = level_names
        self.anchor_generator = AnchorGenerator(
            strides=strides, sizes=config.anchor_sizes, aspect_ratios=config.aspect_ratios,
            round_corners=config.round_anchors, arithmetic=config.anchor_arithmetic, offset=config.anchor_offset,
            strides_from_grid=config.strides_from_grid)
        self.head = RPNHead(in_channels, self.anchor_generator.num_anchors, num_convs=config.num_convs)

    def forward(self, features: dict[str, torch.Tensor], image_sizes: list[tuple[int, int]],
                padded_size: tuple[int, int], targets: list[Targets] | None = None) -> tuple[list[Proposals], dict]:
        """Proposals per image, and with ``targets`` the RPN losses (averaged over images)."""
        maps = [features[name] for name in self.level_names]
        logits, deltas = self.head(maps)
        anchors = self.anchor_generator([tuple(m.shape[-2:]) for m in maps], padded_size)
        training = targets is not None
        proposals = [
            self.select_proposals([level[i] for level in logits], [d[i] for d in deltas], anchors, image_sizes[i],
                                  training=training)
            for i in range(len(image_sizes))
        ]
        losses = {}
        if training:
            cfg = self.config
            all_anchors = torch.cat(anchors)
            per_image = [rpn_losses(torch.cat([level[i] for level in logits]), torch.cat([d[i] for d in deltas]),
                                    all_anchors, t, batch_size=cfg.batch_size_per_image,
                                    positive_fraction=cfg.positive_fraction, iou_thresholds=cfg.iou_thresholds,
                                    box_weights=RPN_BOX_WEIGHTS)
                         for i, t in enumerate(targets)]
            losses = {k: sum(p[k] for p in per_image) / len(per_image) for k in per_image[0]}
        return proposals, losses

    def select_proposals(self, logits: list[torch.Tensor], deltas: list[torch.Tensor], anchors: list[torch.Tensor],
                         image_size: tuple[int, int], *, training: bool = False) -> Proposals:
        """Top-k per level by logit, decode, clip, drop empty boxes, NMS per level, keep the best."""
        cfg = self.config
        pre_k = cfg.pre_nms_topk_train if training else cfg.pre_nms_topk
        post_k = cfg.post_nms_topk_train if training else cfg.post_nms_topk
        boxes, scores, levels = [], [], []
        for level, (lg, dl, an) in enumerate(zip(logits, deltas, anchors)):
            k = min(pre_k, lg.shape[0])
            top_logits, idx = lg.detach().topk(k)
            boxes.append(decode_boxes(dl.detach()[idx], an[idx], RPN_BOX_WEIGHTS))
            scores.append(top_logits)
            levels.append(torch.full((k,), level, dtype=torch.int64, device=lg.device))
        boxes = clip_boxes(torch.cat(boxes), image_size)
        scores = torch.cat(scores)
        levels = torch.cat(levels)
        keep = nonempty(boxes, cfg.min_proposal_size) & torch.isfinite(scores)
        boxes, scores, levels = boxes[keep], scores[keep], levels[keep]
        # Ranking by probability ties every logit above ~17 at 1.0, and NMS then keeps tied boxes
        # in another order than by logit: the setting says which the checkpoint's library used.
        ranking = scores.sigmoid() if cfg.nms_score == "probability" else scores
        keep = batched_nms(boxes, ranking, levels, cfg.nms_threshold)[:post_k]
        return Proposals(boxes=boxes[keep], objectness=scores[keep])
