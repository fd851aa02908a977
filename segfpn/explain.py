"""The pyramid, explained: why each detection reads the level it reads, and what changes if it does not.

* :class:`Inspection`: one image run through a two-stage model (Faster / Mask R-CNN, Panoptic
  FPN) with what its RoI heads need kept: the pyramid, the proposals, the detections in network
  pixels, the level rule of the run, and the :class:`~segfpn.structures.Result`. Made by
  :meth:`Predictor.inspect <segfpn.predictor.Predictor.inspect>`.
* :func:`explain_detection` -> :class:`DetectionExplanation`: one detection level by level (the
  rule worked out for its box RoI and its mask RoI, the RoIAlign grids of its level and the levels
  below and above, the mean |activation| inside its box on every level, its 28x28 mask).
* :func:`what_if` -> :class:`WhatIf`: the RoI heads alone re-run on the kept pyramid with another
  level rule, and every detection compared with the original one.
* :func:`track_objects` -> :class:`ScaleSweep`: the detections of one image at several input
  sizes, each object followed across the sizes by box IoU.

The entry points are :class:`~segfpn.predictor.Predictor` methods (``inspect``, ``explain``,
``what_if``, ``scale_sweep``, ``level_metrics``); everything returned is numbers and small numpy
arrays in dataclasses. Boxes are xyxy; "network pixels" are those of the resized input the model saw.
"""

from __future__ import annotations

import dataclasses
import math
import time
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from segfpn.config import ModelConfig, PoolerConfig
from segfpn.evaluation.agreement import Tolerances, box_iou
from segfpn.model.levels import level_number, level_stride
from segfpn.model.network import StageClock
from segfpn.model.poolers import assign_levels
from segfpn.model.postprocess import boxes_to_image
from segfpn.model.roi_align import roi_align
from segfpn.model.roi_heads import InstanceOutputs
from segfpn.model.rpn import Proposals
from segfpn.structures import InstanceMasks, Instances, Result
from segfpn.viz.activations import pca_components

#: What "the same detection" means in a what-if diff: segfpn's one definition (same class, box IoU
#: >= 0.99, scores within 1e-3, mask IoU >= 0.98), as for parity with the reference libraries.
SAME_DETECTION = Tolerances()
#: A what-if detection of the same class with at least this box IoU is the original one, moved.
MOVED_IOU = 0.5


class NoRoIsError(ValueError):
    """The model has no RoI heads (RetinaNet): there is no RoI level to explain or change."""


def require_roi_heads(config: ModelConfig, what: str) -> None:
    """:class:`NoRoIsError` for a model without RoIs, naming ``what`` was asked."""
    if config.detector != "rcnn":
        raise NoRoIsError(
            f"{what} needs a two-stage model (Faster R-CNN, Mask R-CNN, Panoptic FPN): a {config.detector} has no "
            "RoIs to pool, each detection comes from an anchor of one level (Instances.levels). Per-level "
            "metrics and the scale sweep work for it.")


# ---------------------------------------------------------------------------------------------
# The level rule, worked out


@dataclass(frozen=True)
class LevelRule:
    """k = floor(k0 + log2(sqrt(w h) / s0 + log_eps) + eps), clamped to [min_level, max_level],
    worked out for one box.

    box: xyxy in network pixels; width, height; size = sqrt(w h). canonical_level k0,
    canonical_size s0, level_epsilon eps (torchvision 1e-6), level_log_epsilon log_eps
    (detectron2 1e-8). value: the expression inside the floor, in float32 exactly as the model
    computes it (so ``floor(value)`` is the model's level before clamping, to the bit). level: the
    level the RoI is pooled from.
    """

    box: tuple[float, float, float, float]
    width: float
    height: float
    size: float
    canonical_level: int
    canonical_size: float
    level_epsilon: float
    level_log_epsilon: float
    min_level: int
    max_level: int
    value: float
    level: int

    @property
    def unclamped(self) -> float:
        """floor(value): the level before the clamp (-inf for an empty box)."""
        return float(math.floor(self.value)) if math.isfinite(self.value) else self.value

    @property
    def clamped(self) -> bool:
        """Whether the clamp to [min_level, max_level] changed the level."""
        return self.unclamped != self.level

    def text(self) -> str:
        """The rule with this box's numbers, e.g. "k = ⌊4 + log2(√(150.0 × 80.0) / 224)⌋ =
        ⌊4 + log2(109.5 / 224)⌋ = ⌊2.968⌋ = 2"."""
        log_eps = f" + {self.level_log_epsilon:g}" if self.level_log_epsilon else ""
        eps = f" + {self.level_epsilon:g}" if self.level_epsilon else ""
        k0, s0 = self.canonical_level, f"{self.canonical_size:g}"
        text = (f"k = ⌊{k0} + log2(√({self.width:.1f} × {self.height:.1f}) / {s0}{log_eps}){eps}⌋ = "
                f"⌊{k0} + log2({self.size:.1f} / {s0}{log_eps}){eps}⌋ = ⌊{_value_text(self.value)}⌋")
        if self.clamped:
            unclamped = "-∞" if not math.isfinite(self.unclamped) else f"{int(self.unclamped)}"
            return f"{text} = {unclamped}, clamped to {self.min_level}…{self.max_level}: p{self.level}"
        return f"{text} = {self.level}: p{self.level}"


