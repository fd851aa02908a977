"""The training loop: data -> losses -> SGD step, with checkpoints, resume, evaluation and DDP.

One iteration is ``solver.accumulate`` forward/backward passes of ``data.batch_size`` images per
process, then one optimizer step. Under ``torchrun`` the model is wrapped in
DistributedDataParallel (gradients are averaged over the processes) and only rank 0 logs, shows
the progress bar, evaluates and writes files.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from segfpn.categories import CategorySet
from segfpn.checkpoints.loading import save_native
from segfpn.config import ModelConfig
from segfpn.model.detector import SegFPN
from segfpn.training import checkpoint as ckpt
from segfpn.training import distributed
from segfpn.training.config import ConfigError, DatasetConfig, TrainConfig, build_model_config
from segfpn.training.data import TrainingSet, build_train_loader, categories_from_annotations
from segfpn.training.initialization import (checkpoint_model_config, initialize_class_specific, initialize_weights,
                                            load_for_finetuning, load_imagenet_backbone, read_checkpoint,
                                            same_classes)
from segfpn.training.solver import WarmupMultiStep, build_optimizer, build_scheduler

logger = logging.getLogger(__name__)

HISTORY_FILE = "metrics.jsonl"
LOSS_ABBREVIATIONS = {"loss_rpn_objectness": "rpn_obj", "loss_rpn_box": "rpn_box", "loss_cls": "cls",
                      "loss_box": "box", "loss_mask": "mask", "loss_semantic": "sem"}


class TrainingDiverged(FloatingPointError):
    """A loss became NaN or infinite; the message names the iteration and the loss."""


@dataclass
class TrainResult:
    """What :func:`train` returns (on every process; ``history`` and ``metrics`` on rank 0 only).

    history: one record per iteration: ``iteration``, ``lr``, ``total_loss``, every loss, ``time``.
    metrics: the last evaluation (see :func:`segfpn.evaluation.evaluate`), or None.
    """

    model: SegFPN
    categories: CategorySet
    config: TrainConfig
    iteration: int
    output_dir: Path
    history: list[dict] = field(default_factory=list)
    metrics: dict | None = None
    best: dict | None = None


class _LossModule(nn.Module):
    """``forward`` = ``SegFPN.losses``, so DistributedDataParallel sees the training pass."""

    def __init__(self, model: SegFPN):
        super().__init__()
        self.model = model

    def forward(self, images, targets):
        return self.model.losses(images, targets)


# ---------------------------------------------------------------------------------------------
# Resolving the config against the data and the init checkpoint

def resolve_split(split: DatasetConfig, *, generate: bool, progress: bool = False) -> DatasetConfig:
    """Concrete paths of a split; a synthetic split is generated first when ``generate`` and missing."""
    if split.synthetic is None:
        if split.root is None:
            return split
        root = Path(split.root)
        def join(p):
            return None if p is None else str(root / p)
        return dataclasses.replace(split, images_dir=str(root / split.images_dir),
                                   instances_json=join(split.instances_json), panoptic_json=join(split.panoptic_json),
                                   panoptic_dir=join(split.panoptic_dir), root=None)
    if split.root is None:
        raise ConfigError("a synthetic data split needs `root`, the folder it is generated into")
    from segfpn.data import synthetic

    root = Path(split.root)
    instances = root / "annotations" / "instances.json"
    syn = split.synthetic
    if instances.is_file():
        with open(instances) as f:
            count = len(json.load(f)["images"])
        if count != syn.num_images:
            raise ConfigError(f"{root} holds a synthetic set of {count} images, the config asks for "
                              f"{syn.num_images}; delete the folder or point `root` elsewhere")
    elif generate:
        logger.info("generating %d synthetic images (seed %d) in %s", syn.num_images, syn.seed, root)
        synthetic.generate(root, num_images=syn.num_images, seed=syn.seed, image_size=syn.image_size,
                           max_image_size=syn.max_image_size, max_things=syn.max_things, progress=progress)
    return dataclasses.replace(
        split, images_dir=str(root / "images"), instances_json=split.instances_json or str(instances),
        panoptic_json=split.panoptic_json or str(root / "annotations" / "panoptic.json"),
        panoptic_dir=split.panoptic_dir or str(root / "annotations" / "panoptic"), root=None, synthetic=None)


def resolve_categories(config: TrainConfig, train_split: DatasetConfig) -> CategorySet:
    kind = config.data.categories
    if kind == "synthetic":
        from segfpn.data.synthetic import synthetic_categories
        return synthetic_categories()
    if kind == "coco_panoptic":
        from segfpn.categories import coco_panoptic_category_set
        return coco_panoptic_category_set()
    if kind == "coco_instances":
        from segfpn.categories import coco_instance_categories
        return coco_instance_categories()

    def read(path):
        if path is None:
            return None
        with open(path) as f:
            return json.load(f)
    return categories_from_annotations(instances=read(train_split.instances_json),
                                       panoptic=read(train_split.panoptic_json))


def resolve_model_config(config: TrainConfig, categories: CategorySet) -> ModelConfig:
    """The model to train: the config's (or the init checkpoint's), with the data's class counts."""
    model = config.model
    if model is None:
        if config.init.kind != "checkpoint":
            raise ConfigError("the config has no `model` section; that is only allowed with init.kind: checkpoint "
                              "(the checkpoint's architecture is then used)")
        base, _ = checkpoint_model_config(config.init.path, arch=config.init.arch)
        model = build_model_config(config.model_changes, base=base) if config.model_changes else base
    model = model.replace(num_classes=len(categories.things))
    if model.semantic_head is not None:
        if not categories.stuff:
            raise ConfigError("the model has a semantic head (Panoptic FPN) but the training data has no panoptic "
                              "labels: add data.train.panoptic_json, or set model.semantic_head: null to train "
                              "Mask R-CNN only")
        model = model.replace(semantic_head=dataclasses.replace(model.semantic_head, num_classes=len(categories.stuff)))
    return model


