"""detectron2's arithmetic at each discrete decision point, written out as facts for the tests.

detectron2 cannot be installed here; these functions transcribe its code at commit
02b5c4e295e990042a714712c21dc79b731e8833 (the one tests/data/d2_mini was made with), each with
the function it comes from. They are the reference the property and parity tests compare to.
"""

from __future__ import annotations

import math

import numpy as np
import torch

#: ``MODEL.PIXEL_MEAN`` (BGR) of the model-zoo configs; ``PIXEL_STD`` is 1.
PIXEL_MEAN_BGR = (103.53, 116.28, 123.675)


def resized_input_uint8(batch) -> np.ndarray:
    """Image 0 of a segfpn ``ImageBatch`` normalised with detectron2's settings (BGR, mean
    subtracted, std 1) turned back into the resized RGB uint8 image detectron2 fed its network
    (the fixtures' ``resized_<case>.png``), padding cut off."""
    mean = torch.tensor(PIXEL_MEAN_BGR)[:, None, None]
    h, w = batch.image_sizes[0]
    return (batch.tensor[0, :, :h, :w] + mean).flip(0).permute(1, 2, 0).round().byte().numpy()


def output_shape(old_h: int, old_w: int, short_edge_length: int, max_size: int) -> tuple[int, int]:
    """detectron2 ``ResizeShortestEdge.get_output_shape`` (data/transforms/augmentation_impl.py)."""
    h, w = old_h, old_w
    size = short_edge_length * 1.0
    scale = size / min(h, w)
    if h < w:
        newh, neww = size, scale * w
    else:
        newh, neww = scale * h, size
    if max(newh, neww) > max_size:
        scale = max_size * 1.0 / max(newh, neww)
        newh = newh * scale
        neww = neww * scale
    neww = int(neww + 0.5)
    newh = int(newh + 0.5)
    return newh, neww


def cell_anchors(size: float, aspect_ratios: tuple[float, ...]) -> torch.Tensor:
    """detectron2 ``DefaultAnchorGenerator.generate_cell_anchors`` (modeling/anchor_generator.py)."""
    anchors = []
    area = size**2.0
    for aspect_ratio in aspect_ratios:
        w = math.sqrt(area / aspect_ratio)
        h = aspect_ratio * w
        anchors.append([-w / 2.0, -h / 2.0, w / 2.0, h / 2.0])
    return torch.tensor(anchors)


def grid_anchors(grid: tuple[int, int], stride: int, offset: float, cell: torch.Tensor) -> torch.Tensor:
    """detectron2 ``_create_grid_offsets`` + ``DefaultAnchorGenerator._grid_anchors``."""
    shifts_x = torch.arange(offset * stride, grid[1] * stride, step=stride, dtype=torch.float32)
    shifts_y = torch.arange(offset * stride, grid[0] * stride, step=stride, dtype=torch.float32)
    shift_y, shift_x = torch.meshgrid(shifts_y, shifts_x, indexing="ij")
    shift_x, shift_y = shift_x.reshape(-1), shift_y.reshape(-1)
    shifts = torch.stack((shift_x, shift_y, shift_x, shift_y), dim=1)
    return (shifts.view(-1, 1, 4) + cell.view(1, -1, 4)).reshape(-1, 4)


def assign_levels(boxes: torch.Tensor, min_level: int, max_level: int, canonical_box_size: float,
                  canonical_level: int) -> torch.Tensor:
    """detectron2 ``assign_boxes_to_levels`` (modeling/poolers.py), levels 2..5 (not 0..3)."""
    box_sizes = torch.sqrt((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]))
    level_assignments = torch.floor(canonical_level + torch.log2(box_sizes / canonical_box_size + 1e-8))
    return torch.clamp(level_assignments, min=min_level, max=max_level).to(torch.int64)


# ---------------------------------------------------------------------------------------------
# RetinaNet (modeling/meta_arch/retinanet.py, dense_detector.py, box_regression.py)

#: ``MODEL.ANCHOR_GENERATOR.SIZES`` of COCO-Detection/retinanet_R_*_FPN_*.yaml, evaluated.
RETINANET_ANCHOR_SIZES = [[x, x * 2 ** (1.0 / 3), x * 2 ** (2.0 / 3)] for x in [32, 64, 128, 256, 512]]


