"""Network-input coordinates -> original image: rescale boxes, paste masks, resize semantic logits."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from segfpn.config import MaskHeadConfig
from segfpn.model.boxes import clip_boxes, nonempty
from segfpn.model.roi_heads import InstanceOutputs
from segfpn.model.mask_head import paste_masks_with_regions
from segfpn.model.semantic_head import upsample_logits


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


#: Classes brought to full resolution at a time by :func:`semantic_labels_to_image` (a multiple
#: of the CPU's vector width, so each class is computed exactly as in one whole-tensor call).
SEMANTIC_CLASSES_PER_PASS = 32


def semantic_labels_to_image(logits: torch.Tensor, input_size: tuple[int, int], output_size: tuple[int, int], *,
                             upsample: int = 1) -> torch.Tensor:
    """int64 [H, W]: the class of highest logit at every pixel of the original image.

    logits: [1, S, h, w], one image's logits on the padded input divided by ``upsample``. The
    logits are upsampled (bilinear, as the semantic head's last step), cropped to ``input_size``
    and resized to ``output_size`` (:func:`semantic_logits_to_image`), a few classes at a time
    with a running maximum, so that the full-resolution logits of every class (~140 MB for 54
    classes at 800x800) never exist at once. Channels-last: a pixel's class scores side by side
    make the resize and the maximum 3-4x faster than over [S, H, W] planes.
    """
    best = labels = None
    for first in range(0, logits.shape[1], SEMANTIC_CLASSES_PER_PASS):
        part = logits[:, first:first + SEMANTIC_CLASSES_PER_PASS].float().contiguous(memory_format=torch.channels_last)
        part = semantic_logits_to_image(upsample_logits(part, upsample), input_size, output_size)
        value, index = part.max(dim=1)
        if best is None:
            best, labels = value, index
        else:
            higher = value > best  # ties keep the lower class, as argmax does
            best = torch.where(higher, value, best)
            labels = torch.where(higher, index + first, labels)
    return labels[0]