def _value_text(value: float) -> str:
    if not math.isfinite(value):
        return "-∞"
    # Near an integer, enough digits to show on which side of it the value lies.
    return f"{value:.7f}" if abs(value - round(value)) < 5e-4 else f"{value:.3f}"


def level_rule_for_box(box, rule: PoolerConfig) -> LevelRule:
    """:class:`LevelRule` of one xyxy box (network pixels) under ``rule``. The level is the model's
    own :func:`~segfpn.model.poolers.assign_levels`; the value is the same float32 arithmetic."""
    boxes = torch.as_tensor(np.asarray(box, dtype=np.float32).reshape(1, 4))
    width, height = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    size = torch.sqrt(width * height)
    value = rule.canonical_level + torch.log2(size / rule.canonical_size + rule.level_log_epsilon) + rule.level_epsilon
    return LevelRule(box=tuple(float(v) for v in boxes[0]), width=float(width), height=float(height),
                     size=float(size), canonical_level=int(rule.canonical_level),
                     canonical_size=float(rule.canonical_size), level_epsilon=float(rule.level_epsilon),
                     level_log_epsilon=float(rule.level_log_epsilon), min_level=int(rule.min_level),
                     max_level=int(rule.max_level), value=float(value), level=int(assign_levels(boxes, rule)[0]))


def changed_rule(rule: PoolerConfig, *, level: int | None = None, canonical_level: int | None = None,
                 canonical_size: float | None = None, levels: Sequence[int] = (2, 3, 4, 5, 6)) -> PoolerConfig:
    """``rule`` with every RoI forced onto ``level`` (min_level = max_level = level), or with
    another k0 / s0. ``levels``: the pyramid levels the model has (a forced level must be one)."""
    if level is not None and (canonical_level is not None or canonical_size is not None):
        raise ValueError("level= puts every RoI on one level, so canonical_level / canonical_size would change "
                         "nothing: give one or the other")
    if level is not None:
        if isinstance(level, bool) or not isinstance(level, (int, np.integer)) or int(level) not in levels:
            raise ValueError(f"level must be one of the pyramid's levels {list(levels)} "
                             f"(p{min(levels)}-p{max(levels)}), got {level!r}")
        return dataclasses.replace(rule, min_level=int(level), max_level=int(level))
    changes = {}
    if canonical_level is not None:
        if isinstance(canonical_level, bool) or not isinstance(canonical_level, (int, np.integer)) \
                or not -8 <= int(canonical_level) <= 16:
            raise ValueError(f"canonical_level (k0) must be a whole number from -8 to 16, got {canonical_level!r}")
        changes["canonical_level"] = int(canonical_level)
    if canonical_size is not None:
        try:
            size = float(canonical_size)
        except (TypeError, ValueError):
            raise ValueError(f"canonical_size (s0) must be a number of pixels, got {canonical_size!r}") from None
        if not (math.isfinite(size) and 1.0 <= size <= 1e5):
            raise ValueError(f"canonical_size (s0) must be from 1 to 100000 pixels, got {canonical_size!r}")
        changes["canonical_size"] = size
    return dataclasses.replace(rule, **changes)


# ---------------------------------------------------------------------------------------------
# One run, kept


