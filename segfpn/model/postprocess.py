"""Network-input coordinates -> original image: rescale boxes, paste masks, resize semantic logits."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from segfpn.config import MaskHeadConfig
from segfpn.model.boxes import clip_boxes, nonempty
from segfpn.model.roi_heads import InstanceOutputs
from segfpn.model.mask_head import paste_mask_crops
from segfpn.model.semantic_head import upsample_logits


@dataclass
class ImageInstances:
    """Detections in original-image pixels: boxes float32 [N, 4] xyxy; the masks as
    ``mask_crops`` (bool [y1 - y0, x1 - x0] each) inside ``mask_regions`` int64 [N, 4]
    (y0, y1, x0, x1), half-open, every pixel outside them False (see
    :func:`~segfpn.model.mask_head.paste_mask_crops`); mask_probs float32 [N, M, M] before
    pasting; the three None for a model without masks; the rest as in :class:`InstanceOutputs`."""

    boxes: torch.Tensor
    scores: torch.Tensor
    labels: torch.Tensor
    mask_crops: list[torch.Tensor] | None = field(repr=False)
    mask_regions: torch.Tensor | None = field(repr=False)
    mask_probs: torch.Tensor | None = field(repr=False)
    levels: torch.Tensor
    box_levels: torch.Tensor


def rescale_boxes(boxes: torch.Tensor, input_size: tuple[int, int], output_size: tuple[int, int]) -> torch.Tensor:
    """Scale xyxy boxes from an ``input_size`` (h, w) image to ``output_size`` (H, W)."""
    ratio_h = torch.tensor(output_size[0], dtype=torch.float32) / torch.tensor(input_size[0], dtype=torch.float32)
    ratio_w = torch.tensor(output_size[1], dtype=torch.float32) / torch.tensor(input_size[1], dtype=torch.float32)
    scale = torch.stack((ratio_w, ratio_h, ratio_w, ratio_h)).to(boxes.device)
    return boxes * scale


def boxes_to_image(boxes: torch.Tensor, input_size: tuple[int, int], output_size: tuple[int, int], *,
                   clip: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """xyxy boxes [N, 4] from network-input pixels (``input_size``, h x w) to the original image
    (``output_size``, H x W), and which of them to keep: with ``clip``, the boxes are clipped to
    the image and bool [N] marks those it leaves non-empty (detectron2's ``detector_postprocess``
    drops the others); without, None (all kept)."""
    boxes = rescale_boxes(boxes, input_size, output_size)
    if not clip:
        return boxes, None
    boxes = clip_boxes(boxes, output_size)
    return boxes, nonempty(boxes, 0.0)


def postprocess_instances(outputs: InstanceOutputs, input_size: tuple[int, int], output_size: tuple[int, int], *,
                          clip_boxes_to_image: bool, mask: MaskHeadConfig | None) -> ImageInstances:
    """One image's detections from network-input pixels (``input_size``, h x w) to the original
    image (``output_size``, H x W): boxes rescaled, with ``clip_boxes_to_image`` clipped to it and
    the empty ones dropped (detectron2's ``detector_postprocess``), masks pasted by ``mask``'s
    method (None: a model without masks)."""
    boxes, keep = boxes_to_image(outputs.boxes, input_size, output_size, clip=clip_boxes_to_image)
    fields = dict(boxes=boxes, scores=outputs.scores, labels=outputs.labels, mask_probs=outputs.mask_probs,
                  levels=outputs.levels, box_levels=outputs.box_levels)
    if keep is not None:
        fields = {k: v if v is None else v[keep] for k, v in fields.items()}
    if mask is None or fields["mask_probs"] is None:
        return ImageInstances(mask_crops=None, mask_regions=None, **{**fields, "mask_probs": None})
    crops, regions = paste_mask_crops(fields["mask_probs"], fields["boxes"], output_size,
                                      method=mask.paste_method, threshold=mask.mask_threshold)
    return ImageInstances(mask_crops=crops, mask_regions=regions, **fields)


def semantic_logits_to_image(logits: torch.Tensor, input_size: tuple[int, int],
                             output_size: tuple[int, int]) -> torch.Tensor:
    """[S, Hp, Wp] (or [B, S, Hp, Wp]) logits of the padded input -> [S, H, W] ([B, S, H, W]) at
    the original size (crop, then bilinear)."""
    batched = logits.dim() == 4
    cropped = logits[..., : input_size[0], : input_size[1]]
    if tuple(cropped.shape[-2:]) == tuple(output_size):
        return cropped  # a bilinear resize to the same size is the identity
    resized = F.interpolate(cropped if batched else cropped[None], size=output_size, mode="bilinear",
                            align_corners=False)
    return resized if batched else resized[0]


#: Most classes brought to full resolution at once by :func:`semantic_labels_to_image` (a
#: multiple of the CPU's vector width, so each class is computed exactly as in one whole-tensor
#: call), and the bytes those full-resolution logits may take: 32 classes per pass up to 3
#: megapixels, 16 up to 6, then one class at a time.
SEMANTIC_CLASSES_PER_PASS = 32
SEMANTIC_PASS_BYTES = 384 << 20
#: The vector width above, in float32 lanes: passes of a multiple of it are bit-exact.
_VECTOR_LANES = 16


def semantic_classes_per_pass(output_size: tuple[int, int], num_classes: int) -> int:
    """Classes per pass for an output of ``output_size`` (H, W): as many as the byte budget
    allows, at most :data:`SEMANTIC_CLASSES_PER_PASS`, a multiple of 16, or else 1 (a pass of
    one class needs no per-pixel argmax index, 8 bytes a pixel)."""
    per_class = 4 * max(output_size[0] * output_size[1], 1)
    classes = min(SEMANTIC_CLASSES_PER_PASS, num_classes, SEMANTIC_PASS_BYTES // per_class)
    if classes >= _VECTOR_LANES:
        return classes - classes % _VECTOR_LANES
    return num_classes if num_classes < _VECTOR_LANES and classes >= num_classes else 1


def semantic_labels_to_image(logits: torch.Tensor, input_size: tuple[int, int], output_size: tuple[int, int], *,
                             upsample: int = 1) -> torch.Tensor:
    """[H, W] class of highest logit at every pixel of the original image: uint8 when there are
    at most 256 classes, int32 otherwise.

    logits: [1, S, h, w], one image's logits on the padded input divided by ``upsample``. The
    logits are upsampled (bilinear, as the semantic head's last step), cropped to ``input_size``
    and resized to ``output_size`` (:func:`semantic_logits_to_image`), a few classes at a time
    with a running maximum (:func:`semantic_classes_per_pass`), so that the full-resolution
    logits of every class (~140 MB for 54 classes at 800x800, 5 GB at 6000x4000) never exist at
    once. Channels-last: a pixel's class scores side by side make the resize and the maximum
    3-4x faster than over [S, H, W] planes. Ties keep the lower class, as argmax does.
    """
    num_classes = logits.shape[1]
    per_pass = semantic_classes_per_pass(output_size, num_classes)
    label_dtype = torch.uint8 if num_classes <= 256 else torch.int32
    best = labels = None
    for first in range(0, num_classes, per_pass):
        part = logits[:, first:first + per_pass].float().contiguous(memory_format=torch.channels_last)
        part = semantic_logits_to_image(upsample_logits(part, upsample), input_size, output_size)
        if per_pass == 1:
            value, index = part[:, 0], None
        else:
            value, index = part.max(dim=1)
            index = index.to(label_dtype)
        if best is None:
            best = value.clone() if index is None else value
            labels = torch.zeros_like(best, dtype=label_dtype) if index is None else index
        else:
            higher = value > best
            torch.where(higher, value, best, out=best)
            if index is None:
                labels.masked_fill_(higher, first)
            else:
                torch.where(higher, index + first, labels, out=labels)
        del part, value, index
    return labels[0]
