"""Starting weights: random (detectron2's initialisation), an ImageNet backbone, or a checkpoint.

Random initialisation follows detectron2: He (MSRA) fill for the backbone, the mask head and
the semantic head, Xavier for the FPN and the box head's layers, small normals for the
predictors (objectness and class scores std 0.01, box deltas 0.001, mask logits 0.001) and
zero biases; norm layers start at weight 1, bias 0.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn

from segfpn.categories import CategorySet
from segfpn.checkpoints.converters import TORCHVISION_RULES, rename_keys
from segfpn.checkpoints.errors import CheckpointError
from segfpn.checkpoints.loading import LoadReport, convert_state, load_into, read_state
from segfpn.config import ModelConfig
from segfpn.model.detector import SegFPN

logger = logging.getLogger(__name__)

#: The layers whose shape depends on the classes; re-initialised when fine-tuning on new classes.
CLASS_SPECIFIC_PREFIXES = ("roi_heads.box_predictor.cls_score.", "roi_heads.box_predictor.bbox_pred.",
                           "roi_heads.mask_head.predictor.", "semantic_head.predictor.")


def _normal(module: nn.Module, std: float) -> None:
    nn.init.normal_(module.weight, std=std)
    if module.bias is not None:
        nn.init.zeros_(module.bias)


def _msra(module: nn.Module) -> None:
    nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
    if module.bias is not None:
        nn.init.zeros_(module.bias)


def _xavier(module: nn.Module) -> None:
    nn.init.kaiming_uniform_(module.weight, a=1)  # detectron2's c2_xavier_fill
    if module.bias is not None:
        nn.init.zeros_(module.bias)


def initialize_weights(model: SegFPN) -> None:
    """Re-initialise every layer of ``model`` in place (see the module docstring)."""
    for module in model.modules():
        if isinstance(module, (nn.GroupNorm, nn.BatchNorm2d)) and module.affine:
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
    for module in model.backbone.modules():
        if isinstance(module, nn.Conv2d):
            _msra(module)
    for module in model.fpn.modules():
        if isinstance(module, nn.Conv2d):
            _xavier(module)
    for module in model.rpn.head.modules():
        if isinstance(module, nn.Conv2d):
            _normal(module, 0.01)
    heads = model.roi_heads
    for module in heads.box_head.modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            _xavier(module)
    for module in heads.mask_head.modules():
        if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
            _msra(module)
    if model.semantic_head is not None:
        for module in model.semantic_head.modules():
            if isinstance(module, nn.Conv2d):
                _msra(module)
    initialize_class_specific(model)


def initialize_class_specific(model: SegFPN) -> None:
    """Fresh class-specific layers: box classifier and regressor, mask and semantic predictors."""
    heads = model.roi_heads
    _normal(heads.box_predictor.cls_score, 0.01)
    _normal(heads.box_predictor.bbox_pred, 0.001)
    _normal(heads.mask_head.predictor, 0.001)
    if model.semantic_head is not None:
        _normal(model.semantic_head.predictor, 0.001)


# ---------------------------------------------------------------------------------------------
# ImageNet backbone

def read_imagenet_backbone(path: str | Path) -> dict[str, torch.Tensor]:
    """A torchvision ImageNet ResNet state dict (``conv1.weight``, ``layer1.0.bn1.*``, ``fc.*``,
    as saved by ``torch.save(resnet50().state_dict())``) renamed onto segfpn's backbone keys
    (``backbone.stem.conv.weight``, ...). The classifier (``fc.*``) is dropped."""
    path = Path(path)
    state, _ = read_state(path)
    if any(k.startswith("backbone.") for k in state):
        raise CheckpointError(f"{path} is a detection checkpoint, not an ImageNet classifier; use "
                              "init.kind: checkpoint for it")
    prefixed = {f"backbone.body.{k}": v for k, v in state.items() if not k.startswith("fc.")}
    renamed, unmapped = rename_keys(prefixed, TORCHVISION_RULES)
    if unmapped:
        shown = ", ".join(k.removeprefix("backbone.body.") for k in unmapped[:8])
        raise CheckpointError(f"{path}: {len(unmapped)} keys are not part of a torchvision ResNet: {shown}")
    if "backbone.stem.conv.weight" not in renamed:
        raise CheckpointError(f"{path} has no conv1.weight: not a torchvision ResNet state dict")
    return renamed


def load_imagenet_backbone(model: SegFPN, path: str | Path) -> LoadReport:
    """Copy an ImageNet ResNet into ``model.backbone``; every backbone tensor must be matched.

    Batch-norm statistics are left out when the backbone uses GroupNorm (only the affine weights
    carry over).
    """
    state = read_imagenet_backbone(path)
    target = {k for k in model.state_dict() if k.startswith("backbone.")}
    ignored = []
    if model.config.backbone.norm == "gn":
        ignored = [k for k in state if k.endswith(("running_mean", "running_var", "num_batches_tracked"))]
        state = {k: v for k, v in state.items() if k not in ignored}
    report = load_into(model, state, strict=False, ignored=ignored, path=str(path))
    missing = [k for k in report.missing if k in target]
    if missing or report.unexpected or report.mismatched:
        report.missing = missing
        raise CheckpointError(
            f"{path} does not fit a depth-{model.config.backbone.depth} backbone of stem "
            f"{model.config.backbone.stem_channels} / res2 {model.config.backbone.res2_out_channels} channels: "
            f"{report.summary()}")
    logger.info("ImageNet backbone from %s: %d tensors", path, len(report.matched))
    return report


# ---------------------------------------------------------------------------------------------
# Fine-tuning from a checkpoint

def read_checkpoint(path: str | Path, *, arch: str | None = None):
    """The converted checkpoint (segfpn naming, its config and categories) of any format ``segfpn.load`` reads."""
    path = Path(path)
    state, metadata = read_state(path)
    return convert_state(state, metadata, arch=arch, path=path)


def same_classes(a: CategorySet, b: CategorySet) -> bool:
    def key(categories):
        return [(c.id, c.name) for c in categories]
    return key(a.things) == key(b.things) and key(a.stuff) == key(b.stuff)


def load_for_finetuning(model: SegFPN, state: dict[str, torch.Tensor], *, reinit_class_specific: bool,
                        path: str = "checkpoint") -> LoadReport:
    """Copy a checkpoint's tensors into ``model``, leaving out the class-specific layers when
    ``reinit_class_specific`` (they keep their fresh initialisation). Every other tensor of the
    model must be found with its shape, except the semantic head when the checkpoint has none
    (a Mask R-CNN checkpoint fine-tuned into a Panoptic FPN)."""
    dropped = []
    if reinit_class_specific:
        dropped = [k for k in state if k.startswith(CLASS_SPECIFIC_PREFIXES)]
        state = {k: v for k, v in state.items() if k not in dropped}
    report = load_into(model, state, strict=False, ignored=dropped, path=path)
    has_semantic = any(k.startswith("semantic_head.") for k in state)
    allowed_missing = (CLASS_SPECIFIC_PREFIXES if reinit_class_specific else ()) + (
        () if has_semantic else ("semantic_head.",))
    missing = [k for k in report.missing if not k.startswith(allowed_missing)]
    if missing or report.mismatched:
        raise CheckpointError(f"{path} does not fit the model to train: {report.summary()}. "
                              "Leave the model section out (or use `preset: checkpoint`) to train the "
                              "checkpoint's own architecture.")
    if report.unexpected:
        logger.warning("%s: %d tensors of the checkpoint are not used: %s", path, len(report.unexpected),
                       ", ".join(report.unexpected[:8]))
    return report


def checkpoint_model_config(path: str | Path, *, arch: str | None = None) -> tuple[ModelConfig, str]:
    converted = read_checkpoint(path, arch=arch)
    return converted.config, converted.arch