@dataclass(eq=False)
class Inspection:
    """One image run through a two-stage model, with what its RoI heads need kept.

    result: the :class:`~segfpn.structures.Result` of the run (image pixels).
    pyramid: {"p2".."p6"} -> [1, D, h_l, w_l] tensors on the model's device, in the run's dtype.
    proposals: the RPN's :class:`~segfpn.model.rpn.Proposals` (network pixels).
    detections: the RoI heads' :class:`~segfpn.model.roi_heads.InstanceOutputs` (network pixels).
    result_index: int64 [N]: the index into ``detections`` of each of ``result.instances`` (the
    same unless the model drops boxes emptied by clipping to the image).
    rule: the level rule of the run (the model's own; :meth:`Predictor.what_if` changes it from there).
    proposal_index: int64 [len(detections)]: the proposal each of ``detections`` came from.
    Made by :meth:`Predictor.inspect`; ``Predictor.explain`` / ``what_if`` take it, so this holds
    data only (no model: a session can keep it).
    """

    result: Result
    pyramid: dict[str, torch.Tensor]
    proposals: Proposals
    detections: InstanceOutputs
    result_index: np.ndarray
    rule: PoolerConfig
    model: weakref.ref = field(repr=False)
    proposal_index: np.ndarray = field(repr=False)
    mean_abs_maps: dict[str, np.ndarray] = field(default_factory=dict, repr=False)

    @classmethod
    def from_outputs(cls, result: Result, outputs, *, rule: PoolerConfig, model,
                     clip_boxes_to_image: bool) -> Inspection:
        """The inspection of image 0 of ``outputs`` (:class:`~segfpn.model.detector.NetworkOutputs`)."""
        detections = outputs.instances[0]
        # The result lacks the boxes that clipping to the image left empty (postprocess_instances).
        _, keep = boxes_to_image(detections.boxes, result.input_size, result.image_size, clip=clip_boxes_to_image)
        index = np.arange(len(detections.boxes), dtype=np.int64)
        if keep is not None:
            index = index[keep.cpu().numpy()]
        return cls(result=result, pyramid={k: v[:1] for k, v in outputs.pyramid.items()},
                   proposals=outputs.proposals[0], detections=detections, result_index=index, rule=rule,
                   model=weakref.ref(model), proposal_index=detections.proposal_index.cpu().numpy())

    @property
    def input_size(self) -> tuple[int, int]:
        return tuple(self.result.input_size)

    @property
    def image_size(self) -> tuple[int, int]:
        return tuple(self.result.image_size)

    @property
    def levels(self) -> list[int]:
        """The pyramid's levels, e.g. [2, 3, 4, 5, 6]."""
        return sorted(level_number(name) for name in self.pyramid)

    @property
    def input_boxes(self) -> np.ndarray:
        """float32 [N, 4]: ``result.instances.boxes`` in network pixels (the mask RoIs), as the
        RoI heads gave them."""
        return self.detections.boxes.float().cpu().numpy()[self.result_index]

    def sizes(self) -> np.ndarray:
        """float32 [N]: sqrt(w h) of each detection's box in network pixels, the number the level
        rule reads (float32, as the model computes it)."""
        boxes = self.input_boxes
        return np.sqrt((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]))

    def rows(self) -> list[dict]:
        """One row per detection for a table: ``{"index", "class_name", "score", "size" (sqrt(wh),
        network pixels), "level", "box_level"}``."""
        instances = self.result.instances
        names = instances.names
        return [{"index": i, "class_name": names[i], "score": float(instances.scores[i]), "size": float(size),
                 "level": int(instances.levels[i]), "box_level": int(instances.box_levels[i])}
                for i, size in enumerate(self.sizes().tolist())]

    def mean_abs(self, level: int) -> np.ndarray:
        """float32 [h_l, w_l]: mean over channels of |p_level|, computed once per level (the
        inspector's "mean |activation|" before normalising, and what :func:`explain_detection`
        averages inside a box)."""
        name = f"p{level}"
        if name not in self.mean_abs_maps:
            with torch.inference_mode():
                self.mean_abs_maps[name] = self.pyramid[name][0].float().abs().mean(dim=0).cpu().numpy()
        return self.mean_abs_maps[name]

    def check_model(self, model) -> None:
        """ValueError unless ``model`` made this inspection."""
        if self.model() is not model:
            raise ValueError("this inspection was made by another model (or one since reloaded): "
                             "inspect the image again with this one")


# ---------------------------------------------------------------------------------------------
# One detection, level by level


@dataclass
class RoIGrids:
    """One RoI pooled by RoIAlign from its level and the levels below and above it, per cell.

    levels: int64 [L], fine to coarse: the RoI's own level and the pyramid's levels next to it.
    own: index into ``levels`` of the level the RoI was pooled from.
    mean_abs: float32 [L, S, S]: mean over channels of |feature| in each cell.
    value_range: (min, max) of ``mean_abs`` over every level: one colour scale for all of them.
    pca: float32 [L, S, S, 3]: each cell's feature vector on the first three principal components
    of the L x S x S cells together (one basis, so colours compare across levels).
    pca_range: float32 [3, 2]: (min, max) of each component over every level.
    """

    levels: np.ndarray
    own: int
    mean_abs: np.ndarray
    value_range: tuple[float, float]
    pca: np.ndarray
    pca_range: np.ndarray

    @property
    def size(self) -> int:
        return int(self.mean_abs.shape[-1])


