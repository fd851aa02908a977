"""Key mapping from torchvision and detectron2 state dicts to segfpn's, and the config each implies.

Renaming is half of a conversion; the other half is behaviour, and that lives in the presets of
``segfpn.config`` (stride in the 1x1 conv, BGR input, aligned RoIAlign, unrounded anchors,
background last, ...). Widths (channels, fc sizes, classes) are read off the tensor shapes, so a
narrow or re-classed checkpoint of the same layout converts too.
"""

from __future__ import annotations

import dataclasses
import re

import torch

from segfpn.categories import CategorySet, coco_instance_categories, coco_panoptic_category_set, torchvision_category_set
from segfpn.checkpoints.errors import CheckpointError
from segfpn.config import (ModelConfig, SemanticHeadConfig, detectron2_mask_rcnn, detectron2_panoptic_fpn,
                           torchvision_maskrcnn_v1, torchvision_maskrcnn_v2)

# (pattern on the source key, replacement in segfpn's naming). First match wins.
TORCHVISION_RULES = [
    (r"^backbone\.body\.conv1\.weight$", r"backbone.stem.conv.weight"),
    (r"^backbone\.body\.bn1\.(.+)$", r"backbone.stem.norm.\1"),
    (r"^backbone\.body\.layer(\d)\.(\d+)\.conv(\d)\.weight$", lambda m: f"backbone.stages.c{int(m[1]) + 1}.{m[2]}.conv{m[3]}.conv.weight"),
    (r"^backbone\.body\.layer(\d)\.(\d+)\.bn(\d)\.(.+)$", lambda m: f"backbone.stages.c{int(m[1]) + 1}.{m[2]}.conv{m[3]}.norm.{m[4]}"),
    (r"^backbone\.body\.layer(\d)\.(\d+)\.downsample\.0\.weight$", lambda m: f"backbone.stages.c{int(m[1]) + 1}.{m[2]}.shortcut.conv.weight"),
    (r"^backbone\.body\.layer(\d)\.(\d+)\.downsample\.1\.(.+)$", lambda m: f"backbone.stages.c{int(m[1]) + 1}.{m[2]}.shortcut.norm.{m[3]}"),
    # FPN: current (inner_blocks.0.0.weight) and pre-0.13 (inner_blocks.0.weight) layouts.
    (r"^backbone\.fpn\.inner_blocks\.(\d)\.(?:0\.)?(weight|bias)$", lambda m: f"fpn.lateral.p{int(m[1]) + 2}.conv.{m[2]}"),
    (r"^backbone\.fpn\.inner_blocks\.(\d)\.1\.(.+)$", lambda m: f"fpn.lateral.p{int(m[1]) + 2}.norm.{m[2]}"),
    (r"^backbone\.fpn\.layer_blocks\.(\d)\.(?:0\.)?(weight|bias)$", lambda m: f"fpn.output.p{int(m[1]) + 2}.conv.{m[2]}"),
    (r"^backbone\.fpn\.layer_blocks\.(\d)\.1\.(.+)$", lambda m: f"fpn.output.p{int(m[1]) + 2}.norm.{m[2]}"),
    (r"^rpn\.head\.conv\.(\d+)\.0\.(weight|bias)$", r"rpn.head.convs.\1.\2"),
    (r"^rpn\.head\.conv\.(weight|bias)$", r"rpn.head.convs.0.\1"),
    (r"^rpn\.head\.cls_logits\.(.+)$", r"rpn.head.objectness.\1"),
    (r"^rpn\.head\.bbox_pred\.(.+)$", r"rpn.head.deltas.\1"),
    (r"^roi_heads\.box_head\.fc6\.(.+)$", r"roi_heads.box_head.fcs.0.\1"),
    (r"^roi_heads\.box_head\.fc7\.(.+)$", r"roi_heads.box_head.fcs.1.\1"),
    (r"^roi_heads\.box_head\.([0-3])\.0\.weight$", r"roi_heads.box_head.convs.\1.conv.weight"),
    (r"^roi_heads\.box_head\.([0-3])\.1\.(.+)$", r"roi_heads.box_head.convs.\1.norm.\2"),
    (r"^roi_heads\.box_head\.5\.(.+)$", r"roi_heads.box_head.fcs.0.\1"),
    (r"^roi_heads\.box_predictor\.(cls_score|bbox_pred)\.(.+)$", r"roi_heads.box_predictor.\1.\2"),
    (r"^roi_heads\.mask_head\.mask_fcn(\d)\.(.+)$", lambda m: f"roi_heads.mask_head.convs.{int(m[1]) - 1}.conv.{m[2]}"),
    (r"^roi_heads\.mask_head\.(\d)\.0\.(.+)$", r"roi_heads.mask_head.convs.\1.conv.\2"),
    (r"^roi_heads\.mask_head\.(\d)\.1\.(.+)$", r"roi_heads.mask_head.convs.\1.norm.\2"),
    (r"^roi_heads\.mask_predictor\.conv5_mask\.(.+)$", r"roi_heads.mask_head.deconv.\1"),
    (r"^roi_heads\.mask_predictor\.mask_fcn_logits\.(.+)$", r"roi_heads.mask_head.predictor.\1"),
]

