"""Image in, :class:`~segfpn.structures.Result` out: the numpy-facing side of the model."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import os
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch

from segfpn.categories import CategorySet
from segfpn.checkpoints.loading import LoadReport, load_checkpoint
from segfpn.checkpoints.resolve import resolve as resolve_checkpoint
from segfpn.config import InputConfig, ModelConfig, PoolerConfig
from segfpn.imageio import read_image
from segfpn.model.build import Detector
from segfpn.model.fusion import fuse_panoptic
from segfpn.model.levels import level_number
from segfpn.model.network import NetworkOutputs, StageClock
from segfpn.model.optimize import keep_freed_memory, optimize_for_inference
from segfpn.model.postprocess import ImageInstances, postprocess_instances, semantic_labels_to_image
from segfpn.model.preprocess import preprocess
from segfpn.model.roi_heads import InstanceOutputs
from segfpn.structures import (InstanceMasks, Instances, PanopticSegmentation, Result, Segment,
                               SemanticSegmentation)

if TYPE_CHECKING:  # segfpn.explain and segfpn.evaluation sit above this module; imported where used
    from segfpn.evaluation.by_level import LevelMetrics
    from segfpn.explain import DetectionExplanation, Inspection, ScaleSweep, WhatIf

logger = logging.getLogger(__name__)

PRECISIONS = ("fp32", "bf16", "fp16")


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


class Predictor:
    """Runs a detector (:class:`~segfpn.model.detector.SegFPN` or
    :class:`~segfpn.model.retinanet.RetinaNet`) on images.

    ``precision``: "fp32" (default, the reference libraries' outputs), or "bf16" / "fp16"
    autocast (fp16 on CUDA only; bf16 is about twice as fast on CPUs with AVX512-BF16 or AMX,
    with slightly different outputs: see benchmarks/README.md for its measured parity).
    ``optimize``: rewrite ``model`` for inference, in place: frozen BatchNorm folded into the
    convolutions, weights in channels-last order (and in bf16 for ``precision="bf16"`` on CPU);
    on CPU also :func:`~segfpn.model.optimize.keep_freed_memory` (process-wide; opt out with
    ``SEGFPN_KEEP_FREED_MEMORY=0``). Leave it off for a model you go on training; :func:`load`
    turns it on for the model it builds.
    """

    def __init__(self, model: Detector, categories: CategorySet, *, device: str | torch.device | None = None,
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
    def predict(self, image, *, return_features: bool = False, level_override: int | None = None,
                canonical_level: int | None = None, canonical_size: float | None = None) -> Result:
        """``image``: a path, bytes, PIL image, or HxWx3 uint8 RGB array (see :func:`segfpn.imageio.read_image`).

        Two-stage models only: ``level_override`` pools every RoI from that one level (2..6);
        ``canonical_level`` / ``canonical_size`` replace k0 / s0 of the level rule
        k = floor(k0 + log2(sqrt(wh) / s0)) for this call. To compare with the model's own rule
        without running the backbone twice, use :meth:`inspect` and :meth:`what_if`.
        """
        rule = self._changed_rule(level_override, canonical_level, canonical_size,
                                  what="predict with another level rule")
        return self._run([image], return_features=return_features, pooler=rule)[0][0]

    @torch.inference_mode()
    def predict_batch(self, images: list) -> list[Result]:
        """:meth:`predict` for several images in one forward pass (worth it on a GPU; on a CPU the
        images are padded to the largest, so one at a time is as fast). Timings are per batch."""
        return self._run(list(images))[0] if len(images) else []

    @torch.inference_mode()
    def _run(self, images: list, *, return_features: bool = False, pooler: PoolerConfig | None = None,
             input_config: InputConfig | None = None, semantic: bool = True) -> tuple[list[Result], NetworkOutputs]:
        """The one way into the network: read and preprocess ``images`` (with ``input_config``
        instead of the model's sizes when given), run the model's forward (``pooler``: another RoI
        level rule; ``semantic=False``: no semantic head) and convert each image's outputs.
        Returns (one :class:`Result` per image, with the batch's timings, the network's outputs)."""
        timings = {}
        clock = StageClock(timings, self.device)
        rgbs = [read_image(image) for image in images]
        batch = preprocess(rgbs, input_config or self.config.input, device=self.device)
        if self.optimized:
            batch.tensor = batch.tensor.contiguous(memory_format=torch.channels_last)
        clock.lap("preprocess")
        with self._autocast():
            outputs = self.model(batch, keep_bottom_up=return_features, timings=timings, pooler=pooler,
                                 semantic=semantic)
        clock.restart()  # the forward timed its own stages
        results = [self.to_result(outputs, batch.image_sizes[i], rgb.shape[:2], batch.padded_size,
                                  return_features=return_features, index=i) for i, rgb in enumerate(rgbs)]
        clock.lap("postprocess")
        for result in results:
            result.timings = dict(timings)
        return results, outputs

    def _changed_rule(self, level: int | None, canonical_level: int | None, canonical_size: float | None, *,
                      what: str, rule: PoolerConfig | None = None) -> PoolerConfig | None:
        """The level rule with the changes asked for (None when none is asked for)."""
        from segfpn.explain import changed_rule, require_roi_heads

        if level is None and canonical_level is None and canonical_size is None:
            return None
        require_roi_heads(self.config, what)
        levels = sorted(level_number(name) for name in self.model.fpn.strides)
        return changed_rule(rule or self.config.pooler, level=level, canonical_level=canonical_level,
                            canonical_size=canonical_size, levels=levels)

    # -- the pyramid, explained (segfpn.explain) --------------------------------------------------

    @torch.inference_mode()
    def inspect(self, image, *, return_features: bool = False) -> Inspection:
        """Run ``image`` once and keep what the RoI heads need (the pyramid, the proposals, the
        detections in network pixels), so that :meth:`explain` and :meth:`what_if` need no
        backbone. Same result as :meth:`predict` (``inspection.result``). Two-stage models only
        (:class:`~segfpn.explain.NoRoIsError` for a RetinaNet)."""
        from segfpn.explain import Inspection, require_roi_heads

        require_roi_heads(self.config, "inspect")
        results, outputs = self._run([image], return_features=return_features)
        return Inspection.from_outputs(results[0], outputs, rule=self.config.pooler, model=self.model,
                                       clip_boxes_to_image=self.model.clip_output_boxes)

    def explain(self, image_or_inspection, detection: int) -> DetectionExplanation:
        """Detection ``detection`` of an :class:`~segfpn.explain.Inspection` (or of an image, run
        first), level by level: :class:`~segfpn.explain.DetectionExplanation`."""
        from segfpn.explain import explain_detection

        inspection = self._inspection(image_or_inspection)
        return explain_detection(inspection, detection, config=self.config)

    @torch.inference_mode()
    def what_if(self, image_or_inspection, *, level: int | None = None, canonical_level: int | None = None,
                canonical_size: float | None = None) -> WhatIf:
        """Re-run only the RoI heads on the kept pyramid and proposals with every RoI forced onto
        ``level``, or with another k0 (``canonical_level``) / s0 (``canonical_size``), and compare
        every detection with the original: :class:`~segfpn.explain.WhatIf`. With nothing changed
        the detections are the original ones."""
        from segfpn.explain import what_if

        inspection = self._inspection(image_or_inspection)
        rule = self._changed_rule(level, canonical_level, canonical_size, what="what_if", rule=inspection.rule)
        rule = rule or inspection.rule
        image_size, input_size = inspection.image_size, inspection.input_size

        def run_heads(rule: PoolerConfig) -> InstanceOutputs:
            with self._autocast():
                return self.model.detect(inspection.pyramid, [inspection.proposals], [input_size], pooler=rule)[0]

        def to_instances(detections: InstanceOutputs) -> Instances:
            return self._instances(detections, input_size, image_size)[1]

        return what_if(inspection, rule, run_heads=run_heads, to_instances=to_instances)

    def scale_sweep(self, image, sizes: Sequence[int] | None = None, *, score_threshold: float = 0.5,
                    iou_threshold: float = 0.5, progress: Callable[[int, int], None] | None = None) -> ScaleSweep:
        """Run ``image`` with its shorter side at each of ``sizes`` (network pixels; default nine
        sizes from half to 1.5 times the model's, 400..1200 for the COCO models) and follow each
        object across them: :class:`~segfpn.explain.ScaleSweep`. The semantic head is left out.
        ``progress(done, total)`` is called after each size. Works for every model."""
        from segfpn.evaluation.by_level import level_rule
        from segfpn.explain import default_sweep_sizes, sweep_sizes, track_objects

        rgb = read_image(image)
        sizes = sweep_sizes(sizes if sizes is not None else default_sweep_sizes(self.config.input.min_size),
                            rgb.shape[:2])
        found, input_sizes, seconds = [], [], []
        height, width = rgb.shape[:2]
        for done, size in enumerate(sizes, start=1):
            longer = math.ceil(size * max(height, width) / min(height, width)) + 1
            config = dataclasses.replace(self.config.input, min_size=size, max_size=max(longer, size))
            start = time.perf_counter()
            result = self._run([rgb], input_config=config, semantic=False)[0][0]
            seconds.append(time.perf_counter() - start)
            found.append(result.instances)
            input_sizes.append(result.input_size)
            if progress is not None:
                progress(done, len(sizes))
        rule = level_rule(self.config)
        return track_objects(found, sizes=sizes, input_sizes=input_sizes, seconds=seconds,
                             levels=range(rule.min_level, rule.max_level + 1), score_threshold=score_threshold,
                             iou_threshold=iou_threshold)

    def level_metrics(self, image_or_result, ground_truth, *, image: int | str | None = None,
                      iou_threshold: float = 0.5, score_threshold: float = 0.5) -> LevelMetrics:
        """Recall and precision per pyramid level of one image's detections against COCO instances
        ``ground_truth`` (a path, a loaded dict or a COCO object) for that image (``image``: its id
        or file name; needed when the file holds several images; for a path given as the image,
        its file name is tried). Objects get the level their box maps to under the model's rule
        (:func:`~segfpn.evaluation.by_level.level_rule`) at the input size of the run:
        :class:`~segfpn.evaluation.by_level.LevelMetrics`. Works for every model."""
        from segfpn.evaluation.by_level import image_ground_truth, level_recall_precision, level_rule
        from segfpn.explain import Inspection

        source = image_or_result
        if isinstance(source, Inspection):
            source = source.result
        if not isinstance(source, Result):
            if image is None and isinstance(source, (str, os.PathLike)):
                image = self._ground_truth_image(ground_truth, source)
            source = self.predict(source)
        _, annotations = image_ground_truth(ground_truth, image=image, image_size=source.image_size)
        return level_recall_precision(source.instances, annotations, image_size=source.image_size,
                                      input_size=source.input_size, rule=level_rule(self.config),
                                      iou_threshold=iou_threshold, score_threshold=score_threshold)

    @staticmethod
    def _ground_truth_image(ground_truth, path) -> int | str | None:
        """The ground-truth image a file path names (by file name), or None to let a one-image file speak."""
        from segfpn.evaluation.coco_ap import load_coco_gt

        images = load_coco_gt(ground_truth).dataset["images"]
        name = os.path.basename(str(path))
        named = any(os.path.basename(e.get("file_name", "")) == name for e in images)
        return name if len(images) > 1 or named else None

    def _inspection(self, image_or_inspection) -> Inspection:
        from segfpn.explain import Inspection

        if isinstance(image_or_inspection, Inspection):
            image_or_inspection.check_model(self.model)
            return image_or_inspection
        if isinstance(image_or_inspection, Result):
            raise TypeError("a Result does not keep the pyramid and the proposals: pass the image, or "
                            "model.inspect(image), whose .result is that Result")
        return self.inspect(image_or_inspection)

    def to_result(self, outputs: NetworkOutputs, input_size, image_size, padded_size, *,
                  return_features: bool, index: int = 0) -> Result:
        """Image ``index`` of ``outputs`` at its original size, as numpy arrays."""
        image_size = tuple(int(v) for v in image_size)
        inst, instances = self._instances(outputs.instances[index], input_size, image_size)
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

    def _instances(self, detections: InstanceOutputs, input_size: tuple[int, int],
                   image_size: tuple[int, int]) -> tuple[ImageInstances, Instances]:
        """One image's detections (network pixels, ``input_size`` h x w) at the original
        ``image_size`` (H, W): as tensors (what panoptic fusion reads) and as numpy arrays."""
        inst = postprocess_instances(detections, input_size, image_size,
                                     clip_boxes_to_image=self.model.clip_output_boxes, mask=self.config.mask_head)
        things = self.categories.things
        masks = None
        if inst.mask_crops is not None:  # None: a box-only model (Faster R-CNN, RetinaNet)
            masks = InstanceMasks(crops=[crop.cpu().numpy() for crop in inst.mask_crops],
                                  regions=inst.mask_regions.cpu().numpy(), image_size=image_size)
        instances = Instances(
            boxes=inst.boxes.float().cpu().numpy().astype(np.float32),
            scores=inst.scores.float().cpu().numpy().astype(np.float32),
            labels=inst.labels.cpu().numpy().astype(np.int64),
            class_names=[c.name for c in things], category_ids=[c.id for c in things],
            masks=masks,
            levels=inst.levels.cpu().numpy().astype(np.int64),
            box_levels=inst.box_levels.cpu().numpy().astype(np.int64),
            mask_probs=None if inst.mask_probs is None else inst.mask_probs.float().cpu().numpy())
        return inst, instances

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