@dataclass
class DetectionExplanation:
    """Detection ``index`` of an :class:`Inspection`, level by level.

    label, class_name, score; box: float32 [4] in image pixels; input_box: float32 [4] the same
    box in network pixels, which the mask head pooled (the "mask RoI"); proposal_box: float32 [4]
    the RPN proposal the box head classified (the "box RoI"), network pixels.
    level / box_level: the levels of the mask RoI and of the box RoI (``Instances.levels`` /
    ``box_levels``); mask_rule / box_rule: the rule worked out for each (:class:`LevelRule`).
    box_grids: the 7x7 RoIAlign grids of the box RoI on box_level and its neighbours;
    mask_grids: the 14x14 grids of the mask RoI on its level and its neighbours (None for a model
    without a mask head).
    pyramid_levels: int64 [P] every level of the pyramid (2..6); box_activation: float32 [P] mean
    |activation| of each level inside ``input_box`` (cells weighted by their overlap with it;
    :meth:`Inspection.mean_abs` is the whole map).
    mask_probs: float32 [M, M] the mask head's probabilities for its class before pasting (None
    without a mask head). input_size / image_size: (h, w) / (H, W).
    """

    index: int
    label: int
    class_name: str
    score: float
    box: np.ndarray
    input_box: np.ndarray
    proposal_box: np.ndarray
    level: int
    box_level: int
    mask_rule: LevelRule
    box_rule: LevelRule
    box_grids: RoIGrids
    mask_grids: RoIGrids | None
    pyramid_levels: np.ndarray
    box_activation: np.ndarray
    mask_probs: np.ndarray | None
    input_size: tuple[int, int]
    image_size: tuple[int, int]

    @property
    def size(self) -> float:
        """sqrt(w h) of the box in network pixels (the number the level rule reads)."""
        return self.mask_rule.size


def explain_detection(inspection: Inspection, index: int, *, config: ModelConfig) -> DetectionExplanation:
    """:class:`DetectionExplanation` of detection ``index`` of ``inspection.result.instances``,
    made by a model of ``config``: numpy and RoIAlign on what the inspection kept, no heads run."""
    instances = inspection.result.instances
    if isinstance(index, bool) or not isinstance(index, (int, np.integer)) or not 0 <= int(index) < len(instances):
        raise IndexError(f"detection {index!r} does not exist: this image has {len(instances)} detections "
                         f"(0..{len(instances) - 1})")
    index = int(index)
    j = int(inspection.result_index[index])
    proposal_box = inspection.proposals.boxes[int(inspection.proposal_index[j])].float().cpu().numpy()
    input_box = inspection.detections.boxes[j].float().cpu().numpy()
    rule = inspection.rule
    box_rule = level_rule_for_box(proposal_box, rule)
    mask_rule = level_rule_for_box(input_box, rule)
    box_level, level = int(instances.box_levels[index]), int(instances.levels[index])
    box_grids = roi_grids(inspection.pyramid, proposal_box, level=box_level,
                          output_size=config.box_head.pooler_resolution, rule=rule)
    mask_grids = None
    if config.mask_head is not None:
        mask_grids = roi_grids(inspection.pyramid, input_box, level=level,
                               output_size=config.mask_head.pooler_resolution, rule=rule)
    levels = np.asarray(inspection.levels, dtype=np.int64)
    activation = np.asarray([box_mean(inspection.mean_abs(k), input_box, stride=level_stride(f"p{k}")) for k in levels],
                            dtype=np.float32)
    return DetectionExplanation(
        index=index, label=int(instances.labels[index]), class_name=instances.names[index],
        score=float(instances.scores[index]), box=np.asarray(instances.boxes[index], dtype=np.float32),
        input_box=input_box, proposal_box=proposal_box, level=level, box_level=box_level, mask_rule=mask_rule,
        box_rule=box_rule, box_grids=box_grids, mask_grids=mask_grids, pyramid_levels=levels,
        box_activation=activation,
        mask_probs=None if instances.mask_probs is None else np.asarray(instances.mask_probs[index], np.float32),
        input_size=inspection.input_size, image_size=inspection.image_size)


