"""How closely two sets of detections of one image agree: segfpn against a reference library
(torchvision, detectron2), or one precision against another.

Both sides are plain dicts of numpy arrays: ``boxes`` float [N, 4] xyxy in image pixels,
``scores`` float [N], ``labels`` int [N] in one label space, and for models with masks ``masks``
bool [N, H, W] (box-only models, Faster R-CNN and RetinaNet, leave it out on both sides). Masks are
compared as binary masks: a probability map becomes one with ``>= 0.5``, the convention of
segfpn, detectron2 and torchvision's documentation, and every caller must binarise the same way
(with ``> 0.5`` exact 0.5 ties on pasted edges flip whole rows of pixels).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch

from segfpn.model.mask_head import box_resize_boxes, paste_masks

#: Mask probabilities at or above this are foreground.
MASK_THRESHOLD = 0.5


@dataclass(frozen=True, kw_only=True)
class Tolerances:
    """What "the same detection" means: same class, box IoU at least ``box_iou``, scores within
    ``score_atol``, mask IoU at least ``mask_iou`` (when there are masks)."""

    box_iou: float = 0.99
    score_atol: float = 1e-3
    mask_iou: float = 0.98


@dataclass
class Agreement:
    """The figures of one comparison; every reference detection is matched to the detection of
    ours with the same class and the highest box IoU.

    ``matched``: reference detections whose match passes every tolerance. ``paste_rounding``:
    ones that pass the box and score tolerances and whose masks differ only because the paste
    box is truncated to whole pixels (torchvision's ``paste_masks_in_image``) and the two nearly
    equal boxes fall on either side of an integer: our mask probabilities pasted into the
    reference's box pass the mask tolerance. ``loose``: same class and box IoU >= 0.5 (what
    a lower precision still keeps), with the median score difference and mask IoU among those.
    The minima and maxima are over all reference detections (None without detections, and
    the mask figures None without masks).
    """

    detections: int
    ours: int
    matched: int
    paste_rounding: int
    loose: int
    min_box_iou: float | None
    max_score_diff: float | None
    min_mask_iou: float | None
    median_mask_iou: float | None
    loose_median_score_diff: float | None = None
    loose_median_mask_iou: float | None = None

    @property
    def ok(self) -> bool:
        """Every reference detection is matched (up to paste rounding), none is extra."""
        return self.ours == self.detections and self.matched + self.paste_rounding == self.detections

    def to_dict(self) -> dict:
        return {**asdict(self), "ok": self.ok}


#: Two empty boxes (no area: RetinaNet keeps boxes clipped flat against an image edge) are the
#: same box when their corners are this close, in pixels.
EMPTY_BOX_ATOL = 1e-2


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """float64 [N, M] IoU of xyxy boxes a [N, 4] and b [M, 4]; for two empty boxes, 1 where
    their corners agree to :data:`EMPTY_BOX_ATOL`, else 0."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    wh = np.clip(rb - lt, 0, None)
    inter = wh[..., 0] * wh[..., 1]
    union = area_a[:, None] + area_b[None, :] - inter
    iou = inter / np.maximum(union, 1e-12)
    empty = (area_a[:, None] <= 0) & (area_b[None, :] <= 0)
    if empty.any():
        same = np.abs(a[:, None, :] - b[None, :, :]).max(axis=-1) <= EMPTY_BOX_ATOL
        iou = np.where(empty, same.astype(np.float64), iou)
    return iou


def mask_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """float64 [N] IoU of paired bool masks a, b [N, H, W]; 1 where both are empty."""
    inter = (a & b).sum(axis=(1, 2))
    union = (a | b).sum(axis=(1, 2))
    return np.where(union > 0, inter / np.maximum(union, 1), 1.0)


def truncated_paste_boxes(boxes: np.ndarray, mask_size: int = 28) -> np.ndarray:
    """int64 [N, 4]: the whole-pixel boxes torchvision pastes M x M masks into (each box grown
    by (M + 2) / M around its centre in float32, then truncated)."""
    return box_resize_boxes(torch.from_numpy(np.asarray(boxes, np.float32)), mask_size).numpy()


