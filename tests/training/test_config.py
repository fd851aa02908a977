"""Training configs: YAML and Python files, key checking, overrides, presets."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from segfpn.config import ModelConfig, detectron2_panoptic_fpn
from segfpn.training.config import ConfigError, TrainConfig, config_from_dict, load_config

ROOT = Path(__file__).resolve().parents[2]


def test_yaml_round_trip(tiny_config_dict, tmp_path):
    config = config_from_dict(tiny_config_dict())
    assert config.model.backbone.depth == 18 and config.model.fpn.out_channels == 32
    assert config.data.min_sizes == (112, 128)
    path = tmp_path / "c.yaml"
    path.write_text(config.to_yaml())
    again = load_config(path)
    assert again == config


def test_unknown_keys_are_named(tiny_config_dict):
    with pytest.raises(ConfigError, match="solver.*bas_lr"):
        config_from_dict(tiny_config_dict(solver__bas_lr=0.1))
    with pytest.raises(ConfigError, match="model.backbone.depht"):
        config_from_dict(tiny_config_dict(model__backbone__depht=18))
    with pytest.raises(ConfigError, match="must be one of"):
        config_from_dict(tiny_config_dict(init__kind="imagnet"))


def test_overrides_and_preset(tiny_config_dict, tmp_path):
    data = tiny_config_dict()
    data["model"] = {"preset": "panoptic_fpn_R_50", "rpn": {"post_nms_topk_train": 500}}
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(data))
    config = load_config(path, ["solver.max_iter=123", "data.min_sizes=[96, 128]"])
    assert config.solver.max_iter == 123 and config.data.min_sizes == (96, 128)
    expected = detectron2_panoptic_fpn(50)
    assert config.model.pooler == expected.pooler and config.model.input == expected.input
    assert config.model.rpn.post_nms_topk_train == 500


def test_checkpoint_preset_defers_to_the_checkpoint(tiny_config_dict):
    data = tiny_config_dict(init={"kind": "checkpoint", "path": "x.safetensors"})
    data["model"] = {"preset": "checkpoint", "rpn": {"post_nms_topk_train": 64}}
    config = config_from_dict(data)
    assert config.model is None and config.model_changes == {"rpn": {"post_nms_topk_train": 64}}


def test_python_config(tmp_path, tiny_config_dict):
    data = tiny_config_dict()
    path = tmp_path / "c.py"
    path.write_text("from segfpn.training.config import config_from_dict\n"
                    f"config = lambda: config_from_dict({data!r})\n")
    config = load_config(path, ["seed=9"])
    assert isinstance(config, TrainConfig) and config.seed == 9


def test_shipped_configs_load():
    for path in sorted((ROOT / "configs").glob("*.yaml")):
        config = load_config(path)
        assert isinstance(config.model, ModelConfig), path


def test_training_configs_use_the_same_decoder(tiny_config_dict):
    data = tiny_config_dict()
    data["model"]["box_head"] = {"background_index": "middle"}
    with pytest.raises(ConfigError, match=r"model\.box_head\.background_index must be one of"):
        config_from_dict(data)
