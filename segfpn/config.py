"""Model configuration: plain dataclasses, one per stage, keyword-only.

Every behaviour that differs between checkpoint families (torchvision vs detectron2) is a named
field here, never an ``if`` on a file name. ``ARCHITECTURES`` holds the presets that the
checkpoint converters and ``segfpn.load(arch=...)`` use.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from typing import Literal

Norm = Literal["none", "frozen_bn", "bn", "gn"]


@dataclass(frozen=True, kw_only=True)
class InputConfig:
    """How an RGB uint8 image becomes the padded network input.

    ``channel_order``: the order the network expects ("rgb" torchvision, "bgr" detectron2).
    ``pixel_range``: 1.0 divides by 255 first (torchvision), 255.0 keeps 0-255 (detectron2).
    ``pixel_mean`` / ``pixel_std``: in ``channel_order`` and in ``pixel_range`` units.
    ``resize_method``: "torch_bilinear" interpolates the normalised float image (torchvision);
    "pil_bilinear" resizes the uint8 image with PIL before normalising (detectron2).
    ``size_rounding``: "floor" (torchvision) or "round" (detectron2, ``int(x + 0.5)``) for the
    resized side lengths.
    """

    channel_order: Literal["rgb", "bgr"] = "rgb"
    pixel_range: float = 1.0
    pixel_mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    pixel_std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    min_size: int = 800
    max_size: int = 1333
    resize_method: Literal["torch_bilinear", "pil_bilinear"] = "torch_bilinear"
    size_rounding: Literal["floor", "round"] = "floor"
    size_divisibility: int = 32


@dataclass(frozen=True, kw_only=True)
class BackboneConfig:
    """Bottleneck ResNet returning c2-c5 (strides 4, 8, 16, 32).

    ``stride_in_1x1``: MSRA/detectron2 put the stage stride in the first 1x1 conv, torchvision
    in the 3x3 conv. ``bottleneck_channels``: width of res2's bottleneck (doubles per stage).
    """

    depth: Literal[18, 34, 50, 101] = 50
    stem_channels: int = 64
    res2_out_channels: int = 256
    bottleneck_channels: int = 64
    stride_in_1x1: bool = False
    norm: Norm = "frozen_bn"
    norm_eps: float = 1e-5
    norm_groups: int = 32  # for norm="gn"


#: How the FPN makes its levels above the coarsest lateral one:
#: "max_pool_p5": p6 = max-pool of p5, kernel 1, stride 2 (Mask R-CNN, Faster R-CNN);
#: "p6p7_from_p5" / "p6p7_from_c5": RetinaNet's p6 = 3x3 conv, stride 2, of p5 (torchvision v1)
#: or of c5 (torchvision v2, detectron2), and p7 = 3x3 conv, stride 2, of relu(p6).
TopBlock = Literal["max_pool_p5", "p6p7_from_p5", "p6p7_from_c5"]


@dataclass(frozen=True, kw_only=True)
class FPNConfig:
    """Top-down pathway on the bottom-up levels ``in_features`` (a run of "c2".."c5"), giving
    p_l for each, plus the levels of ``top_block``: c2-c5 with "max_pool_p5" make p2-p6 (Mask
    R-CNN), c3-c5 with a "p6p7_*" block make p3-p7 (RetinaNet)."""

    out_channels: int = 256
    norm: Norm = "none"
    norm_groups: int = 32  # for norm="gn"
    in_features: tuple[str, ...] = ("c2", "c3", "c4", "c5")
    top_block: TopBlock = "max_pool_p5"


@dataclass(frozen=True, kw_only=True)
class RPNConfig:
    """Anchors, head and proposal selection.

    ``round_anchors``: torchvision rounds the cell-anchor corners to integers; detectron2 does not.
    ``anchor_arithmetic``: how the cell anchors' sides are computed, which decides the rounding
    of a corner ending in exactly .5 ("float32": torchvision's size * sqrt(ratio) in float32;
    "float64": detectron2's sqrt(size**2 / ratio) in Python floats; see ``cell_anchors``).
    ``nms_score``: what the per-level NMS and the final top-k rank proposals by: torchvision the
    sigmoid "probability" (which ties logits above ~17 at 1.0 in float32), detectron2 the "logit".
    ``min_proposal_size``: proposals narrower or lower than this are dropped (and empty ones always).
    ``strides_from_grid``: torchvision takes each level's anchor stride as padded_size // grid_size
    (61 instead of 64 for p6 of an 800 px input); detectron2 uses the nominal stride.
    """

    anchor_sizes: tuple[int, ...] = (32, 64, 128, 256, 512)
    aspect_ratios: tuple[float, ...] = (0.5, 1.0, 2.0)
    round_anchors: bool = True
    anchor_arithmetic: Literal["float32", "float64"] = "float32"
    anchor_offset: float = 0.0
    strides_from_grid: bool = True
    num_convs: int = 1
    pre_nms_topk: int = 1000
    post_nms_topk: int = 1000
    nms_threshold: float = 0.7
    nms_score: Literal["probability", "logit"] = "probability"
    min_proposal_size: float = 1e-3
    # training
    pre_nms_topk_train: int = 2000
    post_nms_topk_train: int = 2000
    batch_size_per_image: int = 256
    positive_fraction: float = 0.5
    iou_thresholds: tuple[float, float] = (0.3, 0.7)


@dataclass(frozen=True, kw_only=True)
class PoolerConfig:
    """Level-based RoIAlign: k = floor(k0 + log2(sqrt(wh) / s0 + log_eps) + eps), in float32,
    clamped to [min_level, max_level], with k0 = ``canonical_level`` and s0 = ``canonical_size``.

    ``aligned``: detectron2's ROIAlignV2 shifts by half a pixel (True); torchvision does not.
    ``sampling_ratio``: 0 = adaptive (detectron2), torchvision uses 2.
    ``level_epsilon``: added after the log2 (torchvision 1e-6, detectron2 0).
    ``level_log_epsilon``: added inside the log2 (detectron2 1e-8, torchvision 0).
    """

    aligned: bool = False
    sampling_ratio: int = 2
    canonical_level: int = 4
    canonical_size: float = 224.0
    level_epsilon: float = 1e-6
    level_log_epsilon: float = 0.0
    min_level: int = 2
    max_level: int = 5


@dataclass(frozen=True, kw_only=True)
class BoxHeadConfig:
    """Box head and predictor.

    ``background_index``: where the background column sits in the classifier ("first":
    torchvision, "last": detectron2). Box deltas are class-specific for the foreground classes.
    ``min_detection_size``: torchvision drops detections smaller than 0.01 px; detectron2 keeps all.
    ``clip_output_boxes``: detectron2 clips the boxes rescaled to the original image to it and
    drops the empty ones (``detector_postprocess``); torchvision does neither.
    """

    conv_channels: tuple[int, ...] = ()
    fc_channels: tuple[int, ...] = (1024, 1024)
    norm: Norm = "none"
    pooler_resolution: int = 7
    background_index: Literal["first", "last"] = "first"
    box_weights: tuple[float, float, float, float] = (10.0, 10.0, 5.0, 5.0)
    score_threshold: float = 0.05
    nms_threshold: float = 0.5
    detections_per_image: int = 100
    min_detection_size: float = 1e-2
    clip_output_boxes: bool = False
    # training
    batch_size_per_image: int = 512
    positive_fraction: float = 0.25
    iou_threshold: float = 0.5


@dataclass(frozen=True, kw_only=True)
class MaskHeadConfig:
    """Mask head and pasting.

    ``paste_method``: "box_resize" resizes each 28x28 mask to its integer box (torchvision);
    "grid_sample" samples it at every pixel centre (detectron2).
    """

    conv_channels: tuple[int, ...] = (256, 256, 256, 256)
    norm: Norm = "none"
    pooler_resolution: int = 14
    mask_threshold: float = 0.5
    paste_method: Literal["box_resize", "grid_sample"] = "box_resize"


@dataclass(frozen=True, kw_only=True)
class RetinaHeadConfig:
    """RetinaNet's dense head (Lin et al., ICCV 2017) on every pyramid level, its anchors and the
    selection of its detections.

    Anchors: on level i of the pyramid (p3 first), sizes ``anchor_sizes[i] * s`` for each ``s``
    of ``anchor_scales``, each with every aspect ratio (h/w): A = 9 anchors per position.
    ``anchor_size_rounding``: "truncate" makes each size an integer, ``int(x * s)`` (torchvision:
    32, 40, 50), "none" keeps it (detectron2: 32, 40.32, 50.80). ``anchor_order``: how the A
    anchors of a cell are numbered, which the class and box channels follow: "ratio_major"
    (torchvision, a = ratio * S + size) or "size_major" (detectron2, a = size * R + ratio).
    ``round_anchors``, ``anchor_arithmetic``, ``anchor_offset``, ``strides_from_grid``: as in
    :class:`RPNConfig`.

    Head: ``num_convs`` 3x3 convs + ReLU in each of the class and box subnets (shared by every
    level; ``norm`` "gn" in torchvision's v2), then a 3x3 conv to A x ``num_classes`` logits
    (channel a * K + k, sigmoid scores, no background) and one to A x 4 deltas.

    Selection, per image: on each level the (anchor, class) pairs with score > ``score_threshold``,
    the best ``topk_candidates`` of them, decoded with ``box_weights``; ``clip_before_nms``
    clips them to the image (torchvision; detectron2 does not); then NMS per class over all
    levels at ``nms_threshold`` and the best ``detections_per_image`` (torchvision 300,
    detectron2 100). ``clip_output_boxes``: as in :class:`BoxHeadConfig`.
    """

    anchor_sizes: tuple[float, ...] = (32, 64, 128, 256, 512)
    anchor_scales: tuple[float, ...] = (1.0, 2 ** (1.0 / 3), 2 ** (2.0 / 3))
    anchor_size_rounding: Literal["truncate", "none"] = "truncate"
    aspect_ratios: tuple[float, ...] = (0.5, 1.0, 2.0)
    anchor_order: Literal["ratio_major", "size_major"] = "ratio_major"
    round_anchors: bool = True
    anchor_arithmetic: Literal["float32", "float64"] = "float32"
    anchor_offset: float = 0.0
    strides_from_grid: bool = True
    num_convs: int = 4
    norm: Norm = "none"
    norm_groups: int = 32  # for norm="gn"
    box_weights: tuple[float, float, float, float] = (1.0, 1.0, 1.0, 1.0)
    score_threshold: float = 0.05
    topk_candidates: int = 1000
    nms_threshold: float = 0.5
    detections_per_image: int = 300
    clip_before_nms: bool = True
    clip_output_boxes: bool = False

    def level_anchor_sizes(self) -> tuple[tuple[float, ...], ...]:
        """The anchor sizes of every level, after ``anchor_size_rounding``."""
        truncate = self.anchor_size_rounding == "truncate"
        return tuple(tuple(int(x * s) if truncate else x * s for s in self.anchor_scales)
                     for x in self.anchor_sizes)

    @property
    def num_anchors(self) -> int:
        return len(self.anchor_scales) * len(self.aspect_ratios)


@dataclass(frozen=True, kw_only=True)
class SemanticHeadConfig:
    """Semantic-FPN branch (Kirillov et al. 2019) on p2-p5."""

    num_classes: int = 54
    conv_channels: int = 128
    norm: Norm = "gn"
    num_groups: int = 32
    common_stride: int = 4
    ignore_value: int = 255
    loss_weight: float = 0.5


@dataclass(frozen=True, kw_only=True)
class PanopticConfig:
    """Thresholds of the panoptic fusion (detectron2's defaults)."""

    overlap_threshold: float = 0.5
    stuff_area_threshold: int = 4096
    instance_score_threshold: float = 0.5


#: The two kinds of detector on the pyramid: "rcnn" (two stages: RPN, then RoI heads: Faster
#: R-CNN, Mask R-CNN with ``mask_head``, Panoptic FPN with ``semantic_head`` too) and
#: "retinanet" (one stage: dense heads on every level, ``retina_head``).
Detector = Literal["rcnn", "retinanet"]

#: The sections each detector needs, and those it must not have.
_DETECTOR_SECTIONS = {"rcnn": (("rpn", "pooler", "box_head"), ("retina_head",)),
                      "retinanet": (("retina_head",), ("rpn", "pooler", "box_head", "mask_head", "semantic_head"))}


@dataclass(frozen=True, kw_only=True)
class ModelConfig:
    """The whole model. ``num_classes`` counts foreground thing classes only.

    ``detector`` says which sections are used: "rcnn" needs ``rpn``, ``pooler`` and ``box_head``,
    with ``mask_head`` None for Faster R-CNN (boxes only) and ``semantic_head`` (which needs the
    mask head) for Panoptic FPN; "retinanet" needs ``retina_head`` and no RoI sections. A
    section a model does not have is None.
    """

    detector: Detector = "rcnn"
    num_classes: int = 90
    input: InputConfig = field(default_factory=InputConfig)
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    fpn: FPNConfig = field(default_factory=FPNConfig)
    rpn: RPNConfig | None = field(default_factory=RPNConfig)
    pooler: PoolerConfig | None = field(default_factory=PoolerConfig)
    box_head: BoxHeadConfig | None = field(default_factory=BoxHeadConfig)
    mask_head: MaskHeadConfig | None = field(default_factory=MaskHeadConfig)
    semantic_head: SemanticHeadConfig | None = None
    retina_head: RetinaHeadConfig | None = None
    panoptic: PanopticConfig = field(default_factory=PanopticConfig)

    def __post_init__(self) -> None:
        if self.detector not in _DETECTOR_SECTIONS:
            raise ValueError(f"detector must be one of {list(_DETECTOR_SECTIONS)}, got {self.detector!r}")
        needed, unused = _DETECTOR_SECTIONS[self.detector]
        missing = [name for name in needed if getattr(self, name) is None]
        extra = [name for name in unused if getattr(self, name) is not None]
        if missing or extra:
            raise ValueError(f"a {self.detector} model needs the config section(s) {', '.join(needed)} and has no "
                             f"{', '.join(unused)}; this config "
                             + "; ".join(filter(None, [f"lacks {', '.join(missing)}" if missing else "",
                                                       f"has {', '.join(extra)}" if extra else ""])))
        if self.semantic_head is not None and self.mask_head is None:
            raise ValueError("a semantic head (Panoptic FPN) needs the mask head: its fusion pastes instance masks")

    @property
    def has_masks(self) -> bool:
        """Whether the model predicts instance masks (Mask R-CNN, Panoptic FPN) or boxes only."""
        return self.mask_head is not None

    @property
    def detection_head(self) -> str:
        """The section holding the detection thresholds (``score_threshold``,
        ``detections_per_image``, ...): "box_head" or "retina_head"."""
        return "retina_head" if self.detector == "retinanet" else "box_head"

    def replace(self, **changes) -> "ModelConfig":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def with_overrides(self, overrides: dict) -> "ModelConfig":
        """A copy with nested fields changed, e.g. ``{"box_head": {"score_threshold": 0.01}}``.

        Every key and value is checked as :meth:`from_dict` checks them (:class:`ConfigError`
        names the key and what it allows). Use it for inference settings (thresholds, top-k),
        not for widths, which must match the weights.
        """
        return ModelConfig.from_dict(merge_config(self.to_dict(), overrides, where="overrides"),
                                     where="overrides")

    @classmethod
    def from_dict(cls, data: dict, *, where: str = "model config") -> "ModelConfig":
        """The config ``data`` (nested dicts, e.g. :meth:`to_dict`'s or a JSON file's) describes,
        every key and value checked (:func:`decode_config`); a field left out keeps its default."""
        return decode_config(cls, _upgrade_legacy_fields(data), where)


def _upgrade_legacy_fields(data):
    """``data`` with fields that earlier segfpn versions kept elsewhere moved to their place now:
    ``mask_head.clip_output_boxes`` (written into every native file before box-only models) is
    ``box_head.clip_output_boxes``."""
    mask_head, box_head = (data.get("mask_head"), data.get("box_head")) if isinstance(data, dict) else (None, None)
    if not (isinstance(mask_head, dict) and "clip_output_boxes" in mask_head):
        return data
    mask_head = dict(mask_head)
    clip = mask_head.pop("clip_output_boxes")
    data = {**data, "mask_head": mask_head}
    if "box_head" not in data:
        data["box_head"] = {"clip_output_boxes": clip}
    elif isinstance(box_head, dict) and "clip_output_boxes" not in box_head:
        data["box_head"] = {**box_head, "clip_output_boxes": clip}
    return data


# ---------------------------------------------------------------------------------------------
# Decoding nested dicts into config dataclasses, checked (the model's, training's)


class ConfigError(ValueError):
    """A configuration that cannot be used; the message names the key and what it allows."""


def decode_config(kind: type, values, where: str):
    """An instance of the dataclass ``kind`` from nested dicts, every key and value checked.

    Unknown keys, values outside a ``Literal`` (``background_index: "middle"``), a wrong type,
    null where a field is not optional, a tuple of the wrong length: :class:`ConfigError` naming
    the dotted key (``where`` is its prefix) and what is allowed. Lists become tuples; ints are
    accepted for floats.
    """
    if isinstance(values, kind):
        return values
    if not isinstance(values, dict):
        raise ConfigError(f"{where}: expected a mapping for {kind.__name__}, got {values!r}")
    hints = typing.get_type_hints(kind)
    names = [f.name for f in dataclasses.fields(kind) if f.init]
    unknown = sorted(set(values) - set(names))
    if unknown:
        raise ConfigError(f"unknown field(s) {', '.join(f'{where}.{k}' for k in unknown)}; "
                          f"{kind.__name__} has: {', '.join(names)}")
    kwargs = {name: _decode_value(hints[name], value, f"{where}.{name}") for name, value in values.items()}
    try:
        return kind(**kwargs)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{where}: {exc}") from None


def _decode_value(hint, value, where: str):
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None:
            if type(None) in args:
                return None
            raise ConfigError(f"{where} may not be null")
        options = [a for a in args if a is not type(None)]
        for option in options:
            if dataclasses.is_dataclass(option) and isinstance(value, dict):
                return decode_config(option, value, where)
        return _decode_value(options[0], value, where)
    if dataclasses.is_dataclass(hint):
        return decode_config(hint, value, where)
    if origin is typing.Literal:
        if value not in args:
            raise ConfigError(f"{where} must be one of {list(args)}, got {value!r}")
        return value
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where} must be a list, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_decode_value(args[0], v, where) for v in value)
        if len(args) != len(value):
            raise ConfigError(f"{where} must have {len(args)} items, got {list(value)}")
        return tuple(_decode_value(a, v, where) for a, v in zip(args, value))
    if hint is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if hint is int and isinstance(value, float) and value.is_integer():
        return int(value)
    if hint in (int, float, str, bool) and not isinstance(value, hint):
        raise ConfigError(f"{where} must be a {hint.__name__}, got {value!r}")
    return value


def merge_config(base: dict, changes: dict, *, where: str, add_sections: bool = False) -> dict:
    """``base`` (a config's ``to_dict()``) with the nested ``changes`` applied; a key ``base``
    lacks is a :class:`ConfigError` naming it. A section that is None in ``base`` (a branch the
    model does not have, e.g. ``semantic_head``) is set from its changes with
    ``add_sections`` (a new model), and is an error without it (loaded weights have no branch)."""
    if not isinstance(changes, dict):
        raise ConfigError(f"{where}: expected a mapping of config fields, got {changes!r}")
    out = dict(base)
    for key, value in changes.items():
        if key not in out:
            raise ConfigError(f"unknown field {where}.{key}; known there: {', '.join(out)}")
        if isinstance(value, dict) and out[key] is None and not add_sections:
            raise ConfigError(f"{where}: config section {key!r} is not used by this model")
        if isinstance(value, dict) and isinstance(out[key], dict):
            out[key] = merge_config(out[key], value, where=f"{where}.{key}", add_sections=add_sections)
        else:
            out[key] = value
    return out


# ---------------------------------------------------------------------------------------------
# Presets

def torchvision_v1_backbone() -> BackboneConfig:
    """The ResNet-50 of torchvision's v1 detection models as their COCO_V1 weights run it: frozen
    BatchNorm with eps 0 (the builders set it with ``overwrite_eps(model, 0.0)`` after loading)."""
    return BackboneConfig(norm="frozen_bn", norm_eps=0.0)


def torchvision_maskrcnn_v1() -> ModelConfig:
    """torchvision ``maskrcnn_resnet50_fpn`` (COCO_V1): box AP 37.9, mask AP 34.6."""
    return ModelConfig(num_classes=90, backbone=torchvision_v1_backbone())


def torchvision_maskrcnn_v2() -> ModelConfig:
    """torchvision ``maskrcnn_resnet50_fpn_v2`` (COCO_V1): box AP 47.4, mask AP 41.8."""
    return ModelConfig(
        num_classes=90,
        backbone=BackboneConfig(norm="bn"),
        fpn=FPNConfig(norm="bn"),
        rpn=RPNConfig(num_convs=2),
        box_head=BoxHeadConfig(conv_channels=(256, 256, 256, 256), fc_channels=(1024,), norm="bn"),
        mask_head=MaskHeadConfig(norm="bn"),
    )


def detectron2_input() -> InputConfig:
    return InputConfig(channel_order="bgr", pixel_range=255.0, pixel_mean=(103.53, 116.28, 123.675),
                       pixel_std=(1.0, 1.0, 1.0), resize_method="pil_bilinear", size_rounding="round")


def detectron2_mask_rcnn(depth: Literal[50, 101] = 50) -> ModelConfig:
    """detectron2 COCO-InstanceSegmentation ``mask_rcnn_R_{50,101}_FPN`` (YAML model zoo)."""
    return ModelConfig(
        num_classes=80,
        input=detectron2_input(),
        backbone=BackboneConfig(depth=depth, stride_in_1x1=True),
        rpn=RPNConfig(round_anchors=False, anchor_arithmetic="float64", strides_from_grid=False, nms_score="logit",
                      min_proposal_size=0.0, pre_nms_topk_train=2000, post_nms_topk_train=1000),
        pooler=PoolerConfig(aligned=True, sampling_ratio=0, level_epsilon=0.0, level_log_epsilon=1e-8),
        box_head=BoxHeadConfig(background_index="last", min_detection_size=0.0, clip_output_boxes=True),
        mask_head=MaskHeadConfig(paste_method="grid_sample"),
    )


def detectron2_panoptic_fpn(depth: Literal[50, 101] = 50) -> ModelConfig:
    """detectron2 COCO-PanopticSegmentation ``panoptic_fpn_R_{50,101}`` (YAML model zoo)."""
    return detectron2_mask_rcnn(depth).replace(semantic_head=SemanticHeadConfig())


# Faster R-CNN is Mask R-CNN without the mask head: the same RPN, pooler and box head.

def torchvision_faster_rcnn_v1() -> ModelConfig:
    """torchvision ``fasterrcnn_resnet50_fpn`` (COCO_V1): box AP 37.0."""
    return torchvision_maskrcnn_v1().replace(mask_head=None)


def torchvision_faster_rcnn_v2() -> ModelConfig:
    """torchvision ``fasterrcnn_resnet50_fpn_v2`` (COCO_V1): box AP 46.7."""
    return torchvision_maskrcnn_v2().replace(mask_head=None)


def detectron2_faster_rcnn(depth: Literal[50, 101] = 50) -> ModelConfig:
    """detectron2 COCO-Detection ``faster_rcnn_R_{50,101}_FPN`` (YAML model zoo)."""
    return detectron2_mask_rcnn(depth).replace(mask_head=None)


# RetinaNet: c3-c5, FPN p3-p5 plus p6/p7 convs, the dense head. The three libraries differ in where
# p6 comes from, the anchor sizes and their order, the head's norm, clipping and top-k.

def _retinanet(**changes) -> ModelConfig:
    return ModelConfig(detector="retinanet", rpn=None, pooler=None, box_head=None, mask_head=None, **changes)


def torchvision_retinanet_v1() -> ModelConfig:
    """torchvision ``retinanet_resnet50_fpn`` (COCO_V1): box AP 36.4. p6 from p5
    (``LastLevelP6P7(256, 256)``), anchor sizes truncated to integers and rounded, no head norm."""
    return _retinanet(num_classes=90, backbone=torchvision_v1_backbone(),
                      fpn=FPNConfig(in_features=("c3", "c4", "c5"), top_block="p6p7_from_p5"),
                      retina_head=RetinaHeadConfig())


def torchvision_retinanet_v2() -> ModelConfig:
    """torchvision ``retinanet_resnet50_fpn_v2`` (COCO_V1): box AP 41.5. p6 from c5
    (``LastLevelP6P7(2048, 256)``), GroupNorm(32) in the head, BatchNorm in the ResNet."""
    return _retinanet(num_classes=90, backbone=BackboneConfig(norm="bn"),
                      fpn=FPNConfig(in_features=("c3", "c4", "c5"), top_block="p6p7_from_c5"),
                      retina_head=RetinaHeadConfig(norm="gn"))


def detectron2_retinanet(depth: Literal[50, 101] = 50) -> ModelConfig:
    """detectron2 COCO-Detection ``retinanet_R_{50,101}_FPN`` (YAML model zoo): p6 from c5, anchor
    sizes x * 2**(k/3) kept as floats, size-major, boxes not clipped before NMS, 100 detections."""
    return _retinanet(
        num_classes=80, input=detectron2_input(), backbone=BackboneConfig(depth=depth, stride_in_1x1=True),
        fpn=FPNConfig(in_features=("c3", "c4", "c5"), top_block="p6p7_from_c5"),
        retina_head=RetinaHeadConfig(anchor_size_rounding="none", anchor_order="size_major", round_anchors=False,
                                     anchor_arithmetic="float64", strides_from_grid=False, detections_per_image=100,
                                     clip_before_nms=False, clip_output_boxes=True))


#: Architecture name -> preset. Names match the checkpoint catalogue.
ARCHITECTURES = {
    "maskrcnn_resnet50_fpn": torchvision_maskrcnn_v1,
    "maskrcnn_resnet50_fpn_v2": torchvision_maskrcnn_v2,
    "fasterrcnn_resnet50_fpn": torchvision_faster_rcnn_v1,
    "fasterrcnn_resnet50_fpn_v2": torchvision_faster_rcnn_v2,
    "retinanet_resnet50_fpn": torchvision_retinanet_v1,
    "retinanet_resnet50_fpn_v2": torchvision_retinanet_v2,
    "mask_rcnn_R_50_FPN": lambda: detectron2_mask_rcnn(50),
    "mask_rcnn_R_101_FPN": lambda: detectron2_mask_rcnn(101),
    "panoptic_fpn_R_50": lambda: detectron2_panoptic_fpn(50),
    "panoptic_fpn_R_101": lambda: detectron2_panoptic_fpn(101),
    "faster_rcnn_R_50_FPN": lambda: detectron2_faster_rcnn(50),
    "faster_rcnn_R_101_FPN": lambda: detectron2_faster_rcnn(101),
    "retinanet_R_50_FPN": lambda: detectron2_retinanet(50),
    "retinanet_R_101_FPN": lambda: detectron2_retinanet(101),
}
