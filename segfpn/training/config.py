"""Training configuration: keyword-only dataclasses, read from YAML or from a Python file.

A YAML file mirrors :class:`TrainConfig` field by field; unknown keys are errors that name the
key. The ``model`` section is a :class:`~segfpn.config.ModelConfig` written out (any field left
out keeps its default), optionally starting from an architecture preset::

    model:
      preset: panoptic_fpn_R_50        # optional: a name of segfpn.config.ARCHITECTURES
      backbone: {depth: 18, norm: gn}  # fields changed on top of the preset / defaults

``num_classes`` and ``semantic_head.num_classes`` always come from the data's categories. With
``init.kind: checkpoint`` the model section may be left out, or say ``preset: checkpoint``: the
checkpoint's own config is used, with the fields given changed.

A Python config file defines ``config`` (a :class:`TrainConfig`, or a function returning one).
"""

from __future__ import annotations

import dataclasses
import importlib.util
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from segfpn.config import ARCHITECTURES, ConfigError, ModelConfig, decode_config, merge_config

PRESET_KEY = "preset"
#: ``model: {preset: checkpoint, ...}``: the init checkpoint's own config, with the fields given changed.
CHECKPOINT_PRESET = "checkpoint"


@dataclass(frozen=True, kw_only=True)
class SyntheticSetConfig:
    """Generate this split with :func:`segfpn.data.synthetic.generate` when it is not there yet."""

    num_images: int = 200
    seed: int = 0
    image_size: tuple[int, int] = (320, 320)
    max_image_size: tuple[int, int] | None = None
    max_things: int = 8


@dataclass(frozen=True, kw_only=True)
class DatasetConfig:
    """One COCO-format split: instances JSON and/or panoptic JSON (+ PNG folder).

    With ``synthetic`` set, ``root`` is where the synthetic set lives (generated on first use) and
    the paths below default to its standard layout.
    """

    images_dir: str = ""
    instances_json: str | None = None
    panoptic_json: str | None = None
    panoptic_dir: str | None = None
    root: str | None = None
    synthetic: SyntheticSetConfig | None = None


@dataclass(frozen=True, kw_only=True)
class DataConfig:
    """Training and validation data, and the standard augmentation.

    categories: "auto" (things from the instances JSON, stuff from the panoptic JSON with the
        merged "things" class first), "synthetic", "coco_panoptic" or "coco_instances".
    batch_size: images per process per forward pass.
    min_sizes: shorter-side lengths, one drawn per training image (multi-scale training);
        max_size caps the longer side. flip_prob: horizontal flip probability.
    skip_empty: leave out training images without instance targets (detectron2's default).
    """

    train: DatasetConfig
    val: DatasetConfig | None = None
    categories: Literal["auto", "synthetic", "coco_panoptic", "coco_instances"] = "auto"
    batch_size: int = 2
    num_workers: int = 0
    min_sizes: tuple[int, ...] = (800,)
    max_size: int = 1333
    flip_prob: float = 0.5
    skip_empty: bool = True


@dataclass(frozen=True, kw_only=True)
class SolverConfig:
    """SGD with momentum, linear warm-up and step decay.

    The learning rate at iteration i (0-based) is ``base_lr * warmup(i) * gamma ** (number of
    steps <= i)`` with ``warmup(i) = warmup_factor + (1 - warmup_factor) * i / warmup_iters``
    for i < warmup_iters. ``accumulate``: forward/backward passes per optimizer step (the
    effective batch is batch_size x accumulate x world size). ``amp``: autocast + GradScaler,
    used only on CUDA. ``clip_grad_norm``: 0 = off.
    """

    max_iter: int = 1000
    base_lr: float = 0.02
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 1e-4
    weight_decay_norm: float = 0.0
    warmup_iters: int = 100
    warmup_factor: float = 0.001
    steps: tuple[int, ...] = ()
    gamma: float = 0.1
    accumulate: int = 1
    amp: bool = True
    amp_dtype: Literal["float16", "bfloat16"] = "float16"
    clip_grad_norm: float = 0.0


