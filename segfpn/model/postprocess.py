"""Network-input coordinates -> original image: rescale boxes, paste masks, resize semantic logits."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from segfpn.config import MaskHeadConfig
from segfpn.model.boxes import clip_boxes, nonempty
from segfpn.model.roi_heads import InstanceOutputs
from segfpn.model.mask_head import paste_masks


@dataclass
class ImageInstances:
    """Detections in original-image pixels: boxes float32 [N, 4] xyxy, masks bool [N, H, W];
    the rest as in :class:`InstanceOutputs`."""

    boxes: torch.Tensor
    scores: torch.Tensor
    labels: torch.Tensor
    masks: torch.Tensor
    levels: torch.Tensor
    box_levels: torch.Tensor


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
    masks = paste_masks(fields.pop("mask_probs"), fields["boxes"], output_size, method=config.paste_method,
                        threshold=config.mask_threshold)
    return ImageInstances(masks=masks, **fields)


def semantic_logits_to_image(logits: torch.Tensor, input_size: tuple[int, int], output_size: tuple[int, int]) -> torch.Tensor:
    """[S, Hp, Wp] logits of the padded input -> [S, H, W] at the original size (crop, then bilinear)."""
    cropped = logits[:, : input_size[0], : input_size[1]]
    return F.interpolate(cropped[None], size=output_size, mode="bilinear", align_corners=False)[0]