def roi_grids(pyramid: dict[str, torch.Tensor], box: np.ndarray, *, level: int, output_size: int,
              rule: PoolerConfig) -> RoIGrids:
    """:class:`RoIGrids` of one xyxy ``box`` (network pixels) pooled, with ``rule``'s RoIAlign
    settings, from ``level`` and the pyramid levels directly below and above it."""
    available = sorted(level_number(name) for name in pyramid)
    levels = [k for k in (level - 1, level, level + 1) if k in available]
    first = pyramid[f"p{levels[0]}"]
    roi = torch.tensor([[0.0, *(float(v) for v in box)]], dtype=torch.float32, device=first.device)
    with torch.inference_mode():
        pooled = torch.stack([roi_align(pyramid[f"p{k}"].float(), roi, output_size,
                                        spatial_scale=1.0 / level_stride(f"p{k}"),
                                        sampling_ratio=rule.sampling_ratio, aligned=rule.aligned)[0]
                              for k in levels])  # [L, C, S, S]
    features = pooled.cpu().numpy().astype(np.float32)
    mean_abs = np.abs(features).mean(axis=1)
    num_levels, channels, s, _ = features.shape
    # One PCA basis over every cell of every level: the levels side by side as one [C, S, L*S] map.
    side_by_side = features.transpose(1, 2, 0, 3).reshape(channels, s, num_levels * s)
    pca = pca_components(side_by_side).reshape(s, num_levels, s, 3).transpose(1, 0, 2, 3)
    pca = np.ascontiguousarray(pca, dtype=np.float32)
    pca_range = np.stack([pca.reshape(-1, 3).min(axis=0), pca.reshape(-1, 3).max(axis=0)], axis=1)
    return RoIGrids(levels=np.asarray(levels, dtype=np.int64), own=levels.index(level), mean_abs=mean_abs,
                    value_range=(float(mean_abs.min()), float(mean_abs.max())), pca=pca,
                    pca_range=pca_range.astype(np.float32))


def box_mean(values: np.ndarray, box: np.ndarray, *, stride: int) -> float:
    """Mean of a map ``values`` float [h, w] of stride ``stride`` inside the xyxy ``box`` (network
    pixels), each cell weighted by the fraction of it the box covers; NaN for a box off the map."""
    h, w = values.shape
    x0, y0, x1, y1 = (float(v) / stride for v in box)
    c0, c1 = max(math.floor(x0), 0), min(math.ceil(x1), w)
    r0, r1 = max(math.floor(y0), 0), min(math.ceil(y1), h)
    if c1 <= c0 or r1 <= r0:
        return float("nan")
    cols = np.arange(c0, c1, dtype=np.float64)
    rows = np.arange(r0, r1, dtype=np.float64)
    wx = np.clip(np.minimum(cols + 1, x1) - np.maximum(cols, x0), 0, 1)
    wy = np.clip(np.minimum(rows + 1, y1) - np.maximum(rows, y0), 0, 1)
    total = wy.sum() * wx.sum()
    if total <= 0:
        return float("nan")
    return float(wy @ values[r0:r1, c0:c1].astype(np.float64) @ wx / total)


# ---------------------------------------------------------------------------------------------
# What if it read another level


