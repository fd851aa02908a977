"""Inference-only speed-ups: same outputs, less work.

- :func:`fold_frozen_batchnorm` merges every frozen (or eval-mode) BatchNorm into the convolution
  before it, so a ``ConvNorm`` costs one pass over its output instead of three. Apply it to the
  model used for inference (``segfpn.load`` does); the unfolded model keeps the checkpoint's
  tensors and is the one to train or save.
- :func:`optimize_for_inference`: that, and channels-last (and, for bf16 on CPU, bf16) weights.
- :func:`keep_freed_memory`: stop glibc from unmapping (and page-faulting back) activation maps.
"""

from __future__ import annotations

import ctypes
import os
import sys

import torch
from torch import nn
from torchvision.ops import FrozenBatchNorm2d


def _batchnorm_affine(norm: nn.Module) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(scale, shift) with ``norm(x) == x * scale + shift`` per channel, or None if not foldable."""
    frozen = isinstance(norm, FrozenBatchNorm2d) or (
        isinstance(norm, nn.BatchNorm2d) and not norm.training and norm.track_running_stats)
    if not frozen:
        return None
    mean, var = norm.running_mean.double(), norm.running_var.double()
    weight = norm.weight.double() if norm.weight is not None else torch.ones_like(mean)
    bias = norm.bias.double() if norm.bias is not None else torch.zeros_like(mean)
    # FrozenBatchNorm2d computes (var + eps).rsqrt() in float32; in float64 the fold is closer
    # to the exact function than either, and well within float32 rounding of both.
    scale = weight / torch.sqrt(var + norm.eps)
    return scale, bias - mean * scale


@torch.no_grad()
def fold_conv_norm(conv: nn.Conv2d, norm: nn.Module) -> nn.Conv2d | None:
    """A new conv computing ``norm(conv(x))``, or None when ``norm`` cannot be folded."""
    affine = _batchnorm_affine(norm)
    if affine is None or not isinstance(conv, nn.Conv2d) or conv.groups != 1:
        return None
    scale, shift = affine
    folded = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, stride=conv.stride,
                       padding=conv.padding, dilation=conv.dilation, bias=True, padding_mode=conv.padding_mode,
                       device=conv.weight.device, dtype=conv.weight.dtype)
    weight = conv.weight.double() * scale.view(-1, 1, 1, 1)
    bias = shift + (conv.bias.double() * scale if conv.bias is not None else 0.0)
    folded.weight.copy_(weight.to(conv.weight.dtype))
    folded.bias.copy_(bias.to(conv.weight.dtype))
    return folded


def fold_frozen_batchnorm(model: nn.Module) -> int:
    """Fold, in place, every ``norm`` that follows a ``conv`` in the same module (``ConvNorm``).

    Frozen BatchNorm and eval-mode BatchNorm are folded; GroupNorm and training-mode BatchNorm
    are left alone. The module keeps its names (``...conv`` now has a bias, ``...norm`` becomes
    ``nn.Identity``), so hooks and feature names still work. Returns how many were folded.
    Only for inference: a folded model is no longer the checkpoint's parameterisation.
    """
    folded = 0
    for module in list(model.modules()):
        conv, norm = getattr(module, "conv", None), getattr(module, "norm", None)
        if not isinstance(conv, nn.Conv2d) or norm is None or isinstance(norm, nn.Identity):
            continue
        new_conv = fold_conv_norm(conv, norm)
        if new_conv is None:
            continue
        module.conv = new_conv
        module.norm = nn.Identity()
        folded += 1
    return folded


def count_foldable(model: nn.Module) -> int:
    """How many conv + norm pairs :func:`fold_frozen_batchnorm` would fold."""
    return sum(1 for m in model.modules()
               if isinstance(getattr(m, "conv", None), nn.Conv2d)
               and _batchnorm_affine(getattr(m, "norm", None) or nn.Identity()) is not None)


def optimize_for_inference(model: nn.Module, *, precision: str = "fp32") -> nn.Module:
    """Rewrite ``model`` in place for inference: fold frozen BatchNorm into the convolutions and
    store conv weights channels-last; for ``precision="bf16"`` on CPU also keep the conv and
    linear weights in bf16, so that autocast does not convert them at every call."""
    fold_frozen_batchnorm(model)
    model.to(memory_format=torch.channels_last)
    device = next(model.parameters()).device
    if precision == "bf16" and device.type == "cpu":
        for module in model.modules():
            if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
                module.to(torch.bfloat16)
    return model


# ---------------------------------------------------------------------------------------------
# Memory reuse on CPU

_KEPT_FREED_MEMORY: bool | None = None


def keep_freed_memory() -> bool:
    """Ask glibc's malloc to keep freed memory for reuse instead of handing it back to the OS.

    PyTorch's CPU allocator gets every tensor from malloc; glibc serves large blocks with fresh
    ``mmap`` pages and unmaps them on free, so each new activation map is page-faulted in again
    (measured: ~17% of the CPU time of a Mask R-CNN forward at 800x800). With mmap off and a high
    trim threshold, freed blocks are reused. The peak memory is unchanged; the process just keeps
    it after the peak. Process-wide, applied once; a no-op where glibc is absent, or when the
    environment variable ``SEGFPN_KEEP_FREED_MEMORY`` is ``0``. Returns whether it is in effect.
    """
    global _KEPT_FREED_MEMORY
    if _KEPT_FREED_MEMORY is None:
        _KEPT_FREED_MEMORY = False
        if os.environ.get("SEGFPN_KEEP_FREED_MEMORY", "1") != "0" and sys.platform.startswith("linux"):
            try:
                libc = ctypes.CDLL("libc.so.6")
                m_trim_threshold, m_mmap_max = -1, -4  # from glibc's malloc.h
                _KEPT_FREED_MEMORY = bool(libc.mallopt(m_mmap_max, 0)) and bool(libc.mallopt(m_trim_threshold, 1 << 30))
            except (OSError, AttributeError):
                pass
    return _KEPT_FREED_MEMORY


def return_freed_memory() -> bool:
    """Hand memory that is free inside the process back to the OS (glibc's ``malloc_trim``: the
    top of the heap and the free pages inside every arena), the counterpart of
    :func:`keep_freed_memory` for a server once it is idle. Some tens of ms. A no-op returning
    False where glibc is absent."""
    global _LIBC
    if _LIBC is None:
        try:
            _LIBC = ctypes.CDLL("libc.so.6") if sys.platform.startswith("linux") else False
        except OSError:
            _LIBC = False
    if not _LIBC:
        return False
    return bool(_LIBC.malloc_trim(0))


_LIBC = None
