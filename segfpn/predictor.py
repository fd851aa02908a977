"""Image in, :class:`~segfpn.structures.Result` out: the numpy-facing side of the model."""

from __future__ import annotations

import contextlib
import logging
import os
import time

import numpy as np
import torch

from segfpn.categories import CategorySet
from segfpn.checkpoints.loading import LoadReport, load_checkpoint
from segfpn.checkpoints.resolve import resolve as resolve_checkpoint
from segfpn.config import ModelConfig
from segfpn.imageio import read_image
from segfpn.model.detector import NetworkOutputs, SegFPN
from segfpn.model.fusion import fuse_panoptic
from segfpn.model.optimize import keep_freed_memory, optimize_for_inference
from segfpn.model.postprocess import ImageInstances, postprocess_instances, semantic_labels_to_image
from segfpn.model.preprocess import preprocess
from segfpn.structures import (InstanceMasks, Instances, PanopticSegmentation, Result, Segment,
                               SemanticSegmentation)

logger = logging.getLogger(__name__)

PRECISIONS = ("fp32", "bf16", "fp16")


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


class Predictor:
    """Runs a :class:`SegFPN` on single images.

    ``precision``: "fp32" (default, the reference libraries' outputs), or "bf16" / "fp16"
    autocast (fp16 on CUDA only; bf16 is about twice as fast on CPUs with AVX512-BF16 or AMX,
    with slightly different outputs: see benchmarks/README.md for its measured parity).
    ``optimize``: rewrite ``model`` for inference, in place: frozen BatchNorm folded into the
    convolutions, weights in channels-last order (and in bf16 for ``precision="bf16"`` on CPU);
    on CPU also :func:`~segfpn.model.optimize.keep_freed_memory` (process-wide; opt out with
    ``SEGFPN_KEEP_FREED_MEMORY=0``). Leave it off for a model you go on training; :func:`load`
    turns it on for the model it builds.
    """

    def __init__(self, model: SegFPN, categories: CategorySet, *, device: str | torch.device | None = None,
                 arch: str = "", precision: str = "fp32", report: LoadReport | None = None, source: str = "",
                 optimize: bool = False):
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
        self.device = torch.device(device) if device is not None else default_device()
        if precision == "fp16" and self.device.type != "cuda":
            raise ValueError("fp16 needs a CUDA device; use precision='bf16' on CPU")
        self.model = model.to(self.device).eval()
        self.optimized = optimize
        if optimize:
            optimize_for_inference(self.model, precision=precision)
            if self.device.type == "cpu":
                keep_freed_memory()
        self.categories = categories
        self.arch = arch
        self.precision = precision
        self.report = report
        self.source = source

    @property
    def config(self) -> ModelConfig:
        return self.model.config

    @property
    def has_semantic_head(self) -> bool:
        return self.model.semantic_head is not None

    def _autocast(self):
        if self.precision == "fp32":
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if self.precision == "bf16" else torch.float16
        return torch.autocast(device_type=self.device.type, dtype=dtype)

    @torch.inference_mode()
    def predict(self, image, *, return_features: bool = False) -> Result:
        """``image``: a path, bytes, PIL image, or HxWx3 uint8 RGB array (see :func:`segfpn.imageio.read_image`)."""
        return self._predict_images([image], return_features=return_features)[0]

    @torch.inference_mode()
    def predict_batch(self, images: list) -> list[Result]:
        """:meth:`predict` for several images in one forward pass (worth it on a GPU; on a CPU the
        images are padded to the largest, so one at a time is as fast). Timings are per batch."""
        return self._predict_images(list(images), return_features=False) if len(images) else []

    def _predict_images(self, images: list, *, return_features: bool) -> list[Result]:
        timings = {}
        start = time.perf_counter()
        rgbs = [read_image(image) for image in images]
        batch = preprocess(rgbs, self.config.input, device=self.device)
        if self.optimized:
            batch.tensor = batch.tensor.contiguous(memory_format=torch.channels_last)
        timings["preprocess"] = time.perf_counter() - start
        with self._autocast():
            outputs = self.model(batch, keep_bottom_up=return_features, timings=timings)
        start = time.perf_counter()
        results = [self.to_result(outputs, batch.image_sizes[i], rgb.shape[:2], batch.padded_size,
                                  return_features=return_features, index=i) for i, rgb in enumerate(rgbs)]
        timings["postprocess"] = time.perf_counter() - start
        for result in results:
            result.timings = dict(timings)
        return results

    def to_result(self, outputs: NetworkOutputs, input_size, image_size, padded_size, *,
                  return_features: bool, index: int = 0) -> Result:
        """Image ``index`` of ``outputs`` at its original size, as numpy arrays."""
        cfg = self.config
        image_size = tuple(int(v) for v in image_size)
        inst = postprocess_instances(outputs.instances[index], input_size, image_size, cfg.mask_head)
        things = self.categories.things
        instances = Instances(
            boxes=inst.boxes.float().cpu().numpy().astype(np.float32),
            scores=inst.scores.float().cpu().numpy().astype(np.float32),
            labels=inst.labels.cpu().numpy().astype(np.int64),
            class_names=[c.name for c in things], category_ids=[c.id for c in things],
            masks=InstanceMasks(crops=[crop.cpu().numpy() for crop in inst.mask_crops],
                                regions=inst.mask_regions.cpu().numpy(), image_size=image_size),
            levels=inst.levels.cpu().numpy().astype(np.int64),
            box_levels=inst.box_levels.cpu().numpy().astype(np.int64),
            mask_probs=inst.mask_probs.float().cpu().numpy())
        semantic = panoptic = None
        if outputs.semantic_logits is not None:
            labels = semantic_labels_to_image(outputs.semantic_logits[index:index + 1], input_size, image_size,
                                              upsample=outputs.semantic_stride)
            stuff = self.categories.stuff
            semantic = SemanticSegmentation(
                labels=labels.cpu().numpy(),
                class_names=[c.name for c in stuff], category_ids=[c.id for c in stuff])
            panoptic = self.fuse(inst, labels, instances)
        features = None
        if return_features:
            features = {name: t[index].float().cpu().contiguous()
                        for name, t in {**outputs.bottom_up, **outputs.pyramid}.items()}
        return Result(image_size=image_size, input_size=tuple(input_size), padded_size=tuple(padded_size),
                      instances=instances, semantic=semantic, panoptic=panoptic, features=features,
                      device=str(self.device))

    def fuse(self, inst: ImageInstances, semantic_labels: torch.Tensor, instances: Instances) -> PanopticSegmentation:
        cfg = self.config.panoptic
        stuff = self.categories.stuff
        things_label = next((i for i, c in enumerate(stuff) if c.isthing), None)
        segment_ids, fused = fuse_panoptic(inst.mask_crops, inst.mask_regions, inst.scores.float(), semantic_labels,
                                           overlap_threshold=cfg.overlap_threshold,
                                           stuff_area_threshold=cfg.stuff_area_threshold,
                                           instance_score_threshold=cfg.instance_score_threshold,
                                           things_label=things_label)
        segments = []
        for s in fused:
            if s.isthing:
                label = int(instances.labels[s.instance])
                segments.append(Segment(id=s.id, category_id=instances.category_ids[label], label=label,
                                        class_name=instances.class_names[label], isthing=True, area=s.area,
                                        score=s.score, instance=s.instance, level=int(instances.levels[s.instance])))
            else:
                category = stuff[s.semantic_label]
                segments.append(Segment(id=s.id, category_id=category.id, label=s.semantic_label,
                                        class_name=category.name, isthing=False, area=s.area))
        return PanopticSegmentation(segment_ids=segment_ids.cpu().numpy(), segments=segments)