DETECTRON2_RULES = [
    (r"^backbone\.bottom_up\.stem\.conv1\.weight$", r"backbone.stem.conv.weight"),
    (r"^backbone\.bottom_up\.stem\.conv1\.norm\.(.+)$", r"backbone.stem.norm.\1"),
    (r"^backbone\.bottom_up\.res(\d)\.(\d+)\.(conv\d|shortcut)\.weight$", r"backbone.stages.c\1.\2.\3.conv.weight"),
    (r"^backbone\.bottom_up\.res(\d)\.(\d+)\.(conv\d|shortcut)\.norm\.(.+)$", r"backbone.stages.c\1.\2.\3.norm.\4"),
    (r"^backbone\.fpn_lateral(\d)\.(.+)$", r"fpn.lateral.p\1.conv.\2"),
    (r"^backbone\.fpn_output(\d)\.(.+)$", r"fpn.output.p\1.conv.\2"),
    (r"^proposal_generator\.rpn_head\.conv\.(.+)$", r"rpn.head.convs.0.\1"),
    (r"^proposal_generator\.rpn_head\.objectness_logits\.(.+)$", r"rpn.head.objectness.\1"),
    (r"^proposal_generator\.rpn_head\.anchor_deltas\.(.+)$", r"rpn.head.deltas.\1"),
    (r"^roi_heads\.box_head\.fc(\d)\.(.+)$", lambda m: f"roi_heads.box_head.fcs.{int(m[1]) - 1}.{m[2]}"),
    (r"^roi_heads\.box_predictor\.(cls_score|bbox_pred)\.(.+)$", r"roi_heads.box_predictor.\1.\2"),
    (r"^roi_heads\.mask_head\.mask_fcn(\d)\.(.+)$", lambda m: f"roi_heads.mask_head.convs.{int(m[1]) - 1}.conv.{m[2]}"),
    (r"^roi_heads\.mask_head\.(deconv|predictor)\.(.+)$", r"roi_heads.mask_head.\1.\2"),
    (r"^sem_seg_head\.(p\d)\.(\d+)\.norm\.(.+)$", lambda m: f"semantic_head.branches.{m[1]}.stages.{int(m[2]) // 2}.norm.{m[3]}"),
    (r"^sem_seg_head\.(p\d)\.(\d+)\.(weight|bias)$", lambda m: f"semantic_head.branches.{m[1]}.stages.{int(m[2]) // 2}.conv.{m[3]}"),
    (r"^sem_seg_head\.predictor\.(.+)$", r"semantic_head.predictor.\1"),
]