@dataclass
class WhatIf:
    """The RoI heads re-run on an :class:`Inspection`'s pyramid with another level ``rule``, and
    every detection compared with the original run's.

    instances: the re-run's detections (image pixels, masks pasted).
    Per original detection (index into the inspection's ``result.instances``), [N]:
    status: "kept" (the same detection: same class, box IoU >= 0.99, score within 1e-3, mask IoU
    >= 0.98), "moved" (a detection of the same class with box IoU >= 0.5, but changed) or "lost";
    match: int64, its detection in ``instances`` (-1 when lost); box_iou, mask_iou, score_change
    (new - old): float32, NaN when lost (mask_iou also without masks); level_before / level_after:
    int64, the mask RoI's level before and after (-1 when lost).
    Per re-run detection, [M]: new_status ("kept", "moved", or "new": no original matches it) and
    new_match (int64 index into the original detections, -1 for "new").
    Matching is one-to-one, the originals in score order, each to the unmatched re-run detection
    of its class with the highest box IoU. counts: detections per status ("kept", "moved", "lost",
    "new"). seconds: the whole call; timings: "heads" (RoI heads only), "postprocess" (boxes to
    the image, masks pasted), "diff".
    """

    rule: PoolerConfig
    instances: Instances
    original: Instances = field(repr=False)
    status: np.ndarray
    match: np.ndarray
    box_iou: np.ndarray
    mask_iou: np.ndarray
    score_change: np.ndarray
    level_before: np.ndarray
    level_after: np.ndarray
    new_status: np.ndarray
    new_match: np.ndarray
    counts: dict[str, int]
    seconds: float
    timings: dict[str, float]

    def rows(self) -> list[dict]:
        """One row per original detection, then one per new detection, for a diff table:
        ``{"index", "new_index", "status", "class_name", "score_before", "score_after",
        "level_before", "level_after", "box_iou", "mask_iou"}`` (None where it does not apply)."""
        rows = []
        for i, status in enumerate(self.status.tolist()):
            j = int(self.match[i])
            rows.append({"index": i, "new_index": j if j >= 0 else None, "status": status,
                         "class_name": self.original.names[i], "score_before": float(self.original.scores[i]),
                         "score_after": float(self.instances.scores[j]) if j >= 0 else None,
                         "level_before": int(self.level_before[i]),
                         "level_after": int(self.level_after[i]) if j >= 0 else None,
                         "box_iou": _or_none(self.box_iou[i]), "mask_iou": _or_none(self.mask_iou[i])})
        for j in np.flatnonzero(self.new_status == "new").tolist():
            rows.append({"index": None, "new_index": j, "status": "new", "class_name": self.instances.names[j],
                         "score_before": None, "score_after": float(self.instances.scores[j]), "level_before": None,
                         "level_after": int(self.instances.levels[j]), "box_iou": None, "mask_iou": None})
        return rows


def _or_none(value) -> float | None:
    return None if np.isnan(value) else float(value)


def what_if(inspection: Inspection, rule: PoolerConfig, *, run_heads, to_instances) -> WhatIf:
    """The RoI heads re-run on ``inspection`` with ``rule``, diffed against the original.

    run_heads: ``rule -> InstanceOutputs`` (the predictor's model.detect on the kept pyramid and
    proposals, under its precision); to_instances: ``InstanceOutputs -> Instances`` (the
    predictor's conversion to image pixels). Both come from the predictor
    (:meth:`Predictor.what_if <segfpn.predictor.Predictor.what_if>`).
    """
    timings = {}
    start = time.perf_counter()
    clock = StageClock(timings, next(iter(inspection.pyramid.values())).device)
    outputs = run_heads(rule)
    clock.lap("heads")
    instances = to_instances(outputs)
    clock.lap("postprocess")
    diff = diff_detections(inspection.result.instances, instances)
    clock.lap("diff")
    return WhatIf(rule=rule, instances=instances, original=inspection.result.instances, **diff,
                  seconds=time.perf_counter() - start, timings=timings)


def diff_detections(before: Instances, after: Instances) -> dict:
    """The fields of :class:`WhatIf` that compare ``after`` with ``before`` (see there)."""
    n, m = len(before), len(after)
    match = np.full(n, -1, dtype=np.int64)
    new_match = np.full(m, -1, dtype=np.int64)
    ious = np.zeros((n, m)) if not (n and m) else box_iou(before.boxes, after.boxes)
    if n and m:
        ious = np.where(np.asarray(before.labels)[:, None] == np.asarray(after.labels)[None, :], ious, -1.0)
    for i in np.argsort(-np.asarray(before.scores, dtype=np.float64), kind="stable"):
        if not m:
            break
        row = np.where(new_match < 0, ious[i], -1.0)
        j = int(np.argmax(row))
        if row[j] >= MOVED_IOU:
            match[i], new_match[j] = j, i
    found = match >= 0
    box = np.full(n, np.nan, dtype=np.float32)
    mask = np.full(n, np.nan, dtype=np.float32)
    score = np.full(n, np.nan, dtype=np.float32)
    after_level = np.full(n, -1, dtype=np.int64)
    with_masks = before.masks is not None and after.masks is not None
    for i in np.flatnonzero(found):
        j = match[i]
        box[i] = ious[i, j]
        score[i] = float(after.scores[j]) - float(before.scores[i])
        after_level[i] = int(after.levels[j])
        if with_masks:
            mask[i] = paired_mask_iou(before.masks, i, after.masks, j)
    same = found & (box >= SAME_DETECTION.box_iou) & (np.abs(score) <= SAME_DETECTION.score_atol)
    if with_masks:
        same &= mask >= SAME_DETECTION.mask_iou
    status = np.where(same, "kept", np.where(found, "moved", "lost")).astype("<U5")
    new_status = np.full(m, "new", dtype="<U5")
    for i in np.flatnonzero(found):
        new_status[match[i]] = status[i]
    counts = {name: int(np.count_nonzero(status == name)) for name in ("kept", "moved", "lost")}
    counts["new"] = int(np.count_nonzero(new_status == "new"))
    return dict(status=status, match=match, box_iou=box, mask_iou=mask, score_change=score,
                level_before=np.asarray(before.levels, dtype=np.int64), level_after=after_level,
                new_status=new_status, new_match=new_match, counts=counts)


