"""Box head (convs and fcs on 7x7 RoI features), class and box predictors, and detection selection."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from segfpn.config import BoxHeadConfig
from segfpn.model.boxes import batched_nms_top_k, clip_boxes, decode_boxes, nonempty
from segfpn.model.layers import conv_stack


class BoxHead(nn.Module):
    """[R, C, S, S] RoI features -> [R, D] box features: optional 3x3 convs (+norm, ReLU), then fcs + ReLU."""

    def __init__(self, in_channels: int, config: BoxHeadConfig):
        super().__init__()
        self.convs, channels = conv_stack(in_channels, config.conv_channels, norm=config.norm)
        self.fcs = nn.ModuleList()
        features = channels * config.pooler_resolution ** 2
        for out_features in config.fc_channels:
            self.fcs.append(nn.Linear(features, out_features))
            features = out_features
        self.out_features = features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for conv in self.convs:
            x = F.relu(conv(x), inplace=True)
        x = x.flatten(1)
        for fc in self.fcs:
            x = F.relu(fc(x), inplace=True)
        return x


class BoxPredictor(nn.Module):
    """Class logits [R, K + 1] (background first or last) and class-specific deltas [R, K * 4]."""

    def __init__(self, in_features: int, num_classes: int):
        super().__init__()
        self.cls_score = nn.Linear(in_features, num_classes + 1)
        self.bbox_pred = nn.Linear(in_features, num_classes * 4)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.cls_score(x), self.bbox_pred(x)


@dataclass
class Detections:
    """Detections of one image, sorted by descending score.

    boxes: float32 [N, 4] xyxy in network-input pixels; scores float32 [N]; labels int64 [N]
    (foreground class index 0..K-1); proposal_index int64 [N] (the proposal each came from).
    """

    boxes: torch.Tensor
    scores: torch.Tensor
    labels: torch.Tensor
    proposal_index: torch.Tensor


def foreground_probabilities(class_logits: torch.Tensor, background_index: str) -> torch.Tensor:
    """Softmax over K + 1 classes, background column removed: [R, K]."""
    probs = F.softmax(class_logits.float(), dim=-1)
    return probs[:, 1:] if background_index == "first" else probs[:, :-1]


def select_detections(class_logits: torch.Tensor, box_deltas: torch.Tensor, proposals: torch.Tensor,
                      image_size: tuple[int, int], config: BoxHeadConfig) -> Detections:
    """Score threshold, per-class NMS and top-k over every (proposal, class) pair of one image."""
    scores = foreground_probabilities(class_logits, config.background_index)
    num_proposals, num_classes = scores.shape
    boxes = decode_boxes(box_deltas, proposals, config.box_weights).view(num_proposals, num_classes, 4)
    boxes = clip_boxes(boxes, image_size)
    candidates = torch.nonzero(scores > config.score_threshold)  # proposal-major order
    proposal_index, labels = candidates[:, 0], candidates[:, 1]
    boxes = boxes[proposal_index, labels]
    scores = scores[proposal_index, labels]
    if config.min_detection_size > 0:
        keep = nonempty(boxes, config.min_detection_size)
        boxes, scores, labels, proposal_index = boxes[keep], scores[keep], labels[keep], proposal_index[keep]
    keep = batched_nms_top_k(boxes, scores, labels, config.nms_threshold, config.detections_per_image)
    return Detections(boxes=boxes[keep], scores=scores[keep], labels=labels[keep], proposal_index=proposal_index[keep])
