"""Learning-rate schedule, optimizer groups, random-state capture and checkpoint files."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from segfpn.config import BackboneConfig, ModelConfig
from segfpn.model.detector import SegFPN
from segfpn.training.checkpoint import capture_rng_state, restore_rng_state
from segfpn.training.config import SolverConfig
from segfpn.training.solver import WarmupMultiStep, build_optimizer, build_scheduler


def test_warmup_then_steps():
    config = SolverConfig(base_lr=0.1, warmup_iters=10, warmup_factor=0.001, steps=(20, 30), gamma=0.1)
    factor = WarmupMultiStep(config)
    assert factor(0) == pytest.approx(0.001)
    assert factor(5) == pytest.approx(0.001 * 0.5 + 0.5)
    assert [factor(i) for i in (10, 19, 20, 29, 30, 99)] == pytest.approx([1, 1, 0.1, 0.1, 0.01, 0.01])

    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.GroupNorm(2, 4))
    optimizer = build_optimizer(model, config)
    assert [g["weight_decay"] for g in optimizer.param_groups] == [config.weight_decay, config.weight_decay_norm]
    assert [len(g["params"]) for g in optimizer.param_groups] == [2, 2]
    scheduler = build_scheduler(optimizer, config)
    lrs = []
    for _ in range(25):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert lrs[0] == pytest.approx(1e-4) and lrs[15] == pytest.approx(0.1) and lrs[24] == pytest.approx(0.01)


def test_training_state_is_weights_only_loadable(tmp_path):
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    state = capture_rng_state()
    expected = (random.random(), np.random.rand(), torch.rand(1).item())
    model = SegFPN(ModelConfig(num_classes=2, backbone=BackboneConfig(depth=18, stem_channels=8, res2_out_channels=8,
                                                                         norm="gn", norm_groups=4)))
    optimizer = build_optimizer(model, SolverConfig())
    scheduler = build_scheduler(optimizer, SolverConfig())
    path = tmp_path / "state.pt"
    torch.save({"rng": [state], "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "config": "a: 1\n"}, path)
    loaded = torch.load(path, weights_only=True)
    random.seed(9)
    np.random.seed(9)
    torch.manual_seed(9)
    restore_rng_state(loaded["rng"][0])
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected
    build_scheduler(optimizer, SolverConfig()).load_state_dict(loaded["scheduler"])
    optimizer.load_state_dict(loaded["optimizer"])