@dataclass(frozen=True, kw_only=True)
class InitConfig:
    """Where the starting weights come from.

    "scratch": random initialisation. "imagenet": a torchvision ResNet state dict (``path``) for
    the backbone, the rest random. "checkpoint": any file ``segfpn.load`` reads (``path``,
    ``arch`` as for load); when the data's classes differ from the checkpoint's, the
    class-specific layers are re-initialised and everything else is kept.
    """

    kind: Literal["scratch", "imagenet", "checkpoint"] = "scratch"
    path: str | None = None
    arch: str | None = None


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """One training run.

    model: None only with ``init.kind == "checkpoint"``: the checkpoint's config is used, with
        ``model_changes`` (nested dict, e.g. ``{"rpn": {"post_nms_topk_train": 500}}``) applied.
    arch: the architecture name written into the saved checkpoints.
    output_dir: checkpoints, logs, evaluation outputs. final_weights: also write the final model
        there (segfpn's .safetensors format).
    device: "auto" (CUDA when available), "cpu", "cuda". Under torchrun each process takes
        ``cuda:LOCAL_RANK``. num_threads: torch's intra-op CPU threads per process (0 = torch's
        default). On a CPU shared with other jobs 1 can be much faster than 2: OpenMP threads spin
        while they wait for each other.
    checkpoint_period / eval_period / log_period: in iterations (0 = only at the end; eval
        needs ``data.val``). keep_checkpoints: how many periodic checkpoints to keep.
    best_metric: dotted path into the evaluation metrics, e.g. "panoptic.All.pq" or "segm.AP";
        "auto" picks PQ when the validation set has panoptic labels, else mask AP.
    """

    model: ModelConfig | None = None
    model_changes: dict = field(default_factory=dict)
    init: InitConfig = field(default_factory=InitConfig)
    data: DataConfig
    solver: SolverConfig = field(default_factory=SolverConfig)
    arch: str = "custom"
    output_dir: str = "output"
    final_weights: str | None = None
    seed: int = 0
    device: str = "auto"
    num_threads: int = 0
    checkpoint_period: int = 500
    keep_checkpoints: int = 2
    eval_period: int = 0
    log_period: int = 20
    best_metric: str = "auto"

    def to_dict(self) -> dict:
        return _plain(dataclasses.asdict(self))

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False, default_flow_style=None, width=100)

    def replace(self, **changes) -> "TrainConfig":
        return dataclasses.replace(self, **changes)


# ---------------------------------------------------------------------------------------------
# Reading

def load_config(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> TrainConfig:
    """A :class:`TrainConfig` from a ``.yaml``/``.yml`` file or a ``.py`` file defining ``config``.

    ``overrides``: ``"section.key=value"`` strings (the value is parsed as YAML), applied on top,
    e.g. ``["solver.max_iter=100", "data.min_sizes=[256, 288]"]``.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"training config {path} does not exist")
    if path.suffix in (".yaml", ".yml"):
        data = yaml.safe_load(path.read_text()) or {}
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: the top level must be a mapping of TrainConfig fields")
        _apply_overrides(data, overrides)
        return config_from_dict(data, source=str(path))
    if path.suffix == ".py":
        config = _load_python_config(path)
        if overrides:
            data = config.to_dict()
            _apply_overrides(data, overrides)
            config = config_from_dict(data, source=str(path))
        return config
    raise ConfigError(f"{path}: a training config is a .yaml/.yml file or a .py file defining `config`")


def config_from_dict(data: dict, *, source: str = "config") -> TrainConfig:
    """Build a :class:`TrainConfig` from nested dicts (as read from YAML), checking every key."""
    data = dict(data)
    model = data.pop("model", None)
    if model is not None:
        if not isinstance(model, dict):
            raise ConfigError(f"{source}: 'model' must be a mapping")
        if model.get(PRESET_KEY) == CHECKPOINT_PRESET:
            data["model"] = None
            data["model_changes"] = {k: v for k, v in model.items() if k != PRESET_KEY}
        else:
            data["model"] = build_model_config(model, source=source)
    return decode_config(TrainConfig, data, f"{source}")


def build_model_config(model: dict, *, base: ModelConfig | None = None, source: str = "config") -> ModelConfig:
    """A :class:`ModelConfig` from a YAML ``model`` section: ``preset`` (or ``base``) plus fields."""
    model = dict(model)
    preset = model.pop(PRESET_KEY, None)
    if preset is not None:
        if preset not in ARCHITECTURES:
            raise ConfigError(f"{source}: model.preset {preset!r} is unknown; known: {', '.join(ARCHITECTURES)}")
        base = ARCHITECTURES[preset]()
    start = (base or ModelConfig()).to_dict()
    merged = merge_config(start, model, where=f"{source}: model", add_sections=True)
    return decode_config(ModelConfig, merged, f"{source}: model")


def _apply_overrides(data: dict, overrides) -> None:
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form section.key=value")
        dotted, text = item.split("=", 1)
        keys = dotted.strip().split(".")
        node = data
        for key in keys[:-1]:
            node = node.setdefault(key, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r}: {key} is not a section")
        node[keys[-1]] = yaml.safe_load(text)


def _load_python_config(path: Path) -> TrainConfig:
    spec = importlib.util.spec_from_file_location(f"_segfpn_train_config_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = getattr(module, "config", None)
    if callable(config) and not isinstance(config, TrainConfig):
        config = config()
    if not isinstance(config, TrainConfig):
        raise ConfigError(f"{path} must define `config`, a TrainConfig (or a function returning one)")
    return config


def _plain(value: Any) -> Any:
    """Tuples -> lists, recursively (for YAML)."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value
