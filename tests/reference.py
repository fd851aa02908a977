"""torchvision's own detection models with seeded, calibrated random weights: the references that
parity tests and benchmarks compare segfpn against when the real COCO files cannot be downloaded.

Plain random init gives degenerate outputs (every score near 1/91, every anchor near 0.5), where
the top-k selections are decided by rounding noise. So, like a data-dependent init, one forward
pass on calibration images sets every BatchNorm's statistics to its input's, and rescales every
conv/linear of the FPN and heads per output channel to zero mean and a target spread, with random
biases. The result gives ~100 varied detections per image, and no tensor is 0 or 1, so a converter
that drops or swaps any tensor changes the outputs.

RetinaNet's head is shared by the five levels, so it is calibrated layer by layer on all of them
at once (statistics pooled over the levels, each weighted equally), and the pyramid levels get
spreads that grow with the level, so that the coarse levels, with far fewer anchors than p3,
still win detections. Its classifier's bias is set so that on the calibration images a few
thousand (anchor, class) pairs score above the 0.05 threshold.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torchvision.ops import FrozenBatchNorm2d

#: torchvision builder name -> whether it is a v1 model (whose COCO_V1 weights run with eps 0).
TORCHVISION_BUILDERS = {
    "maskrcnn_resnet50_fpn": True, "maskrcnn_resnet50_fpn_v2": False,
    "fasterrcnn_resnet50_fpn": True, "fasterrcnn_resnet50_fpn_v2": False,
    "retinanet_resnet50_fpn": True, "retinanet_resnet50_fpn_v2": False,
}

#: Output spread per layer (by name suffix): logits wide enough that scores are well separated.
_TARGET_STD = {
    "rpn.head.cls_logits": 1.0,
    "rpn.head.bbox_pred": 0.2,
    "roi_heads.box_predictor.cls_score": 1.0,
    "roi_heads.box_predictor.bbox_pred": 0.5,
    "roi_heads.mask_predictor.mask_fcn_logits": 2.0,
}
#: Faster R-CNN: the spread of the FPN outputs p2-p5 (p6 pools p5). Growing with the level, as
#: in the detectron2 fixtures: the RPN has 4x more anchors on each finer level, and with equal
#: spreads nearly every proposal and detection comes from p2.
RCNN_LEVEL_STD = (1.0, 1.3, 1.7, 2.2)
#: RetinaNet: the spread of each pyramid level (FPN outputs p3-p5, then p6, p7), growing with the
#: level so that the coarse levels, with 4x fewer anchors each, still produce detections.
RETINANET_LEVEL_STD = (1.0, 1.2, 1.45, 2.0, 2.6)
#: RetinaNet head: spread of the class logits and of the box deltas.
RETINANET_LOGIT_STD = 1.0
RETINANET_DELTA_STD = 0.1
#: (anchor, class) pairs scoring above RETINANET_SCORE_THRESHOLD on the calibration image with the fewest.
RETINANET_CANDIDATES_PER_IMAGE = 6000
RETINANET_SCORE_THRESHOLD = 0.05


def build_torchvision_detector(name: str, *, seed: int = 0, calibration_images: list[np.ndarray] | None = None,
                               calibration_size: tuple[int, int] | None = None, **builder_kwargs) -> nn.Module:
    """torchvision's ``name`` builder (a key of :data:`TORCHVISION_BUILDERS`), random but
    calibrated, in eval mode, as its COCO weights would run: v1 models with BatchNorm eps 0
    (:func:`use_coco_v1_eps`). ``builder_kwargs`` go to the builder (``box_score_thresh``,
    ``detections_per_img``, ...).

    ``calibration_images``: RGB uint8 [H, W, 3] images calibrated on as one batch (use the images
    the model will see: a random ResNet's output scale varies a lot from image to image).
    A fixed synthetic image when None. ``calibration_size``: (min_size, max_size) the images are
    resized to for the calibration only (smaller is faster; the model keeps its own sizes).
    """
    from torchvision.models import detection

    if name not in TORCHVISION_BUILDERS:
        raise ValueError(f"unknown torchvision builder {name!r}; known: {', '.join(TORCHVISION_BUILDERS)}")
    torch.manual_seed(seed)
    model = getattr(detection, name)(weights=None, weights_backbone=None, **builder_kwargs).eval()
    if TORCHVISION_BUILDERS[name]:
        use_coco_v1_eps(model)
    generator = torch.Generator().manual_seed(seed + 1)
    if not calibration_images:
        calibration_images = [_synthetic_image(seed)]
    images = [torch.from_numpy(np.ascontiguousarray(im)).permute(2, 0, 1).float() / 255.0 for im in calibration_images]
    sizes = model.transform.min_size, model.transform.max_size
    if calibration_size is not None:
        model.transform.min_size, model.transform.max_size = (calibration_size[0],), calibration_size[1]
    try:
        if name.startswith("retinanet"):
            _calibrate_retinanet(model, images, generator)
        else:
            # Mask R-CNN keeps equal level spreads (its parity figures were measured so).
            _calibrate_rcnn(model, images, generator,
                            level_std=RCNN_LEVEL_STD if name.startswith("fasterrcnn") else None)
    finally:
        model.transform.min_size, model.transform.max_size = sizes
    return model


def build_torchvision_maskrcnn(version: int = 1, *, seed: int = 0, calibration_images: list[np.ndarray] | None = None,
                               score_threshold: float = 0.0) -> nn.Module:
    """torchvision ``maskrcnn_resnet50_fpn`` (version 1) or ``_v2`` (2): :func:`build_torchvision_detector`
    with a box score threshold of ``score_threshold``."""
    name = {1: "maskrcnn_resnet50_fpn", 2: "maskrcnn_resnet50_fpn_v2"}[version]
    return build_torchvision_detector(name, seed=seed, calibration_images=calibration_images,
                                      box_score_thresh=score_threshold)


def use_coco_v1_eps(model: nn.Module) -> nn.Module:
    """Set every BatchNorm's eps to 0, as torchvision's v1 builders do after loading their COCO_V1
    weights (``overwrite_eps(model, 0.0)``): a model built with ``weights=None`` and given a v1
    COCO state dict then computes what the builder with ``weights=COCO_V1`` computes."""
    for module in model.modules():
        if isinstance(module, (nn.BatchNorm2d, FrozenBatchNorm2d)):
            module.eps = 0.0
    return model


def _calibrate_rcnn(model: nn.Module, images: list[torch.Tensor], generator: torch.Generator, *,
                    level_std: tuple[float, ...] | None = None) -> None:
    """Every norm and layer by hooks; ``level_std``: the spread of each FPN output (p2, p3, ...),
    set on its conv (v1) or the BatchNorm after it (v2)."""
    scaled = {}
    for level, factor in enumerate(level_std or ()):
        block = model.backbone.fpn.layer_blocks[level]
        scaled[block[-1]] = factor  # the conv, or the norm after it
    hooks = []
    # Without a mask head nothing is calibrated after the box head: its (slow) selection of
    # detections can be skipped.
    skip_selection = getattr(model.roi_heads, "mask_head", None) is None
    score_threshold = model.roi_heads.score_thresh
    if skip_selection:
        model.roi_heads.score_thresh = 1.0
    for name, module in model.named_modules():
        if isinstance(module, nn.BatchNorm2d):
            low, high = _bn_weight_range(name)
            factor = scaled.get(module, 1.0)
            hooks.append(module.register_forward_pre_hook(_bn_calibrator(generator, (low * factor, high * factor))))
        elif isinstance(module, (nn.Conv2d, nn.Linear, nn.ConvTranspose2d)) and not name.startswith("backbone.body"):
            target = _TARGET_STD.get(name, 1.0) * scaled.get(module, 1.0)
            hooks.append(module.register_forward_hook(_layer_calibrator(target, generator)))
    with torch.no_grad():
        # The second pass sees the calibrated upstream layers and settles the heads.
        for _ in range(2):
            model(images)
    for h in hooks:
        h.remove()
    model.roi_heads.score_thresh = score_threshold


def _bn_weight_range(name: str) -> tuple[float, float]:
    # Damp each residual branch (last norm of a block) so that activations do not grow block
    # after block, which would make the output scale depend on the image.
    return (0.2, 0.5) if name.endswith(".bn3") else (0.5, 1.0) if "downsample" in name else (0.6, 1.4)


def _calibrate_retinanet(model: nn.Module, images: list[torch.Tensor], generator: torch.Generator) -> None:
    """Backbone and FPN by hooks (each module runs once per pass), the per-level output convs to
    :data:`RETINANET_LEVEL_STD`; then the head, layer by layer over all levels at once."""
    fpn = model.backbone.fpn
    level_outputs = [*(block[0] for block in fpn.layer_blocks), fpn.extra_blocks.p6, fpn.extra_blocks.p7]
    level_std = dict(zip(level_outputs, RETINANET_LEVEL_STD))
    hooks = []
    for name, module in model.backbone.named_modules():
        if isinstance(module, nn.BatchNorm2d):
            hooks.append(module.register_forward_pre_hook(_bn_calibrator(generator, _bn_weight_range(name))))
        elif isinstance(module, nn.Conv2d) and not name.startswith("body"):
            hooks.append(module.register_forward_hook(_layer_calibrator(level_std.get(module, 1.0), generator)))
    with torch.no_grad():
        batch, _ = model.transform(images)
        for _ in range(2):
            model.backbone(batch.tensors)
        for h in hooks:
            h.remove()
        features = list(model.backbone(batch.tensors).values())
        head = model.head
        logits = _calibrate_subnet(head.classification_head.conv, head.classification_head.cls_logits, features,
                                   RETINANET_LOGIT_STD, generator)
        _calibrate_subnet(head.regression_head.conv, head.regression_head.bbox_reg, features, RETINANET_DELTA_STD,
                          generator)
        _shift_class_bias(head.classification_head, logits, target=RETINANET_CANDIDATES_PER_IMAGE, generator=generator)


def _calibrate_subnet(convs: nn.Sequential, predictor: nn.Conv2d, features: list[torch.Tensor], predictor_std: float,
                      generator: torch.Generator) -> list[torch.Tensor]:
    """Each conv of ``convs`` (Conv2dNormActivation blocks: conv, [GroupNorm,] ReLU) to std 1 per
    channel over every level, then ``predictor`` to ``predictor_std``; returns its outputs."""
    xs = features
    for block in convs:
        conv, rest = block[0], list(block)[1:]
        xs = _rescale_pooled(conv, [conv(x) for x in xs], 1.0, generator)
        for layer in rest:
            if isinstance(layer, nn.GroupNorm):
                layer.weight.copy_(torch.empty(layer.num_channels).uniform_(0.6, 1.4, generator=generator))
                layer.bias.copy_(torch.randn(layer.num_channels, generator=generator) * 0.2)
            xs = [layer(x) for x in xs]
    return _rescale_pooled(predictor, [predictor(x) for x in xs], predictor_std, generator)


def _rescale_pooled(conv: nn.Conv2d, outputs: list[torch.Tensor], target_std: float,
                    generator: torch.Generator) -> list[torch.Tensor]:
    """Rescale ``conv`` per output channel so that its outputs on every level, each level weighted
    equally, have mean 0 and std ``target_std`` plus a random bias; returns the outputs it now gives."""
    means = torch.stack([o.mean(dim=(0, 2, 3)) for o in outputs])
    squares = torch.stack([(o * o).mean(dim=(0, 2, 3)) for o in outputs])
    mean = means.mean(0)
    std = (squares.mean(0) - mean * mean).clamp(min=1e-12).sqrt()
    scale = target_std / std
    old_bias = conv.bias.clone() if conv.bias is not None else torch.zeros_like(mean)
    conv.weight.mul_(scale.view(-1, 1, 1, 1))
    if conv.bias is None:  # no bias to give (a norm follows): only the scale
        return [o * scale.view(1, -1, 1, 1) for o in outputs]
    new_bias = (old_bias - mean) * scale + torch.randn(mean.shape, generator=generator) * 0.2 * target_std
    conv.bias.copy_(new_bias)
    return [(o - old_bias.view(1, -1, 1, 1)) * scale.view(1, -1, 1, 1) + new_bias.view(1, -1, 1, 1)
            for o in outputs]


def _shift_class_bias(classification_head: nn.Module, logits: list[torch.Tensor], *, target: int,
                      generator: torch.Generator) -> None:
    """Shift the class logits, with a random offset per class, so that on every calibration image
    (the weakest decides: a random ResNet's output scale varies from image to image) at least
    ``target`` (anchor, class) pairs over all levels score above :data:`RETINANET_SCORE_THRESHOLD`.
    Class 0, torchvision's background slot, which training never makes positive (COCO labels are
    1..90), is pushed far below the threshold, as in the trained files."""
    num_classes = classification_head.num_classes
    per_class = torch.randn(num_classes, generator=generator) * 0.5
    shift = per_class.repeat(classification_head.num_anchors)  # channel a * K + k
    per_image = [torch.cat([(lg[i] + shift.view(-1, 1, 1)).reshape(-1, num_classes, *lg.shape[-2:])[:, 1:].flatten()
                            for lg in logits]) for i in range(logits[0].shape[0])]
    threshold = float(np.log(RETINANET_SCORE_THRESHOLD / (1 - RETINANET_SCORE_THRESHOLD)))
    kth = min(float(values.topk(min(target, values.numel())).values[-1]) for values in per_image)
    bias = classification_head.cls_logits.bias
    bias.add_(shift + (threshold - kth))
    bias.view(-1, num_classes)[:, 0] = -30.0


def _synthetic_image(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:480, 0:640]
    image = np.stack([(xx / 640 * 255), (yy / 480 * 255), ((xx + yy) % 256)], axis=2)
    for _ in range(12):
        x0, y0 = rng.integers(0, 560), rng.integers(0, 400)
        w, h = rng.integers(20, 300, size=2)
        image[y0:y0 + h, x0:x0 + w] = rng.integers(0, 256, size=3)
    return image.astype(np.uint8)


def _bn_calibrator(generator: torch.Generator, weight_range: tuple[float, float]):
    def hook(module: nn.BatchNorm2d, inputs):
        x = inputs[0].detach()
        c = x.shape[1]
        module.running_mean.copy_(x.mean(dim=(0, 2, 3)))
        module.running_var.copy_(x.var(dim=(0, 2, 3)) + 1e-3)
        module.weight.data.copy_(torch.empty(c).uniform_(*weight_range, generator=generator))
        module.bias.data.copy_(torch.randn(c, generator=generator) * 0.2)

    return hook


def _layer_calibrator(target_std: float, generator: torch.Generator):
    def hook(module: nn.Module, inputs, output):
        out = output.detach()
        dims = [d for d in range(out.dim()) if d != 1]
        if out.numel() == 0:
            return None
        mean, std = out.mean(dim=dims), out.std(dim=dims).clamp(min=1e-6)
        scale = target_std / std
        old_bias = module.bias.data.clone() if module.bias is not None else torch.zeros_like(mean)
        new_bias = torch.randn(mean.shape, generator=generator) * 0.2 * target_std
        # ConvTranspose2d keeps output channels in dim 1 of its weight, the others in dim 0.
        weight_view = [1] * module.weight.dim()
        weight_view[1 if isinstance(module, nn.ConvTranspose2d) else 0] = -1
        module.weight.data.mul_(scale.view(weight_view))
        if module.bias is not None:
            module.bias.data.copy_((old_bias - mean) * scale + new_bias)
        view = [1] * out.dim()
        view[1] = -1
        shift = ((old_bias - mean) * scale + new_bias).view(view) if module.bias is not None else 0
        return (out - old_bias.view(view)) * scale.view(view) + shift if module.bias is not None \
            else out * scale.view(view)

    return hook
