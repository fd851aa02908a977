"""Network-input coordinates -> original image: rescale boxes, paste masks, resize semantic logits."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from segfpn.config import MaskHeadConfig
from segfpn.model.boxes import clip_boxes, nonempty
from segfpn.model.roi_heads import InstanceOutputs
from segfpn.model.mask_head import paste_masks_with_regions


@dataclass
class ImageInstances:
    """Detections in original-image pixels: boxes float32 [N, 4] xyxy, masks bool [N, H, W];
    mask_regions int64 [N, 4] (y0, y1, x0, x1), a half-open box outside which each mask is empty;
    the rest as in :class:`InstanceOutputs`."""

    boxes: torch.Tensor
    scores: torch.Tensor
    labels: torch.Tensor
    masks: torch.Tensor
    levels: torch.Tensor
    box_levels: torch.Tensor
    mask_regions: torch.Tensor | None = field(default=None, repr=False)


def rescale_boxes(boxes: torch.Tensor, input_size: tuple[int, int], output_size: tuple[int, int]) -> torch.Tensor:
    """Scale xyxy boxes from an ``input_size`` (h, w) image to ``output_size`` (H, W)."""
    ratio_h = torch.tensor(output_size[0], dtype=torch.float32) / torch.tensor(input_size[0], dtype=torch.float32)
    ratio_w = torch.tensor(output_size[1], dtype=torch.float32) / torch.tensor(input_size[1], dtype=torch.float32)
    scale = torch.stack((ratio_w, ratio_h, ratio_w, ratio_h)).to(boxes.device)
    return boxes * scale


def postprocess_instances(outputs: InstanceOutputs, input_size: tuple[int, int], output_size: tuple[int, int],
                          config: MaskHeadConfig) -> ImageInstances:
    boxes = rescale_boxes(outputs.boxes, input_size, output_size)
    keep = None
    if config.clip_output_boxes:
        boxes = clip_boxes(boxes, output_size)
        keep = nonempty(boxes, 0.0)
    fields = dict(boxes=boxes, scores=outputs.scores, labels=outputs.labels, mask_probs=outputs.mask_probs,
                  levels=outputs.levels, box_levels=outputs.box_levels)
    if keep is not None:
        fields = {k: v[keep] for k, v in fields.items()}
    masks, regions = paste_masks_with_regions(fields.pop("mask_probs"), fields["boxes"], output_size,
                                              method=config.paste_method, threshold=config.mask_threshold)
    return ImageInstances(masks=masks, mask_regions=regions, **fields)


def semantic_logits_to_image(logits: torch.Tensor, input_size: tuple[int, int], output_size: tuple[int, int]) -> torch.Tensor:
    """[S, Hp, Wp] (or [B, S, Hp, Wp]) logits of the padded input -> [S, H, W] ([B, S, H, W]) at
    the original size (crop, then bilinear)."""
    batched = logits.dim() == 4
    cropped = logits[..., : input_size[0], : input_size[1]]
    if tuple(cropped.shape[-2:]) == tuple(output_size):
        return cropped  # a bilinear resize to the same size is the identity
    resized = F.interpolate(cropped if batched else cropped[None], size=output_size, mode="bilinear",
                            align_corners=False)
    return resized if batched else resized[0]


def semantic_labels_to_image(logits: torch.Tensor, input_size: tuple[int, int], output_size: tuple[int, int]) -> torch.Tensor:
    """int64 [H, W]: the argmax of :func:`semantic_logits_to_image` for one image's logits
    [1, S, Hp, Wp], computed channels-last (a pixel's class scores side by side: the resize and
    the argmax are 3-4x faster than over [S, H, W] planes)."""
    logits = logits.contiguous(memory_format=torch.channels_last)
    return semantic_logits_to_image(logits, input_size, output_size).argmax(dim=1)[0]