def build_model(config: TrainConfig, model_config: ModelConfig, categories: CategorySet) -> SegFPN:
    """The model with its starting weights (``config.init``)."""
    model = SegFPN(model_config)
    initialize_weights(model)
    init = config.init
    if init.kind == "imagenet":
        if not init.path:
            raise ConfigError("init.kind: imagenet needs init.path, a torchvision ResNet state dict file")
        load_imagenet_backbone(model, init.path)
    elif init.kind == "checkpoint":
        if not init.path:
            raise ConfigError("init.kind: checkpoint needs init.path")
        converted = read_checkpoint(init.path, arch=init.arch)
        reinit = not same_classes(converted.categories, categories)
        report = load_for_finetuning(model, converted.state_dict, reinit_class_specific=reinit, path=str(init.path))
        if reinit:
            initialize_class_specific(model)
        logger.info("initialised from %s (%s): %s%s", init.path, converted.source_format, report.summary(),
                    "; class-specific layers re-initialised for the new classes" if reinit else "")
    return model


def lookup_metric(metrics: dict, dotted: str) -> float | None:
    node = metrics
    for key in dotted.split("."):
        if not isinstance(node, dict) or key not in node:
            return None
        node = node[key]
    return float(node) if isinstance(node, (int, float)) else None


# ---------------------------------------------------------------------------------------------
# The loop

