"""RetinaNet (Lin et al., ICCV 2017), the one-stage detector on the pyramid: backbone (c3-c5) ->
FPN (p3-p7) -> a dense head shared by every level -> per-level top-k -> class-aware NMS.

Each level predicts, at every position, a score for every class and a box for each of its A
anchors (three sizes per octave x three aspect ratios), so each detection comes from one anchor
of one level: that level is kept with it (``InstanceOutputs.levels``, 3..7).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import batched_nms

from segfpn.config import ModelConfig, PoolerConfig, RetinaHeadConfig
from segfpn.model.anchors import AnchorGenerator
from segfpn.model.boxes import clip_boxes, decode_boxes
from segfpn.model.layers import ConvNorm
from segfpn.model.levels import level_number
from segfpn.model.network import NetworkOutputs, PyramidNetwork, StageClock
from segfpn.model.preprocess import ImageBatch
from segfpn.model.roi_heads import InstanceOutputs


class RetinaNetHead(nn.Module):
    """The class and box subnets, run on every level with the same weights.

    Each subnet: ``num_convs`` x (3x3 conv, optional norm, ReLU) on the level's [B, C, H, W]
    map; then ``cls_score`` (3x3 conv to A * K logits, channel a * K + k) and ``bbox_pred`` (3x3
    conv to A * 4 deltas (dx, dy, dw, dh), channel a * 4 + j).
    """

    def __init__(self, channels: int, *, num_anchors: int, num_classes: int, config: RetinaHeadConfig):
        super().__init__()
        kw = dict(norm=config.norm, num_groups=config.norm_groups)
        self.cls_subnet = nn.ModuleList(ConvNorm(channels, channels, 3, **kw) for _ in range(config.num_convs))
        self.bbox_subnet = nn.ModuleList(ConvNorm(channels, channels, 3, **kw) for _ in range(config.num_convs))
        self.cls_score = nn.Conv2d(channels, num_anchors * num_classes, 3, padding=1)
        self.bbox_pred = nn.Conv2d(channels, num_anchors * 4, 3, padding=1)
        self.num_classes = num_classes

    def forward(self, features: list[torch.Tensor]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Per level: class logits [B, H*W*A, K] and deltas [B, H*W*A, 4], rows in the anchor
        order of :class:`~segfpn.model.anchors.AnchorGenerator` ((y * W + x) * A + a)."""
        logits, deltas = [], []
        for x in features:
            b = x.shape[0]
            y = x
            for conv in self.cls_subnet:
                y = F.relu(conv(y), inplace=True)
            # [B, A*K, H, W] -> [B, H, W, A*K] -> [B, H*W*A, K]: a view when the map is channels-last.
            logits.append(self.cls_score(y).permute(0, 2, 3, 1).reshape(b, -1, self.num_classes))
            y = x
            for conv in self.bbox_subnet:
                y = F.relu(conv(y), inplace=True)
            deltas.append(self.bbox_pred(y).permute(0, 2, 3, 1).reshape(b, -1, 4))
        return logits, deltas


@dataclass
class DenseDetections:
    """Detections of one image, sorted by descending score, in network-input pixels.

    boxes float32 [N, 4] xyxy; scores float32 [N] (sigmoid); labels int64 [N] (0..K-1);
    levels int64 [N] (pyramid level of the anchor, e.g. 3..7); anchor_index int64 [N] (the
    anchor within its level, (y * W + x) * A + a).
    """

    boxes: torch.Tensor
    scores: torch.Tensor
    labels: torch.Tensor
    levels: torch.Tensor
    anchor_index: torch.Tensor


def level_candidates(logits: torch.Tensor, deltas: torch.Tensor, anchors: torch.Tensor,
                     config: RetinaHeadConfig) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """One level's candidates: the (anchor, class) pairs scoring above ``score_threshold``, the
    best ``topk_candidates`` of them (a top-k over pairs, so one anchor may give several classes),
    decoded. logits [M, K], deltas [M, 4], anchors [M, 4] (M = H*W*A).

    Returns (boxes float32 [k, 4], scores [k] in descending order, labels [k], anchor indices [k]),
    unclipped. The steps and their order are both references' (torchvision's
    ``postprocess_detections``, detectron2's ``_decode_per_level_predictions``), since near-ties
    at the top-k cut are decided by them.
    """
    num_classes = logits.shape[1]
    scores = torch.sigmoid(logits.float()).flatten()
    keep = scores > config.score_threshold
    scores = scores[keep]
    pair_index = torch.nonzero(keep).squeeze(1)
    scores, order = scores.topk(min(config.topk_candidates, pair_index.numel()))
    pair_index = pair_index[order]
    anchor_index = torch.div(pair_index, num_classes, rounding_mode="floor")
    labels = pair_index % num_classes
    boxes = decode_boxes(deltas[anchor_index].float(), anchors[anchor_index], config.box_weights)
    return boxes, scores, labels, anchor_index