def compare_detections(reference: dict, ours: dict, *, tolerances: Tolerances = Tolerances()) -> Agreement:
    """Match every detection of ``reference`` to one of ``ours`` and measure the match.

    ``ours`` may carry ``mask_probs`` float [N, M, M] (the mask head's probabilities before
    pasting); then a detection whose only difference is a paste box one
    pixel off (see :class:`Agreement`) counts as ``paste_rounding``. Without ``masks`` on both
    sides the detections are matched on class, box and score alone; on one side only, it is a
    ValueError (a box-only model compared with one with masks).
    """
    with_masks = reference.get("masks") is not None
    if with_masks != (ours.get("masks") is not None):
        side = "the reference" if with_masks else "ours"
        raise ValueError(f"only {side} has masks: compare a box-only model with one with masks on boxes alone "
                         "(leave 'masks' out of both)")
    n, m = len(reference["scores"]), len(ours["scores"])
    if n == 0 or m == 0:
        return Agreement(detections=n, ours=m, matched=0, paste_rounding=0, loose=0, min_box_iou=None,
                         max_score_diff=None, min_mask_iou=None, median_mask_iou=None)
    same_class = np.asarray(reference["labels"])[:, None] == np.asarray(ours["labels"])[None, :]
    iou = box_iou(reference["boxes"], ours["boxes"]) * same_class
    match = iou.argmax(axis=1)
    best = iou[np.arange(n), match]
    score_diff = np.abs(np.asarray(ours["scores"], np.float64)[match] - np.asarray(reference["scores"], np.float64))
    box_ok = (best >= tolerances.box_iou) & (score_diff <= tolerances.score_atol)
    loose = best >= 0.5
    if not with_masks:
        return Agreement(detections=n, ours=m, matched=int(box_ok.sum()), paste_rounding=0, loose=int(loose.sum()),
                         min_box_iou=float(best.min()), max_score_diff=float(score_diff.max()), min_mask_iou=None,
                         median_mask_iou=None,
                         loose_median_score_diff=float(np.median(score_diff[loose])) if loose.any() else None)
    ref_masks, our_masks = np.asarray(reference["masks"]), np.asarray(ours["masks"])[match]
    masks_iou = mask_iou(ref_masks, our_masks)
    matched = box_ok & (masks_iou >= tolerances.mask_iou)
    rounding = np.zeros(n, dtype=bool)
    if ours.get("mask_probs") is not None:
        moved = np.any(truncated_paste_boxes(reference["boxes"]) != truncated_paste_boxes(ours["boxes"][match]), axis=1)
        for i in np.nonzero(box_ok & ~matched & moved)[0]:
            repasted = _paste(ours["mask_probs"][match[i]], reference["boxes"][i], ref_masks.shape[1:])
            rounding[i] = mask_iou(repasted[None], ref_masks[i][None])[0] >= tolerances.mask_iou
    return Agreement(detections=n, ours=m, matched=int(matched.sum()), paste_rounding=int(rounding.sum()),
                     loose=int(loose.sum()), min_box_iou=float(best.min()),
                     max_score_diff=float(score_diff.max()), min_mask_iou=float(masks_iou.min()),
                     median_mask_iou=float(np.median(masks_iou)),
                     loose_median_score_diff=float(np.median(score_diff[loose])) if loose.any() else None,
                     loose_median_mask_iou=float(np.median(masks_iou[loose])) if loose.any() else None)


def _paste(mask_probs: np.ndarray, box: np.ndarray, image_size: tuple[int, int]) -> np.ndarray:
    """bool [H, W]: one M x M probability map pasted torchvision's way into ``box``."""
    probs = torch.from_numpy(np.asarray(mask_probs, np.float32)[None])
    return paste_masks(probs, torch.from_numpy(np.asarray(box, np.float32)[None]), tuple(image_size),
                       method="box_resize", threshold=MASK_THRESHOLD)[0].numpy()