def paired_mask_iou(a: InstanceMasks, i: int, b: InstanceMasks, j: int) -> float:
    """IoU of mask ``i`` of ``a`` and mask ``j`` of ``b`` (same image), from their crops alone;
    1.0 when both are empty."""
    area_a, area_b = int(np.count_nonzero(a.crops[i])), int(np.count_nonzero(b.crops[j]))
    ay0, ay1, ax0, ax1 = (int(v) for v in a.regions[i])
    by0, by1, bx0, bx1 = (int(v) for v in b.regions[j])
    y0, y1, x0, x1 = max(ay0, by0), min(ay1, by1), max(ax0, bx0), min(ax1, bx1)
    inter = 0
    if y1 > y0 and x1 > x0:
        inter = int(np.count_nonzero(a.crops[i][y0 - ay0:y1 - ay0, x0 - ax0:x1 - ax0]
                                     & b.crops[j][y0 - by0:y1 - by0, x0 - bx0:x1 - bx0]))
    union = area_a + area_b - inter
    return inter / union if union else 1.0


# ---------------------------------------------------------------------------------------------
# Scale sweep


@dataclass
class ScaleSweep:
    """One image's detections at several input sizes, each object followed across the sizes.

    sizes: int64 [S], the shorter side of the network input asked for, ascending; input_sizes:
    int64 [S, 2] (h, w) as run (the model's resize arithmetic may floor the shorter side one pixel
    below the size asked for); seconds: float64 [S] per run.
    Only detections scoring at least ``score_threshold`` count. counts: int64 [S] detections per
    size; levels: int64 [L] the model's levels (e.g. 2..5); level_counts: int64 [S, L];
    level_shares: float64 [S, L], each row summing to 1 (0 without detections).
    Tracks (T objects): an object is a chain of detections of one class, each at a larger size
    matched to the track's latest box by box IoU >= ``iou_threshold`` in image pixels (one-to-one,
    highest IoU first; an object missed at one size keeps its track). track_labels int64 [T];
    track_names [T]; track_levels int64 [T, S] (-1 where not detected); track_scores float32
    [T, S] and track_boxes float32 [T, S, 4] (image pixels; NaN where not detected). Tracks are
    ordered by the size they first appear at, then by score.
    """

    sizes: np.ndarray
    input_sizes: np.ndarray
    seconds: np.ndarray
    counts: np.ndarray
    levels: np.ndarray
    level_counts: np.ndarray
    level_shares: np.ndarray
    track_labels: np.ndarray
    track_names: list[str]
    track_levels: np.ndarray
    track_scores: np.ndarray
    track_boxes: np.ndarray
    score_threshold: float
    iou_threshold: float

    @property
    def num_tracks(self) -> int:
        return int(self.track_labels.shape[0])


#: The longest side a scale-sweep run may have, in network pixels (a 4096 x 4096 input takes
#: minutes on a CPU and gigabytes of pyramid).
MAX_SWEEP_SIDE = 4096
#: The smallest shorter side a scale-sweep run may have (the coarsest level must keep a cell).
MIN_SWEEP_SIDE = 64


def sweep_sizes(sizes: Sequence[int], image_size: tuple[int, int]) -> list[int]:
    """``sizes`` (shorter sides of the network input) checked, unique and ascending, for an image
    of ``image_size`` (H, W): whole numbers from :data:`MIN_SWEEP_SIDE`, with the longer side at
    most :data:`MAX_SWEEP_SIDE`."""
    try:
        values = list(sizes)
    except TypeError:
        raise ValueError(f"sizes must be a list of whole numbers, got {sizes!r}") from None
    if not values:
        raise ValueError("sizes is empty: give at least one shorter side, e.g. [400, 800, 1200]")
    bad = [v for v in values if isinstance(v, bool) or not isinstance(v, (int, np.integer))]
    if bad:
        raise ValueError(f"sizes must be whole numbers of pixels, got {bad[:5]}")
    aspect = max(image_size) / max(min(image_size), 1)
    largest = int(MAX_SWEEP_SIDE / aspect)
    wrong = [int(v) for v in values if not MIN_SWEEP_SIDE <= int(v) <= largest]
    if wrong:
        raise ValueError(f"sizes {wrong[:5]} are out of range: for this {image_size[1]}x{image_size[0]} image the "
                         f"shorter side can be {MIN_SWEEP_SIDE} to {largest} px (the longer at most {MAX_SWEEP_SIDE})")
    return sorted({int(v) for v in values})


