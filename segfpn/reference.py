"""torchvision's own Mask R-CNN with seeded, calibrated random weights: the reference that parity
tests and benchmarks compare segfpn against when the real COCO files cannot be downloaded.

Plain random init gives degenerate outputs (every score near 1/91, every anchor near 0.5), where
the top-100 selection is decided by rounding noise. So, like a data-dependent init, one forward
pass on a calibration image sets every BatchNorm's statistics to its input's, and rescales every
conv/linear of the FPN and heads per output channel to zero mean and a target spread, with random
biases. The result gives ~100 varied detections per image, and no tensor is 0 or 1, so a converter
that drops or swaps any tensor changes the outputs.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

#: Output spread per layer (by name suffix): logits wide enough that scores are well separated.
_TARGET_STD = {
    "rpn.head.cls_logits": 1.0,
    "rpn.head.bbox_pred": 0.2,
    "roi_heads.box_predictor.cls_score": 1.0,
    "roi_heads.box_predictor.bbox_pred": 0.5,
    "roi_heads.mask_predictor.mask_fcn_logits": 2.0,
}


def build_torchvision_maskrcnn(version: int = 1, *, seed: int = 0, calibration_images: list[np.ndarray] | None = None,
                               score_threshold: float = 0.0) -> nn.Module:
    """torchvision ``maskrcnn_resnet50_fpn`` (version 1) or ``_v2`` (2), random but calibrated, eval mode.

    ``calibration_images``: RGB uint8 [H, W, 3] images calibrated on as one batch (use the images
    the model will see: a random ResNet's output scale varies a lot from image to image).
    A fixed synthetic image when None.
    """
    from torchvision.models.detection import maskrcnn_resnet50_fpn, maskrcnn_resnet50_fpn_v2

    build = {1: maskrcnn_resnet50_fpn, 2: maskrcnn_resnet50_fpn_v2}[version]
    torch.manual_seed(seed)
    model = build(weights=None, weights_backbone=None, box_score_thresh=score_threshold).eval()
    generator = torch.Generator().manual_seed(seed + 1)
    if not calibration_images:
        calibration_images = [_synthetic_image(seed)]
    hooks = []
    for name, module in model.named_modules():
        if isinstance(module, nn.BatchNorm2d):
            # Damp each residual branch (last norm of a block) so that activations do not grow
            # block after block, which would make the output scale depend on the image.
            weight_range = (0.2, 0.5) if name.endswith(".bn3") else (0.5, 1.0) if "downsample" in name else (0.6, 1.4)
            hooks.append(module.register_forward_pre_hook(_bn_calibrator(generator, weight_range)))
        elif isinstance(module, (nn.Conv2d, nn.Linear, nn.ConvTranspose2d)) and not name.startswith("backbone.body"):
            hooks.append(module.register_forward_hook(_layer_calibrator(_TARGET_STD.get(name, 1.0), generator)))
    images = [torch.from_numpy(np.ascontiguousarray(im)).permute(2, 0, 1).float() / 255.0 for im in calibration_images]
    with torch.no_grad():
        # The second pass sees the calibrated upstream layers and settles the heads.
        for _ in range(2):
            model(images)
    for h in hooks:
        h.remove()
    return model


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
