"""SGD with momentum, and the warm-up + step-decay learning-rate schedule."""

from __future__ import annotations

import bisect

import torch
from torch import nn

from segfpn.training.config import SolverConfig

_NORM_TYPES = (nn.BatchNorm2d, nn.SyncBatchNorm, nn.GroupNorm, nn.LayerNorm)


def build_optimizer(model: nn.Module, config: SolverConfig) -> torch.optim.SGD:
    """SGD over the trainable parameters; norm-layer weights and biases get ``weight_decay_norm``."""
    decay, no_decay = [], []
    seen = set()
    for module in model.modules():
        for name, param in module.named_parameters(recurse=False):
            if not param.requires_grad or id(param) in seen:
                continue
            seen.add(id(param))
            (no_decay if isinstance(module, _NORM_TYPES) else decay).append(param)
    groups = [{"params": decay, "weight_decay": config.weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": config.weight_decay_norm})
    return torch.optim.SGD(groups, lr=config.base_lr, momentum=config.momentum, nesterov=config.nesterov)


class WarmupMultiStep:
    """Learning-rate factor of iteration ``i``: linear warm-up from ``warmup_factor``, then
    ``gamma`` per milestone passed. A plain object (not a closure) so LambdaLR's state dict holds it."""

    def __init__(self, config: SolverConfig):
        self.warmup_iters = config.warmup_iters
        self.warmup_factor = config.warmup_factor
        self.steps = sorted(config.steps)
        self.gamma = config.gamma

    def __call__(self, iteration: int) -> float:
        factor = self.gamma ** bisect.bisect_right(self.steps, iteration)
        if iteration < self.warmup_iters:
            alpha = iteration / self.warmup_iters
            factor *= self.warmup_factor * (1 - alpha) + alpha
        return factor


def build_scheduler(optimizer: torch.optim.Optimizer, config: SolverConfig) -> torch.optim.lr_scheduler.LambdaLR:
    """Stepped once per optimizer step; its ``last_epoch`` is the iteration count."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, WarmupMultiStep(config))
