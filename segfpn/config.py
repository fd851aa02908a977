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


@dataclass(frozen=True, kw_only=True)
class FPNConfig:
    out_channels: int = 256
    norm: Norm = "none"
    norm_groups: int = 32  # for norm="gn"


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
    # training
    batch_size_per_image: int = 512
    positive_fraction: float = 0.25
    iou_threshold: float = 0.5


@dataclass(frozen=True, kw_only=True)
class MaskHeadConfig:
    """Mask head and pasting.

    ``paste_method``: "box_resize" resizes each 28x28 mask to its integer box (torchvision);
    "grid_sample" samples it at every pixel centre (detectron2).
    ``clip_output_boxes``: detectron2 clips the rescaled boxes to the image and drops empty ones.
    """

    conv_channels: tuple[int, ...] = (256, 256, 256, 256)
    norm: Norm = "none"
    pooler_resolution: int = 14
    mask_threshold: float = 0.5
    paste_method: Literal["box_resize", "grid_sample"] = "box_resize"
    clip_output_boxes: bool = False


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


@dataclass(frozen=True, kw_only=True)
class ModelConfig:
    """The whole model. ``num_classes`` counts foreground thing classes only."""

    num_classes: int = 90
    input: InputConfig = field(default_factory=InputConfig)
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    fpn: FPNConfig = field(default_factory=FPNConfig)
    rpn: RPNConfig = field(default_factory=RPNConfig)
    pooler: PoolerConfig = field(default_factory=PoolerConfig)
    box_head: BoxHeadConfig = field(default_factory=BoxHeadConfig)
    mask_head: MaskHeadConfig = field(default_factory=MaskHeadConfig)
    semantic_head: SemanticHeadConfig | None = None
    panoptic: PanopticConfig = field(default_factory=PanopticConfig)

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
        return decode_config(cls, data, where)


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

def torchvision_maskrcnn_v1() -> ModelConfig:
    """torchvision ``maskrcnn_resnet50_fpn`` (COCO_V1): box AP 37.9, mask AP 34.6."""
    return ModelConfig(num_classes=90)


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
        box_head=BoxHeadConfig(background_index="last", min_detection_size=0.0),
        mask_head=MaskHeadConfig(paste_method="grid_sample", clip_output_boxes=True),
    )


def detectron2_panoptic_fpn(depth: Literal[50, 101] = 50) -> ModelConfig:
    """detectron2 COCO-PanopticSegmentation ``panoptic_fpn_R_{50,101}`` (YAML model zoo)."""
    return detectron2_mask_rcnn(depth).replace(semantic_head=SemanticHeadConfig())


#: Architecture name -> preset. Names match the checkpoint catalogue.
ARCHITECTURES = {
    "maskrcnn_resnet50_fpn": torchvision_maskrcnn_v1,
    "maskrcnn_resnet50_fpn_v2": torchvision_maskrcnn_v2,
    "mask_rcnn_R_50_FPN": lambda: detectron2_mask_rcnn(50),
    "mask_rcnn_R_101_FPN": lambda: detectron2_mask_rcnn(101),
    "panoptic_fpn_R_50": lambda: detectron2_panoptic_fpn(50),
    "panoptic_fpn_R_101": lambda: detectron2_panoptic_fpn(101),
}