def load(checkpoint: str | os.PathLike, *, arch: str | None = None, device: str | torch.device | None = None,
         precision: str = "fp32", strict: bool = True, overrides: dict | None = None,
         optimize: bool = True) -> Predictor:
    """Load a checkpoint (a file, or the name of a known one) into a :class:`Predictor`.

    The format (torchvision ``.pth``, detectron2 ``.pkl``, segfpn ``.safetensors``) and the
    architecture are recognised from the file's contents; ``arch=`` overrides the architecture.
    A known name (``segfpn weights list``) is looked up in ``weights/`` (and torchvision's own
    download cache for its files) and downloaded on first use
    (:mod:`segfpn.checkpoints.resolve`).
    ``device`` defaults to CUDA when available. ``overrides`` changes inference settings, e.g.
    ``{"box_head": {"score_threshold": 0.3}, "panoptic": {"stuff_area_threshold": 1024}}``.
    ``optimize`` (default on) folds frozen BatchNorm into the convolutions and uses channels-last
    weights: same outputs, faster. Pass ``optimize=False`` to get the checkpoint's own
    parameterisation in ``.model`` (to train it, or to save it).
    """
    path = resolve_checkpoint(checkpoint)
    loaded = load_checkpoint(path, arch=arch, strict=strict, overrides=overrides)
    return Predictor(loaded.model, loaded.categories, device=device, arch=loaded.arch, precision=precision,
                     report=loaded.report, source=str(path), optimize=optimize)
