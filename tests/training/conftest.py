"""A tiny Panoptic FPN config and data for the training tests (fixed seeds, 128 px images)."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
COCO_MINI = ROOT / "tests" / "data" / "coco_mini"

#: Narrow enough that an iteration of two 128 px images takes a fraction of a second on one core.
TINY_MODEL = {
    "input": {"min_size": 128, "max_size": 160},
    "backbone": {"depth": 18, "stem_channels": 8, "res2_out_channels": 16, "norm": "gn", "norm_groups": 4},
    "fpn": {"out_channels": 32},
    "rpn": {"anchor_sizes": [16, 32, 64, 128, 256], "pre_nms_topk_train": 300, "post_nms_topk_train": 100,
            "pre_nms_topk": 200, "post_nms_topk": 50, "batch_size_per_image": 64},
    "box_head": {"fc_channels": [64, 64], "batch_size_per_image": 32},
    "mask_head": {"conv_channels": [16, 16]},
    "semantic_head": {"conv_channels": 16, "num_groups": 4},
    "panoptic": {"stuff_area_threshold": 256},
}


@pytest.fixture(scope="session")
def coco_mini_dir() -> Path:
    return COCO_MINI


@pytest.fixture(scope="session")
def synthetic_tiny(tmp_path_factory) -> Path:
    """8 synthetic 128 px images (seed 11) in the standard layout."""
    from segfpn.data.synthetic import generate

    root = tmp_path_factory.mktemp("synthetic_tiny")
    generate(root, num_images=8, seed=11, image_size=(128, 128), max_things=4, min_object_size=10.0, progress=False)
    return root


@pytest.fixture
def tiny_config_dict(synthetic_tiny, tmp_path):
    """A training config (as YAML would give it) on the tiny synthetic set; edit and build it."""
    def make(**changes) -> dict:
        data = {
            "model": copy.deepcopy(TINY_MODEL),
            "data": {"categories": "synthetic",
                     "train": {"root": str(synthetic_tiny), "synthetic": {"num_images": 8, "seed": 11}},
                     "min_sizes": [112, 128], "max_size": 160, "batch_size": 2, "num_workers": 0},
            "solver": {"max_iter": 6, "base_lr": 0.02, "warmup_iters": 5, "clip_grad_norm": 5.0},
            "output_dir": str(tmp_path / "run"),
            "checkpoint_period": 0, "log_period": 1, "num_threads": 1, "seed": 3,
        }
        for dotted, value in changes.items():
            node = data
            keys = dotted.split("__")
            for key in keys[:-1]:
                node = node.setdefault(key, {})
            node[keys[-1]] = value
        return data
    return make


@pytest.fixture(autouse=True)
def _restore_torch_threads():
    """Training configs may set torch's thread count; give the next test the count it had."""
    import torch

    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)