class Trainer:
    """Builds everything a run needs from a :class:`TrainConfig`; :meth:`run` trains."""

    def __init__(self, config: TrainConfig, *, resume: bool = False, progress: bool = True):
        if config.num_threads > 0:
            torch.set_num_threads(config.num_threads)
        self.dist = distributed.setup(config.device)
        self.progress = progress
        self.output_dir = Path(config.output_dir)
        is_main = self.dist.is_main
        if is_main:
            self.output_dir.mkdir(parents=True, exist_ok=True)

        # Data first (rank 0 generates a synthetic set, the others wait).
        data = config.data
        if is_main:
            train_split = resolve_split(data.train, generate=True, progress=progress)
            val_split = resolve_split(data.val, generate=True, progress=progress) if data.val else None
        distributed.barrier()
        train_split = resolve_split(data.train, generate=False)
        val_split = resolve_split(data.val, generate=False) if data.val else None
        self.val_split = val_split
        self.categories = resolve_categories(config, train_split)
        model_config = resolve_model_config(config, self.categories)
        self.config = config.replace(model=model_config, model_changes={})

        ckpt.seed_everything(config.seed)  # identical initial weights on every process
        self.model = build_model(config, model_config, self.categories).to(self.dist.device)
        self.model.train()
        self.optimizer = build_optimizer(self.model, config.solver)
        self.scheduler = build_scheduler(self.optimizer, config.solver)
        self.use_amp = config.solver.amp and self.dist.device.type == "cuda"
        self.amp_dtype = torch.float16 if config.solver.amp_dtype == "float16" else torch.bfloat16
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.use_amp and self.amp_dtype == torch.float16)
        self.iteration = 0
        self.best: dict | None = None
        self.metrics: dict | None = None
        self.history: list[dict] = []

        state = None
        if resume:
            folder = ckpt.find_last_checkpoint(self.output_dir)
            if folder is None:
                logger.warning("--resume: %s has no checkpoint yet; starting from iteration 0", self.output_dir)
            else:
                state = self._restore(folder)
        if state is None:
            ckpt.seed_everything(config.seed + self.dist.rank)

        from segfpn.data.coco import CocoDataset

        use_semantic = model_config.semantic_head is not None
        # Panoptic PNGs are read for the semantic targets, or for the instances when there is no instances file.
        panoptic = use_semantic or not train_split.instances_json
        dataset = CocoDataset(train_split.images_dir, categories=self.categories,
                              instances_json=train_split.instances_json,
                              panoptic_json=train_split.panoptic_json if panoptic else None,
                              panoptic_dir=train_split.panoptic_dir if panoptic else None,
                              skip_empty=data.skip_empty)
        self.training_set = TrainingSet(dataset, model_config.input, min_sizes=data.min_sizes, max_size=data.max_size,
                                        flip_prob=data.flip_prob, seed=config.seed, use_semantic=use_semantic)
        self.samples_per_iteration = data.batch_size * config.solver.accumulate
        start = self.iteration * self.samples_per_iteration
        if state is not None:
            saved = state["data"]
            if (saved["world_size"] != self.dist.world_size
                    or saved["samples_per_iteration"] != self.samples_per_iteration):
                start = saved["consumed_per_rank"] * saved["world_size"] // self.dist.world_size
                logger.warning("resuming with %d processes x %d images per iteration instead of %d x %d: the data "
                               "order continues approximately, not exactly", self.dist.world_size,
                               self.samples_per_iteration, saved["world_size"], saved["samples_per_iteration"])
        self.loader = build_train_loader(self.training_set, batch_size=data.batch_size, seed=config.seed,
                                         rank=self.dist.rank, world_size=self.dist.world_size, start=start,
                                         num_workers=data.num_workers)
        self.module: nn.Module = _LossModule(self.model)
        if self.dist.distributed:
            device_ids = [self.dist.device.index] if self.dist.device.type == "cuda" else None
            self.module = nn.parallel.DistributedDataParallel(self.module, device_ids=device_ids)

    # -- resume -------------------------------------------------------------------------------

    def _restore(self, folder: Path) -> dict:
        state = ckpt.load_training_state(folder)
        ckpt.load_weights(self.model, folder)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        # The schedule is a function of the config: a resumed run may extend it (max_iter, steps, base_lr).
        groups = len(self.optimizer.param_groups)
        self.scheduler.lr_lambdas = [WarmupMultiStep(self.config.solver)] * groups
        self.scheduler.base_lrs = [self.config.solver.base_lr] * groups
        lr = self.config.solver.base_lr * self.scheduler.lr_lambdas[0](self.scheduler.last_epoch)
        for group in self.optimizer.param_groups:
            group["initial_lr"] = self.config.solver.base_lr
            group["lr"] = lr
        self.scheduler._last_lr = [lr] * groups
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.iteration = int(state["iteration"])
        self.best = state.get("best")
        rng = state["rng"]
        if len(rng) == self.dist.world_size:
            ckpt.restore_rng_state(rng[self.dist.rank])
        else:
            logger.warning("the checkpoint was written by %d process(es), this run has %d: random states are "
                           "re-seeded, so the run will not repeat an uninterrupted one exactly", len(rng),
                           self.dist.world_size)
            ckpt.seed_everything(self.config.seed + self.dist.rank + 1000 * self.iteration)
        if self.dist.is_main:
            logger.info("resumed from %s at iteration %d", folder, self.iteration)
            self._trim_history_file()
        return state

    def _trim_history_file(self) -> None:
        """Drop records past the resumed iteration (written by the interrupted run after its checkpoint)."""
        path = self.output_dir / HISTORY_FILE
        if path.is_file():
            lines = [line for line in path.read_text().splitlines()
                     if line.strip() and json.loads(line)["iteration"] <= self.iteration]
            ckpt.write_text_atomic(path, "".join(line + "\n" for line in lines))

    def training_state(self, rng_states: list[dict]) -> dict:
        return {
            "iteration": self.iteration,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else {},
            "rng": rng_states,
            "data": {"seed": self.config.seed, "world_size": self.dist.world_size,
                     "samples_per_iteration": self.samples_per_iteration,
                     "consumed_per_rank": self.iteration * self.samples_per_iteration},
            "best": self.best,
            "config": self.config.to_yaml(),
            "format_version": 1,
        }

    # -- the loop -------------------------------------------------------------------------------

    def run(self) -> TrainResult:
        cfg = self.config
        solver = cfg.solver
        is_main = self.dist.is_main
        file_handler = None
        if is_main:
            ckpt.write_text_atomic(self.output_dir / "config.yaml", cfg.to_yaml())
            file_handler = logging.FileHandler(self.output_dir / "train.log")
            file_handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
            logging.getLogger("segfpn").addHandler(file_handler)
            logger.info("training config:\n%s", cfg.to_yaml())
            logger.info("%d training images, %d classes (+%d semantic), %.2fM parameters, %d process(es) on %s",
                        len(self.training_set), cfg.model.num_classes, len(self.categories.stuff),
                        sum(p.numel() for p in self.model.parameters()) / 1e6, self.dist.world_size, self.dist.device)
        try:
            self._loop(cfg, solver, is_main)
        finally:
            if file_handler is not None:
                logging.getLogger("segfpn").removeHandler(file_handler)
                file_handler.close()
        distributed.barrier()
        return TrainResult(model=self.model, categories=self.categories, config=cfg, iteration=self.iteration,
                           output_dir=self.output_dir, history=self.history, metrics=self.metrics, best=self.best)

    def _loop(self, cfg: TrainConfig, solver, is_main: bool) -> None:
        from tqdm import tqdm

        device = self.dist.device
        data_iter = iter(self.loader)
        bar = tqdm(total=solver.max_iter, initial=self.iteration, desc="train", unit="it", dynamic_ncols=True,
                   disable=not (self.progress and is_main))
        window: list[dict] = []
        history_path = self.output_dir / HISTORY_FILE
        try:
            while self.iteration < solver.max_iter:
                start = time.perf_counter()
                record, data_time = self._step(data_iter, device, solver)
                self.iteration += 1
                last = self.iteration == solver.max_iter
                record.update(iteration=self.iteration, time=time.perf_counter() - start, data_time=data_time)
                if is_main:
                    self.history.append(record)
                    window.append(record)
                    bar.update(1)
                    bar.set_postfix_str(" ".join(f"{LOSS_ABBREVIATIONS.get(k, k)}={v:.3f}" for k, v in record.items()
                                                 if k.startswith("loss_")) + f" lr={record['lr']:.2g}", refresh=False)
                    if cfg.log_period and (self.iteration % cfg.log_period == 0 or last):
                        self._write_history(history_path, window)
                        window = []
                evaluate_now = self.val_split is not None and (
                    last or (cfg.eval_period and self.iteration % cfg.eval_period == 0))
                if evaluate_now:
                    self._evaluate()
                if last or (cfg.checkpoint_period and self.iteration % cfg.checkpoint_period == 0):
                    self._save_checkpoint()
        finally:
            bar.close()
        if is_main:
            save_native(self.output_dir / "model_final.safetensors", self.model, self.categories, arch=cfg.arch)
            if cfg.final_weights:
                Path(cfg.final_weights).parent.mkdir(parents=True, exist_ok=True)
                save_native(cfg.final_weights, self.model, self.categories, arch=cfg.arch)
                logger.info("final weights written to %s", cfg.final_weights)

    def _step(self, data_iter, device, solver) -> tuple[dict, float]:
        """One optimizer step over ``accumulate`` batches; returns the losses (mean over processes)."""
        self.optimizer.zero_grad(set_to_none=True)
        totals: dict[str, torch.Tensor] = {}
        data_time = 0.0
        for micro in range(solver.accumulate):
            t0 = time.perf_counter()
            batch = next(data_iter).to(device)
            data_time += time.perf_counter() - t0
            sync = contextlib.nullcontext()
            if self.dist.distributed and micro < solver.accumulate - 1:
                sync = self.module.no_sync()
            with sync:
                with torch.autocast(device_type=device.type, dtype=self.amp_dtype, enabled=self.use_amp):
                    losses = self.module(batch.images, batch.targets)
                total = sum(losses.values())
                self.scaler.scale(total / solver.accumulate).backward()
            for name, value in losses.items():
                totals[name] = totals.get(name, 0.0) + value.detach().float() / solver.accumulate
        names = sorted(totals)
        reduced = distributed.all_reduce_mean(torch.stack([totals[n] for n in names])).tolist()
        record = dict(zip(names, reduced))
        for name, value in record.items():
            if not math.isfinite(value):
                lr = self.optimizer.param_groups[0]["lr"]
                raise TrainingDiverged(
                    f"{name} is {value} at iteration {self.iteration + 1} (lr {lr:.3g}); "
                    f"training stopped. Lower solver.base_lr, lengthen solver.warmup_iters or set "
                    f"solver.clip_grad_norm, then resume from the last checkpoint in {self.output_dir}")
        record["total_loss"] = sum(record.values())
        record["lr"] = self.optimizer.param_groups[0]["lr"]  # the rate of this step
        if solver.clip_grad_norm > 0:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), solver.clip_grad_norm)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        return record, data_time

    def _write_history(self, path: Path, window: list[dict]) -> None:
        if not window:
            return
        mean = {k: sum(r[k] for r in window) / len(window) for k in window[-1] if k not in ("iteration", "lr")}
        mean.update(iteration=window[-1]["iteration"], lr=window[-1]["lr"])
        with open(path, "a") as f:
            f.write(json.dumps(mean) + "\n")
        logger.debug("iteration %d: %s", mean["iteration"], mean)

    # -- checkpoints and evaluation -----------------------------------------------------------------

    def _save_checkpoint(self) -> None:
        rng_states = distributed.all_gather_object(ckpt.capture_rng_state())
        if self.dist.is_main:
            ckpt.save_checkpoint(self.output_dir, iteration=self.iteration, model=self.model,
                                 categories=self.categories, arch=self.config.arch,
                                 training_state=self.training_state(rng_states), keep=self.config.keep_checkpoints)

    def best_metric_name(self) -> str:
        if self.config.best_metric != "auto":
            return self.config.best_metric
        if self.model.semantic_head is not None and self.val_split.panoptic_json:
            return "panoptic.All.pq"
        return "segm.AP" if self.model.config.mask_head is not None else "bbox.AP"  # a Faster R-CNN has no masks

    def _evaluate(self) -> None:
        if self.dist.is_main:
            from segfpn.evaluation import evaluate, format_metrics
            from segfpn.predictor import Predictor

            split = self.val_split
            panoptic = self.model.semantic_head is not None and split.panoptic_json is not None
            predictor = Predictor(self.model, self.categories, device=self.dist.device, arch=self.config.arch)
            try:
                metrics = evaluate(predictor, images_dir=split.images_dir, instances_json=split.instances_json,
                                   panoptic_json=split.panoptic_json if panoptic else None,
                                   panoptic_dir=split.panoptic_dir if panoptic else None,
                                   out_dir=self.output_dir / "eval" / f"iter_{self.iteration:07d}",
                                   progress=False)
            finally:
                self.model.train()
            self.metrics = metrics
            name = self.best_metric_name()
            value = lookup_metric(metrics, name)
            logger.info("evaluation at iteration %d:\n%s", self.iteration, format_metrics(metrics))
            summary = {k: lookup_metric(metrics, k) for k in ("bbox.AP", "segm.AP", "panoptic.All.pq")}
            with open(self.output_dir / HISTORY_FILE, "a") as f:
                f.write(json.dumps({"iteration": self.iteration, "eval": summary}) + "\n")
            if value is None:
                logger.warning("best_metric %r is not among the evaluation metrics", name)
            elif self.best is None or value > self.best["value"]:
                self.best = {"metric": name, "value": value, "iteration": self.iteration}
                ckpt.save_best(self.output_dir, model=self.model, categories=self.categories, arch=self.config.arch,
                               metrics=metrics, iteration=self.iteration, metric_name=name, value=value)
                logger.info("new best %s = %.4f at iteration %d", name, value, self.iteration)
        self.best = distributed.broadcast_object(self.best)
        distributed.barrier()


def train(config: TrainConfig, *, resume: bool = False, progress: bool = True) -> TrainResult:
    """Train as ``config`` says; with ``resume`` continue from the last checkpoint in its output_dir.

    Under ``torchrun`` call it in every process. Raises :class:`TrainingDiverged` when a loss
    becomes NaN or infinite.
    """
    return Trainer(config, resume=resume, progress=progress).run()
