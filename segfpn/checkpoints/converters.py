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

from segfpn.categories import (CategorySet, coco_instance_categories, coco_panoptic_category_set,
                               torchvision_category_set)
from segfpn.checkpoints.errors import CheckpointError
from segfpn.config import (ModelConfig, SemanticHeadConfig, detectron2_faster_rcnn, detectron2_mask_rcnn,
                           detectron2_panoptic_fpn, detectron2_retinanet, torchvision_faster_rcnn_v1,
                           torchvision_faster_rcnn_v2, torchvision_maskrcnn_v1, torchvision_maskrcnn_v2,
                           torchvision_retinanet_v1, torchvision_retinanet_v2)

# (pattern on the source key, replacement in segfpn's naming). First match wins.
_TORCHVISION_RESNET_RULES = [
    (r"^backbone\.body\.conv1\.weight$", r"backbone.stem.conv.weight"),
    (r"^backbone\.body\.bn1\.(.+)$", r"backbone.stem.norm.\1"),
    (r"^backbone\.body\.layer(\d)\.(\d+)\.conv(\d)\.weight$",
     lambda m: f"backbone.stages.c{int(m[1]) + 1}.{m[2]}.conv{m[3]}.conv.weight"),
    (r"^backbone\.body\.layer(\d)\.(\d+)\.bn(\d)\.(.+)$",
     lambda m: f"backbone.stages.c{int(m[1]) + 1}.{m[2]}.conv{m[3]}.norm.{m[4]}"),
    (r"^backbone\.body\.layer(\d)\.(\d+)\.downsample\.0\.weight$",
     lambda m: f"backbone.stages.c{int(m[1]) + 1}.{m[2]}.shortcut.conv.weight"),
    (r"^backbone\.body\.layer(\d)\.(\d+)\.downsample\.1\.(.+)$",
     lambda m: f"backbone.stages.c{int(m[1]) + 1}.{m[2]}.shortcut.norm.{m[3]}"),
]


def _torchvision_fpn_rules(first_level: int) -> list:
    """torchvision numbers its FPN blocks from 0 at the finest input: c2 for the R-CNNs, c3 for
    RetinaNet. Current (``inner_blocks.0.0.weight``) and pre-0.13 (``inner_blocks.0.weight``) layouts."""
    return [
        (r"^backbone\.fpn\.inner_blocks\.(\d)\.(?:0\.)?(weight|bias)$",
         lambda m: f"fpn.lateral.p{int(m[1]) + first_level}.conv.{m[2]}"),
        (r"^backbone\.fpn\.inner_blocks\.(\d)\.1\.(.+)$",
         lambda m: f"fpn.lateral.p{int(m[1]) + first_level}.norm.{m[2]}"),
        (r"^backbone\.fpn\.layer_blocks\.(\d)\.(?:0\.)?(weight|bias)$",
         lambda m: f"fpn.output.p{int(m[1]) + first_level}.conv.{m[2]}"),
        (r"^backbone\.fpn\.layer_blocks\.(\d)\.1\.(.+)$",
         lambda m: f"fpn.output.p{int(m[1]) + first_level}.norm.{m[2]}"),
    ]