def generate_cell_anchors(sizes: list[float], aspect_ratios: tuple[float, ...]) -> torch.Tensor:
    """``DefaultAnchorGenerator.generate_cell_anchors`` with several sizes: size-major."""
    return torch.cat([cell_anchors(size, aspect_ratios) for size in sizes])


def apply_deltas(deltas: torch.Tensor, boxes: torch.Tensor, weights=(1.0, 1.0, 1.0, 1.0),
                 scale_clamp: float = math.log(1000.0 / 16)) -> torch.Tensor:
    """``Box2BoxTransform.apply_deltas``."""
    deltas = deltas.float()
    boxes = boxes.to(deltas.dtype)
    widths = boxes[:, 2] - boxes[:, 0]
    heights = boxes[:, 3] - boxes[:, 1]
    ctr_x = boxes[:, 0] + 0.5 * widths
    ctr_y = boxes[:, 1] + 0.5 * heights
    wx, wy, ww, wh = weights
    dx = deltas[:, 0::4] / wx
    dy = deltas[:, 1::4] / wy
    dw = deltas[:, 2::4] / ww
    dh = deltas[:, 3::4] / wh
    dw = torch.clamp(dw, max=scale_clamp)
    dh = torch.clamp(dh, max=scale_clamp)
    pred_ctr_x = dx * widths[:, None] + ctr_x[:, None]
    pred_ctr_y = dy * heights[:, None] + ctr_y[:, None]
    pred_w = torch.exp(dw) * widths[:, None]
    pred_h = torch.exp(dh) * heights[:, None]
    x1 = pred_ctr_x - 0.5 * pred_w
    y1 = pred_ctr_y - 0.5 * pred_h
    x2 = pred_ctr_x + 0.5 * pred_w
    y2 = pred_ctr_y + 0.5 * pred_h
    pred_boxes = torch.stack((x1, y1, x2, y2), dim=-1)
    return pred_boxes.reshape(deltas.shape)


def retinanet_inference_single_image(anchors: list[torch.Tensor], box_cls: list[torch.Tensor],
                                     box_delta: list[torch.Tensor], *, score_thresh: float = 0.05,
                                     topk_candidates: int = 1000, nms_thresh: float = 0.5,
                                     max_detections: int = 100) -> tuple[torch.Tensor, ...]:
    """``RetinaNet.inference_single_image``: ``_decode_per_level_predictions`` on each level
    (box_cls already sigmoided, [HWA, K]), ``_decode_multi_level_predictions`` (cat), then
    ``batched_nms`` per class and the first ``max_detections``. Returns (boxes, scores, classes,
    levels, anchor indices), boxes unclipped (``detector_postprocess`` clips later)."""
    from torchvision.ops import batched_nms

    boxes, scores, classes, levels, anchor_ids = [], [], [], [], []
    for level, (box_cls_i, box_reg_i, anchors_i) in enumerate(zip(box_cls, box_delta, anchors)):
        predicted_prob = box_cls_i.flatten()
        keep_idxs = predicted_prob > score_thresh
        predicted_prob = predicted_prob[keep_idxs]
        topk_idxs = torch.nonzero(keep_idxs, as_tuple=True)[0]
        num_topk = min(topk_idxs.shape[0], topk_candidates)
        predicted_prob, idxs = predicted_prob.topk(num_topk)
        topk_idxs = topk_idxs[idxs]
        anchor_idxs = topk_idxs // box_cls_i.shape[1]
        classes_idxs = topk_idxs % box_cls_i.shape[1]
        boxes.append(apply_deltas(box_reg_i[anchor_idxs], anchors_i[anchor_idxs]))
        scores.append(predicted_prob)
        classes.append(classes_idxs)
        levels.append(torch.full_like(classes_idxs, level))
        anchor_ids.append(anchor_idxs)
    boxes, scores, classes, levels, anchor_ids = (torch.cat(x) for x in (boxes, scores, classes, levels, anchor_ids))
    keep = batched_nms(boxes.float(), scores, classes, nms_thresh)[:max_detections]
    return boxes[keep], scores[keep], classes[keep], levels[keep], anchor_ids[keep]