#: Source keys that carry no weights of ours: BN step counters, constant anchor templates.
IGNORED_KEYS = re.compile(r"(num_batches_tracked$|^proposal_generator\.anchor_generator\.cell_anchors\.\d+$"
                          r"|^pixel_(mean|std)$)")


@dataclasses.dataclass
class ConvertedCheckpoint:
    """A state dict in segfpn's naming, the config it needs, its classes, and what was left out."""

    state_dict: dict[str, torch.Tensor]
    config: ModelConfig
    categories: CategorySet
    arch: str
    source_format: str
    unmapped_keys: list[str]


def rename_keys(state: dict[str, torch.Tensor], rules) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Apply the first matching rule to every key; returns (renamed, keys no rule matched)."""
    compiled = [(re.compile(p), r) for p, r in rules]
    out, unmapped = {}, []
    for key, value in state.items():
        if IGNORED_KEYS.search(key):
            continue
        for pattern, repl in compiled:
            if pattern.match(key):
                out[pattern.sub(repl, key)] = value
                break
        else:
            unmapped.append(key)
    return out, unmapped


def looks_like_torchvision(state: dict) -> bool:
    return any(k.startswith("backbone.body.") for k in state)


def looks_like_detectron2(state: dict) -> bool:
    return any(k.startswith("backbone.bottom_up.") for k in state)


def convert_torchvision(state: dict[str, torch.Tensor], *, arch: str | None = None) -> ConvertedCheckpoint:
    """torchvision ``maskrcnn_resnet50_fpn`` (v1) or ``_v2`` state dict -> segfpn.

    torchvision keeps a background slot in every class-specific output; only the classifier's is
    ever read, so the background rows of the box regressor and mask predictor are dropped.
    """
    renamed, unmapped = rename_keys(state, TORCHVISION_RULES)
    is_v2 = "rpn.head.convs.1.weight" in renamed or "roi_heads.box_head.convs.0.conv.weight" in renamed
    detected = "maskrcnn_resnet50_fpn_v2" if is_v2 else "maskrcnn_resnet50_fpn"
    arch = arch or detected
    base = {"maskrcnn_resnet50_fpn": torchvision_maskrcnn_v1, "maskrcnn_resnet50_fpn_v2": torchvision_maskrcnn_v2}
    if arch not in base:
        raise CheckpointError(f"this is a torchvision checkpoint ({detected}); arch={arch!r} is not a torchvision "
                              f"architecture — pass arch={detected!r} or leave arch out")
    for key in ("roi_heads.box_predictor.bbox_pred.weight", "roi_heads.box_predictor.bbox_pred.bias"):
        if key in renamed:
            renamed[key] = renamed[key][4:]
    for key in ("roi_heads.mask_head.predictor.weight", "roi_heads.mask_head.predictor.bias"):
        if key in renamed:
            renamed[key] = renamed[key][1:]
    config = infer_widths(base[arch](), renamed)
    categories = torchvision_category_set() if config.num_classes == 90 else _generic_categories(config)
    return ConvertedCheckpoint(renamed, config, categories, arch, "torchvision", unmapped)


def convert_detectron2(state: dict[str, torch.Tensor], *, arch: str | None = None) -> ConvertedCheckpoint:
    """detectron2 model-zoo ``mask_rcnn_R_*_FPN`` / ``panoptic_fpn_R_*`` weights -> segfpn."""
    renamed, unmapped = rename_keys(state, DETECTRON2_RULES)
    depth = 101 if "backbone.stages.c4.22.conv1.conv.weight" in renamed else 50
    panoptic = any(k.startswith("semantic_head.") for k in renamed)
    detected = f"{'panoptic_fpn' if panoptic else 'mask_rcnn'}_R_{depth}{'' if panoptic else '_FPN'}"
    arch = arch or detected
    presets = {"mask_rcnn_R_50_FPN": lambda: detectron2_mask_rcnn(50),
               "mask_rcnn_R_101_FPN": lambda: detectron2_mask_rcnn(101),
               "panoptic_fpn_R_50": lambda: detectron2_panoptic_fpn(50),
               "panoptic_fpn_R_101": lambda: detectron2_panoptic_fpn(101)}
    if arch not in presets:
        raise CheckpointError(f"this is a detectron2 checkpoint ({detected}); arch={arch!r} is not a detectron2 "
                              f"architecture — pass arch={detected!r} or leave arch out")
    config = infer_widths(presets[arch](), renamed)
    if config.num_classes == 80 and (config.semantic_head is None or config.semantic_head.num_classes == 54):
        categories = coco_panoptic_category_set() if config.semantic_head else coco_instance_categories()
    else:
        categories = _generic_categories(config)
    return ConvertedCheckpoint(renamed, config, categories, arch, "detectron2", unmapped)


def infer_widths(config: ModelConfig, state: dict[str, torch.Tensor]) -> ModelConfig:
    """Read channel widths, layer counts and class counts off the tensor shapes (keys in segfpn naming)."""

    def shape(key: str, dim: int = 0) -> int | None:
        return state[key].shape[dim] if key in state else None

    def count(prefix: str, suffix: str = "weight") -> int:
        """Layers prefix.0, prefix.1, ... present in a row (a stray index is left for the report)."""
        n = 0
        while any(k.startswith(f"{prefix}{n}.") and k.endswith(suffix) for k in state):
            n += 1
        return n

    changes = {}
    backbone = config.backbone
    stem = shape("backbone.stem.conv.weight")
    if stem is not None:
        backbone = dataclasses.replace(
            backbone, stem_channels=stem,
            res2_out_channels=shape("backbone.stages.c2.0.conv3.conv.weight") or backbone.res2_out_channels,
            bottleneck_channels=shape("backbone.stages.c2.0.conv1.conv.weight") or backbone.bottleneck_channels)
        changes["backbone"] = backbone
    fpn_out = shape("fpn.lateral.p2.conv.weight")
    if fpn_out is not None:
        changes["fpn"] = dataclasses.replace(config.fpn, out_channels=fpn_out)
    rpn_convs = count("rpn.head.convs.")
    if rpn_convs:
        changes["rpn"] = dataclasses.replace(config.rpn, num_convs=rpn_convs)
    cls = shape("roi_heads.box_predictor.cls_score.weight")
    if cls is not None:
        changes["num_classes"] = cls - 1
    box_convs = tuple(shape(f"roi_heads.box_head.convs.{i}.conv.weight") for i in range(count("roi_heads.box_head.convs.")))
    box_fcs = tuple(shape(f"roi_heads.box_head.fcs.{i}.weight") for i in range(count("roi_heads.box_head.fcs.")))
    if box_fcs:
        changes["box_head"] = dataclasses.replace(config.box_head, conv_channels=box_convs, fc_channels=box_fcs)
    mask_convs = tuple(shape(f"roi_heads.mask_head.convs.{i}.conv.weight") for i in range(count("roi_heads.mask_head.convs.")))
    if mask_convs:
        changes["mask_head"] = dataclasses.replace(config.mask_head, conv_channels=mask_convs)
    semantic_classes = shape("semantic_head.predictor.weight")
    if semantic_classes is not None:
        semantic = config.semantic_head or SemanticHeadConfig()
        changes["semantic_head"] = dataclasses.replace(
            semantic, num_classes=semantic_classes, conv_channels=shape("semantic_head.predictor.weight", 1))
    return config.replace(**changes)


def _generic_categories(config: ModelConfig) -> CategorySet:
    from segfpn.categories import Category

    things = tuple(Category(id=i + 1, name=f"class_{i}", isthing=True, color=(0, 0, 0)) for i in range(config.num_classes))
    stuff = ()
    if config.semantic_head is not None:
        stuff = tuple(Category(id=i, name=f"semantic_{i}", isthing=i == 0, color=(0, 0, 0))
                      for i in range(config.semantic_head.num_classes))
    return CategorySet(things=things, stuff=stuff)