def default_sweep_sizes(min_size: int) -> list[int]:
    """Nine shorter sides, evenly from half to one and a half times the model's ``min_size`` (400,
    500, ..., 1200 for the COCO models' 800), none below :data:`MIN_SWEEP_SIDE`."""
    return sorted({max(MIN_SWEEP_SIDE, round(float(min_size * f))) for f in np.linspace(0.5, 1.5, 9)})


def track_objects(instances: Sequence[Instances], *, sizes: Sequence[int], input_sizes: Sequence[tuple[int, int]],
                  seconds: Sequence[float], levels: Sequence[int], score_threshold: float = 0.5,
                  iou_threshold: float = 0.5) -> ScaleSweep:
    """:class:`ScaleSweep` of the ``instances`` found at each of ``sizes`` (ascending, image
    pixels of one image), ``levels`` being the model's levels."""
    if not (len(instances) == len(sizes) == len(input_sizes) == len(seconds)):
        raise ValueError("one set of instances, input size and time per size is needed")
    num_sizes = len(sizes)
    levels = np.asarray(list(levels), dtype=np.int64)
    kept = [inst.select(np.flatnonzero(np.asarray(inst.scores) >= score_threshold)) for inst in instances]
    level_counts = np.asarray([[int(np.count_nonzero(np.asarray(k.levels) == level)) for level in levels]
                               for k in kept], dtype=np.int64).reshape(num_sizes, len(levels))
    counts = np.asarray([len(k) for k in kept], dtype=np.int64)
    shares = level_counts / np.maximum(counts, 1)[:, None]

    labels, names, track_levels, track_scores, track_boxes, last_box = [], [], [], [], [], []
    for s, inst in enumerate(kept):
        taken = np.zeros(len(inst), dtype=bool)
        if labels and len(inst):
            ious = box_iou(np.asarray(last_box), inst.boxes)
            ious = np.where(np.asarray(labels)[:, None] == np.asarray(inst.labels)[None, :], ious, -1.0)
            free_tracks = np.ones(len(labels), dtype=bool)
            # Highest IoU first, one-to-one.
            for flat in np.argsort(-ious, axis=None, kind="stable"):
                t, d = divmod(int(flat), len(inst))
                if ious[t, d] < iou_threshold:
                    break
                if free_tracks[t] and not taken[d]:
                    free_tracks[t], taken[d] = False, True
                    _record(t, s, inst, d, track_levels, track_scores, track_boxes, last_box)
        for d in sorted(np.flatnonzero(~taken), key=lambda d: -float(inst.scores[d])):
            labels.append(int(inst.labels[d]))
            names.append(inst.class_names[int(inst.labels[d])])
            track_levels.append(np.full(num_sizes, -1, dtype=np.int64))
            track_scores.append(np.full(num_sizes, np.nan, dtype=np.float32))
            track_boxes.append(np.full((num_sizes, 4), np.nan, dtype=np.float32))
            last_box.append(None)
            _record(len(labels) - 1, s, inst, d, track_levels, track_scores, track_boxes, last_box)
    num_tracks = len(labels)
    return ScaleSweep(
        sizes=np.asarray(sizes, dtype=np.int64), input_sizes=np.asarray(input_sizes, dtype=np.int64).reshape(-1, 2),
        seconds=np.asarray(seconds, dtype=np.float64), counts=counts, levels=levels, level_counts=level_counts,
        level_shares=shares, track_labels=np.asarray(labels, dtype=np.int64), track_names=names,
        track_levels=np.asarray(track_levels, dtype=np.int64).reshape(num_tracks, num_sizes),
        track_scores=np.asarray(track_scores, dtype=np.float32).reshape(num_tracks, num_sizes),
        track_boxes=np.asarray(track_boxes, dtype=np.float32).reshape(num_tracks, num_sizes, 4),
        score_threshold=float(score_threshold), iou_threshold=float(iou_threshold))


def _record(t, s, inst, d, track_levels, track_scores, track_boxes, last_box) -> None:
    track_levels[t][s] = int(inst.levels[d])
    track_scores[t][s] = float(inst.scores[d])
    track_boxes[t][s] = inst.boxes[d]
    last_box[t] = np.asarray(inst.boxes[d], dtype=np.float64)