def select_dense_detections(logits: list[torch.Tensor], deltas: list[torch.Tensor], anchors: list[torch.Tensor],
                            levels: list[int], image_size: tuple[int, int],
                            config: RetinaHeadConfig) -> DenseDetections:
    """Per-level candidates (:func:`level_candidates`), optionally clipped to ``image_size`` (h, w),
    then NMS per class over all levels and the best ``detections_per_image``."""
    parts = []
    for level, lg, dl, an in zip(levels, logits, deltas, anchors):
        boxes, scores, labels, anchor_index = level_candidates(lg, dl, an, config)
        if config.clip_before_nms:
            boxes = clip_boxes(boxes, image_size)
        parts.append((boxes, scores, labels, torch.full_like(labels, level), anchor_index))
    boxes, scores, labels, level_of, anchor_index = (torch.cat(field) for field in zip(*parts))
    # At most 5 x topk_candidates boxes: torchvision's own NMS is cheap here, and with it exact
    # score ties come out in the references' order too.
    keep = batched_nms(boxes, scores, labels, config.nms_threshold)[:config.detections_per_image]
    return DenseDetections(boxes=boxes[keep], scores=scores[keep], labels=labels[keep], levels=level_of[keep],
                           anchor_index=anchor_index[keep])


class RetinaNet(PyramidNetwork):
    """RetinaNet on an FPN: ``config.detector == "retinanet"``.

    The stages, as :class:`~segfpn.model.detector.SegFPN`'s: :meth:`features` (backbone and FPN)
    -> :meth:`detect` (dense head and selection); :meth:`forward` runs both and returns
    :class:`NetworkOutputs` with no proposals and no semantic logits.
    """

    def __init__(self, config: ModelConfig):
        if config.detector != "retinanet" or config.retina_head is None:
            raise ValueError(f"RetinaNet needs a retinanet config, got detector={config.detector!r}")
        super().__init__(config)
        head = config.retina_head
        self.level_names = tuple(self.fpn.strides)
        if len(head.anchor_sizes) != len(self.level_names):
            raise ValueError(f"retina_head.anchor_sizes has {len(head.anchor_sizes)} sizes for the "
                             f"{len(self.level_names)} pyramid levels {', '.join(self.level_names)}")
        self.anchor_generator = AnchorGenerator(
            strides=tuple(self.fpn.strides.values()), sizes=head.level_anchor_sizes(), aspect_ratios=head.aspect_ratios,
            round_corners=head.round_anchors, arithmetic=head.anchor_arithmetic, offset=head.anchor_offset,
            strides_from_grid=head.strides_from_grid, order=head.anchor_order)
        self.head = RetinaNetHead(self.fpn.out_channels, num_anchors=self.anchor_generator.num_anchors,
                                  num_classes=config.num_classes, config=head)
        self.semantic_head = None  # no semantic branch (the Predictor asks)

    @property
    def clip_output_boxes(self) -> bool:
        """Whether the boxes are clipped to the original image after resizing (empty ones dropped)."""
        return self.config.retina_head.clip_output_boxes

    def detect(self, pyramid: dict[str, torch.Tensor], images: ImageBatch) -> list[InstanceOutputs]:
        """The head on every level, then each image's detections (:func:`select_dense_detections`)."""
        maps = [pyramid[name] for name in self.level_names]
        logits, deltas = self.head(maps)
        anchors = self.anchor_generator([tuple(m.shape[-2:]) for m in maps], images.padded_size)
        levels = [level_number(name) for name in self.level_names]
        outputs = []
        for i, size in enumerate(images.image_sizes):
            det = select_dense_detections([lg[i] for lg in logits], [dl[i] for dl in deltas], anchors, levels, size,
                                          self.config.retina_head)
            outputs.append(InstanceOutputs(boxes=det.boxes, scores=det.scores, labels=det.labels, mask_probs=None,
                                           levels=det.levels, box_levels=det.levels))
        return outputs

    def forward(self, images: ImageBatch, *, keep_bottom_up: bool = True, timings: dict[str, float] | None = None,
                pooler: PoolerConfig | None = None, semantic: bool = True) -> NetworkOutputs:
        """Both stages on ``images`` (``tensor`` [B, 3, Hp, Wp], normalised), with
        :meth:`SegFPN.forward <segfpn.model.detector.SegFPN.forward>`'s keywords.
        ``keep_bottom_up=False`` drops c2-c5 once the FPN has them. ``timings``: seconds per stage
        are added to it ("backbone_fpn", "heads"). ``pooler`` must be None: there are no RoIs to
        pool (ValueError otherwise). ``semantic``: there is no semantic head to run or leave out.
        """
        if pooler is not None:
            raise ValueError("RetinaNet has no RoI heads: a level rule for RoIs (pooler=) does not apply; each "
                             "detection comes from an anchor of one level")
        clock = StageClock(timings, images.tensor.device)
        bottom_up, pyramid = self.features(images, keep_bottom_up=keep_bottom_up)
        clock.lap("backbone_fpn")
        instances = self.detect(pyramid, images)
        clock.lap("heads")
        return NetworkOutputs(bottom_up=bottom_up, pyramid=pyramid, proposals=[], instances=instances,
                              semantic_logits=None)