#: torchvision Mask R-CNN and Faster R-CNN (v1 and v2).
TORCHVISION_RULES = _TORCHVISION_RESNET_RULES + _torchvision_fpn_rules(2) + [
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

_TV_SUBNETS = r"(classification|regression)"
_SUBNET = {"classification": "cls_subnet", "regression": "bbox_subnet"}

#: torchvision RetinaNet (v1 and v2). Its subnets are ``conv.<i>.0`` (conv) and ``conv.<i>.1``
#: (v2's GroupNorm) since torchvision 0.13, ``conv.<2i>`` (conv, then the ReLU's slot) before;
#: the COCO_V1 file may have either.
TORCHVISION_RETINANET_RULES = _TORCHVISION_RESNET_RULES + _torchvision_fpn_rules(3) + [
    (r"^backbone\.fpn\.extra_blocks\.(p6|p7)\.(weight|bias)$", r"fpn.top_block.\1.\2"),
    (rf"^head\.{_TV_SUBNETS}_head\.conv\.(\d)\.0\.(weight|bias)$",
     lambda m: f"head.{_SUBNET[m[1]]}.{m[2]}.conv.{m[3]}"),
    (rf"^head\.{_TV_SUBNETS}_head\.conv\.(\d)\.1\.(.+)$",
     lambda m: f"head.{_SUBNET[m[1]]}.{m[2]}.norm.{m[3]}"),
    (rf"^head\.{_TV_SUBNETS}_head\.conv\.(\d)\.(weight|bias)$",
     lambda m: f"head.{_SUBNET[m[1]]}.{int(m[2]) // 2}.conv.{m[3]}"),
    (r"^head\.classification_head\.cls_logits\.(weight|bias)$", r"head.cls_score.\1"),
    (r"^head\.regression_head\.bbox_reg\.(weight|bias)$", r"head.bbox_pred.\1"),
]

DETECTRON2_RULES = [
    (r"^backbone\.bottom_up\.stem\.conv1\.weight$", r"backbone.stem.conv.weight"),
    (r"^backbone\.bottom_up\.stem\.conv1\.norm\.(.+)$", r"backbone.stem.norm.\1"),
    (r"^backbone\.bottom_up\.res(\d)\.(\d+)\.(conv\d|shortcut)\.weight$", r"backbone.stages.c\1.\2.\3.conv.weight"),
    (r"^backbone\.bottom_up\.res(\d)\.(\d+)\.(conv\d|shortcut)\.norm\.(.+)$", r"backbone.stages.c\1.\2.\3.norm.\4"),
    (r"^backbone\.fpn_lateral(\d)\.(.+)$", r"fpn.lateral.p\1.conv.\2"),
    (r"^backbone\.fpn_output(\d)\.(.+)$", r"fpn.output.p\1.conv.\2"),
    (r"^backbone\.top_block\.(p6|p7)\.(weight|bias)$", r"fpn.top_block.\1.\2"),
    (r"^proposal_generator\.rpn_head\.conv\.(.+)$", r"rpn.head.convs.0.\1"),
    (r"^proposal_generator\.rpn_head\.objectness_logits\.(.+)$", r"rpn.head.objectness.\1"),
    (r"^proposal_generator\.rpn_head\.anchor_deltas\.(.+)$", r"rpn.head.deltas.\1"),
    (r"^roi_heads\.box_head\.fc(\d)\.(.+)$", lambda m: f"roi_heads.box_head.fcs.{int(m[1]) - 1}.{m[2]}"),
    (r"^roi_heads\.box_predictor\.(cls_score|bbox_pred)\.(.+)$", r"roi_heads.box_predictor.\1.\2"),
    (r"^roi_heads\.mask_head\.mask_fcn(\d)\.(.+)$", lambda m: f"roi_heads.mask_head.convs.{int(m[1]) - 1}.conv.{m[2]}"),
    (r"^roi_heads\.mask_head\.(deconv|predictor)\.(.+)$", r"roi_heads.mask_head.\1.\2"),
    (r"^sem_seg_head\.(p\d)\.(\d+)\.norm\.(.+)$",
     lambda m: f"semantic_head.branches.{m[1]}.stages.{int(m[2]) // 2}.norm.{m[3]}"),
    (r"^sem_seg_head\.(p\d)\.(\d+)\.(weight|bias)$",
     lambda m: f"semantic_head.branches.{m[1]}.stages.{int(m[2]) // 2}.conv.{m[3]}"),
    (r"^sem_seg_head\.predictor\.(.+)$", r"semantic_head.predictor.\1"),
    # RetinaNet: subnets are Sequential(conv, ReLU, ...), so the convs sit at 0, 2, 4, 6.
    (r"^head\.(cls_subnet|bbox_subnet)\.(\d+)\.norm\.(.+)$", lambda m: f"head.{m[1]}.{int(m[2]) // 2}.norm.{m[3]}"),
    (r"^head\.(cls_subnet|bbox_subnet)\.(\d+)\.(weight|bias)$", lambda m: f"head.{m[1]}.{int(m[2]) // 2}.conv.{m[3]}"),
    (r"^head\.(cls_score|bbox_pred)\.(weight|bias)$", r"head.\1.\2"),
]

#: Source keys that carry no weights of ours: BN step counters, constant anchor templates
#: (``proposal_generator.`` in the R-CNN files, at the top level in RetinaNet's).
IGNORED_KEYS = re.compile(r"(num_batches_tracked$|^(proposal_generator\.)?anchor_generator\.cell_anchors\.\d+$"
                          r"|^pixel_(mean|std)$)")

#: Architecture -> preset, per source library and detector kind: ``arch=`` may choose among
#: the presets of the file's own kind (a Mask R-CNN file as Faster R-CNN, say; strict loading
#: then names the mask head's keys as unexpected).
TORCHVISION_PRESETS = {
    "rcnn": {"maskrcnn_resnet50_fpn": torchvision_maskrcnn_v1, "maskrcnn_resnet50_fpn_v2": torchvision_maskrcnn_v2,
             "fasterrcnn_resnet50_fpn": torchvision_faster_rcnn_v1,
             "fasterrcnn_resnet50_fpn_v2": torchvision_faster_rcnn_v2},
    "retinanet": {"retinanet_resnet50_fpn": torchvision_retinanet_v1,
                  "retinanet_resnet50_fpn_v2": torchvision_retinanet_v2},
}
DETECTRON2_PRESETS = {
    "rcnn": {"mask_rcnn_R_50_FPN": lambda: detectron2_mask_rcnn(50),
             "mask_rcnn_R_101_FPN": lambda: detectron2_mask_rcnn(101),
             "panoptic_fpn_R_50": lambda: detectron2_panoptic_fpn(50),
             "panoptic_fpn_R_101": lambda: detectron2_panoptic_fpn(101),
             "faster_rcnn_R_50_FPN": lambda: detectron2_faster_rcnn(50),
             "faster_rcnn_R_101_FPN": lambda: detectron2_faster_rcnn(101)},
    "retinanet": {"retinanet_R_50_FPN": lambda: detectron2_retinanet(50),
                  "retinanet_R_101_FPN": lambda: detectron2_retinanet(101)},
}


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


def _choose_preset(presets: dict[str, dict], kind: str, detected: str, arch: str | None,
                   library: str) -> tuple[str, ModelConfig]:
    """(arch, its preset config): ``arch`` when given and of the file's kind, else ``detected``."""
    arch = arch or detected
    if arch not in presets[kind]:
        raise CheckpointError(f"this is a {library} checkpoint ({detected}); arch={arch!r} is not a {library} "
                              f"{'RetinaNet' if kind == 'retinanet' else 'R-CNN'} architecture (those are "
                              f"{', '.join(presets[kind])}) — pass arch={detected!r} or leave arch out")
    return arch, presets[kind][arch]()


def convert_torchvision(state: dict[str, torch.Tensor], *, arch: str | None = None) -> ConvertedCheckpoint:
    """torchvision ``maskrcnn_resnet50_fpn``, ``fasterrcnn_resnet50_fpn``, ``retinanet_resnet50_fpn``
    (each v1 or ``_v2``) state dict -> segfpn.

    torchvision keeps a background slot in every class-specific output. In the R-CNNs only the
    classifier's is read, so the background rows of the box regressor and mask predictor are
    dropped. RetinaNet's sigmoid classifier scores slot 0 like any class, but training never
    makes it positive (COCO labels are 1..90), so its channels (a * 91 + 0 for each anchor a)
    are dropped and the labels index the 90 foreground slots as the R-CNNs' do.
    """
    if any(k.startswith("head.classification_head.") for k in state):
        renamed, unmapped = rename_keys(state, TORCHVISION_RETINANET_RULES)
        is_v2 = any(k.startswith("head.cls_subnet.") and ".norm." in k for k in renamed)
        detected = "retinanet_resnet50_fpn_v2" if is_v2 else "retinanet_resnet50_fpn"
        arch, base = _choose_preset(TORCHVISION_PRESETS, "retinanet", detected, arch, "torchvision")
        anchors = base.retina_head.num_anchors
        for key in ("head.cls_score.weight", "head.cls_score.bias"):
            if key in renamed:
                renamed[key] = _drop_first_class(renamed[key], anchors, key)
    else:
        renamed, unmapped = rename_keys(state, TORCHVISION_RULES)
        is_v2 = "rpn.head.convs.1.weight" in renamed or "roi_heads.box_head.convs.0.conv.weight" in renamed
        family = "maskrcnn" if any(k.startswith("roi_heads.mask_head.") for k in renamed) else "fasterrcnn"
        detected = f"{family}_resnet50_fpn{'_v2' if is_v2 else ''}"
        arch, base = _choose_preset(TORCHVISION_PRESETS, "rcnn", detected, arch, "torchvision")
        for key in ("roi_heads.box_predictor.bbox_pred.weight", "roi_heads.box_predictor.bbox_pred.bias"):
            if key in renamed:
                renamed[key] = renamed[key][4:]
        for key in ("roi_heads.mask_head.predictor.weight", "roi_heads.mask_head.predictor.bias"):
            if key in renamed:
                renamed[key] = renamed[key][1:]
    config = infer_widths(base, renamed, top_block_ties="p5")
    categories = torchvision_category_set() if config.num_classes == 90 else _generic_categories(config)
    return ConvertedCheckpoint(renamed, config, categories, arch, "torchvision", unmapped)


def _drop_first_class(tensor: torch.Tensor, num_anchors: int, key: str) -> torch.Tensor:
    """[A * (K + 1), ...] -> [A * K, ...]: class 0 of every anchor removed (channel a * (K + 1) + k)."""
    if tensor.shape[0] % num_anchors:
        raise CheckpointError(f"{key} has {tensor.shape[0]} output channels, not a multiple of the "
                              f"{num_anchors} anchors per position")
    per_anchor = tensor.reshape(num_anchors, tensor.shape[0] // num_anchors, *tensor.shape[1:])
    return per_anchor[:, 1:].reshape(-1, *tensor.shape[1:]).contiguous()


def convert_detectron2(state: dict[str, torch.Tensor], *, arch: str | None = None) -> ConvertedCheckpoint:
    """detectron2 model-zoo ``mask_rcnn_R_*_FPN``, ``panoptic_fpn_R_*``, ``faster_rcnn_R_*_FPN`` and
    ``retinanet_R_*_FPN`` weights -> segfpn."""
    renamed, unmapped = rename_keys(state, DETECTRON2_RULES)
    depth = 101 if "backbone.stages.c4.22.conv1.conv.weight" in renamed else 50
    if any(k.startswith("head.") for k in renamed):
        kind, detected = "retinanet", f"retinanet_R_{depth}_FPN"
    elif any(k.startswith("semantic_head.") for k in renamed):
        kind, detected = "rcnn", f"panoptic_fpn_R_{depth}"
    elif any(k.startswith("roi_heads.mask_head.") for k in renamed):
        kind, detected = "rcnn", f"mask_rcnn_R_{depth}_FPN"
    else:
        kind, detected = "rcnn", f"faster_rcnn_R_{depth}_FPN"
    arch, base = _choose_preset(DETECTRON2_PRESETS, kind, detected, arch, "detectron2")
    config = infer_widths(base, renamed, top_block_ties=None)
    if config.num_classes == 80 and (config.semantic_head is None or config.semantic_head.num_classes == 54):
        categories = coco_panoptic_category_set() if config.semantic_head else coco_instance_categories()
    else:
        categories = _generic_categories(config)
    return ConvertedCheckpoint(renamed, config, categories, arch, "detectron2", unmapped)


def infer_widths(config: ModelConfig, state: dict[str, torch.Tensor], *,
                 top_block_ties: str | None = None) -> ModelConfig:
    """Read channel widths, layer counts and class counts off the tensor shapes (keys in segfpn naming).

    Where RetinaNet's p6 conv reads from (p5 or c5) is read off its input width too; when p5
    and c5 have the same width, ``top_block_ties`` decides ("p5": torchvision's
    ``LastLevelP6P7`` rule, ``use_P5 = in_channels == out_channels``), or None keeps the preset's.
    """

    def shape(key: str, dim: int = 0) -> int | None:
        return state[key].shape[dim] if key in state else None

    def count(prefix: str, suffix: str = "weight") -> int:
        """Layers prefix.0, prefix.1, ... present in a row (a stray index is left for the report)."""
        n = 0
        while any(k.startswith(f"{prefix}{n}.") and k.endswith(suffix) for k in state):
            n += 1
        return n

    def widths(prefix: str, weight: str) -> tuple[int, ...]:
        """Output widths of the layers prefix.0, prefix.1, ... in a row (``weight``: the key under each)."""
        return tuple(shape(f"{prefix}{i}.{weight}") for i in range(count(prefix)))

    changes = {}
    backbone = config.backbone
    stem = shape("backbone.stem.conv.weight")
    if stem is not None:
        backbone = dataclasses.replace(
            backbone, stem_channels=stem,
            res2_out_channels=shape("backbone.stages.c2.0.conv3.conv.weight") or backbone.res2_out_channels,
            bottleneck_channels=shape("backbone.stages.c2.0.conv1.conv.weight") or backbone.bottleneck_channels)
        changes["backbone"] = backbone
    fpn = config.fpn
    fpn_out = shape(f"fpn.lateral.p{fpn.in_features[0][1:]}.conv.weight")
    if fpn_out is not None:
        fpn = dataclasses.replace(fpn, out_channels=fpn_out)
    p6_in, c5 = shape("fpn.top_block.p6.weight", 1), shape("backbone.stages.c5.0.conv3.conv.weight")
    if fpn.top_block != "max_pool_p5" and p6_in is not None:
        from_p5, from_c5 = p6_in == fpn.out_channels, p6_in == c5
        if from_p5 and from_c5:
            from_p5 = top_block_ties == "p5" if top_block_ties else fpn.top_block == "p6p7_from_p5"
        if from_p5 or from_c5:  # neither: the load reports the shape mismatch
            fpn = dataclasses.replace(fpn, top_block="p6p7_from_p5" if from_p5 else "p6p7_from_c5")
    changes["fpn"] = fpn
    rpn_convs = count("rpn.head.convs.")
    if rpn_convs and config.rpn is not None:
        changes["rpn"] = dataclasses.replace(config.rpn, num_convs=rpn_convs)
    cls = shape("roi_heads.box_predictor.cls_score.weight")
    if cls is not None:
        changes["num_classes"] = cls - 1
    box_convs = widths("roi_heads.box_head.convs.", "conv.weight")
    box_fcs = widths("roi_heads.box_head.fcs.", "weight")
    if box_fcs and config.box_head is not None:
        changes["box_head"] = dataclasses.replace(config.box_head, conv_channels=box_convs, fc_channels=box_fcs)
    mask_convs = widths("roi_heads.mask_head.convs.", "conv.weight")
    if mask_convs and config.mask_head is not None:
        changes["mask_head"] = dataclasses.replace(config.mask_head, conv_channels=mask_convs)
    semantic_classes = shape("semantic_head.predictor.weight")
    if semantic_classes is not None and config.mask_head is not None:
        semantic = config.semantic_head or SemanticHeadConfig()
        changes["semantic_head"] = dataclasses.replace(
            semantic, num_classes=semantic_classes, conv_channels=shape("semantic_head.predictor.weight", 1))
    head = config.retina_head
    if head is not None:
        logits = shape("head.cls_score.weight")
        if logits is not None:
            changes["num_classes"] = logits // head.num_anchors
        subnet_convs = count("head.cls_subnet.")
        if subnet_convs:
            changes["retina_head"] = dataclasses.replace(head, num_convs=subnet_convs)
    return config.replace(**changes)


def _generic_categories(config: ModelConfig) -> CategorySet:
    from segfpn.categories import Category

    things = tuple(Category(id=i + 1, name=f"class_{i}", isthing=True, color=(0, 0, 0))
                   for i in range(config.num_classes))
    stuff = ()
    if config.semantic_head is not None:
        stuff = tuple(Category(id=i, name=f"semantic_{i}", isthing=i == 0, color=(0, 0, 0))
                      for i in range(config.semantic_head.num_classes))
    return CategorySet(things=things, stuff=stuff)
