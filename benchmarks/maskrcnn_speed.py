"""Speed, memory and parity of segfpn against torchvision's ``maskrcnn_resnet50_fpn``: same
weights, same images, one run.

    python benchmarks/maskrcnn_speed.py              # 4 photos, 5 timed runs each, fp32 + bf16 + panoptic
    python benchmarks/maskrcnn_speed.py --short      # one image, one run: the CI smoke version
    python benchmarks/maskrcnn_speed.py --ablations  # also segfpn without BN folding / channels-last

Images: photos from ``examples/images``, centre-cropped to a square and resized to SIZE x SIZE
(default 800, the models' own input size, so neither resizes further): 800x800 in, full-resolution
boolean masks out. Weights: torchvision's own Mask R-CNN with seeded, calibrated random weights
(``tests/reference.py``) and a score threshold of 0, so that 100 detections per image reach the mask
head and the pasting; plus the real COCO checkpoint when ``weights/`` holds it.

Every implementation runs in its own process (peak resident memory of one never includes the
other's), and the processes take turns image by image, so that a change in machine load affects
all of them alike. Timings are medians; per-stage times come from forward hooks. The exit status
is 0 only if segfpn fp32 matches torchvision on every image (every torchvision detection has a
match of the same class with box IoU >= 0.99, score within 1e-3, mask IoU >= 0.98); bf16 parity
is printed, not required.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from segfpn.evaluation.agreement import MASK_THRESHOLD, Tolerances, compare_detections

ROOT = Path(__file__).resolve().parents[1]
#: tests/reference.py: torchvision's own models with calibrated random weights (not part of the package).
REFERENCE_DIR = ROOT / "tests"
sys.path.insert(0, str(REFERENCE_DIR))
EXAMPLES = ROOT / "examples" / "images"
DEFAULT_IMAGES = ("astronaut.png", "cyclists_33823288584.jpg", "dogs_people_16004479832.jpg",
                  "street_wide_17790319373.jpg")
COCO_CHECKPOINT = "maskrcnn_resnet50_fpn_coco-bf2d0c1e.pth"
#: A trained model that ships with the repo, for low-precision parity with trained weights.
BUNDLED_MODEL = ROOT / "weights" / "synthetic_panoptic_fpn.safetensors"
ALL_DETECTIONS = {"box_head": {"score_threshold": 0.0}}
PARITY = Tolerances(box_iou=0.99, score_atol=1e-3, mask_iou=0.98)
#: FLOP/s of the conv used to define the floor: 3x3, 256 -> 256 channels, on a 200x200 map (p2 of 800x800).
FLOOR_CONV = (256, 200)


# ---------------------------------------------------------------------------------------------
# Memory and timing helpers (used in the worker processes)

def peak_rss_mb() -> float:
    """Peak resident memory of this process (VmHWM), in MiB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def reset_peak_rss() -> bool:
    """Start a new peak (Linux: writing 5 to clear_refs resets VmHWM to the current RSS)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


class StageTimer:
    """Records when chosen submodules start and end (forward hooks); ``stages()`` turns one run's
    events into seconds per stage."""

    def __init__(self, modules: dict, sync):
        self.events: dict[str, float] = {}
        self.sync = sync
        self.handles = []
        for name, module in modules.items():
            if module is None:
                continue
            self.handles.append(module.register_forward_pre_hook(self._hook(name + ".start")))
            self.handles.append(module.register_forward_hook(self._hook(name + ".end")))

    def _hook(self, key):
        first_only = key.endswith(".start")  # a module called several times (the mask head, in chunks)

        def hook(*_):
            self.sync()
            now = time.perf_counter()
            if first_only:
                self.events.setdefault(key, now)  # spans from its first start ...
            else:
                self.events[key] = now  # ... to its last end

        return hook

    def span(self, start: str, end: str) -> float:
        if start not in self.events or end not in self.events:
            return 0.0
        return self.events[end] - self.events[start]

    def network_stages(self) -> dict:
        """Seconds per stage from the backbone to the mask head (modules named alike in both models)."""
        span = self.span
        return {"backbone": span("backbone.start", "backbone.end"), "fpn": span("fpn.start", "fpn.end"),
                "rpn_head": span("rpn_head.start", "rpn_head.end"),
                "rpn_proposals": span("rpn.start", "rpn.end") - span("rpn_head.start", "rpn_head.end"),
                "box_roi_align": span("box_pool.start", "box_pool.end"),
                "box_head": span("box_head.start", "box_predictor.end"),
                "box_nms": span("box_predictor.end", "mask_pool.start"),
                "mask_roi_align": span("mask_pool.start", "mask_pool.end"),
                "mask_head": span("mask_head.start", "roi_heads.end")}

    def remove(self):
        for h in self.handles:
            h.remove()


def count_flops(model, run) -> float:
    """FLOPs (2 x multiply-adds) of every conv, transposed conv and linear layer during ``run()``."""
    import torch
    from torch import nn

    total = [0.0]

    def hook(module, inputs, output):
        if isinstance(module, nn.Conv2d):
            k = module.kernel_size[0] * module.kernel_size[1] * module.in_channels // module.groups
            total[0] += 2.0 * output.numel() * k
        elif isinstance(module, nn.ConvTranspose2d):
            k = module.kernel_size[0] * module.kernel_size[1] * module.out_channels // module.groups
            total[0] += 2.0 * inputs[0].numel() * k
        elif isinstance(module, nn.Linear):
            total[0] += 2.0 * output.numel() * module.in_features

    handles = [m.register_forward_hook(hook) for m in model.modules()
               if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear))]
    try:
        with torch.inference_mode():
            run()
    finally:
        for h in handles:
            h.remove()
    return total[0]


def conv_rate(dtype_name: str, repeats: int = 3) -> float:
    """GFLOP/s of the floor's reference conv (channels-last) in fp32 or bf16 on this machine now."""
    import torch
    import torch.nn.functional as F

    channels, side = FLOOR_CONV
    dtype = torch.float32 if dtype_name == "fp32" else torch.bfloat16
    x = torch.randn(1, channels, side, side).to(dtype).contiguous(memory_format=torch.channels_last)
    w = (torch.randn(channels, channels, 3, 3) * 0.02).to(dtype).contiguous(memory_format=torch.channels_last)
    flops = 2.0 * side * side * channels * channels * 9
    with torch.inference_mode():
        F.conv2d(x, w, padding=1)
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            F.conv2d(x, w, padding=1)
            times.append(time.perf_counter() - start)
    return flops / float(np.median(times)) / 1e9


# ---------------------------------------------------------------------------------------------
# Images and weights (parent process)

def load_images(names: list[str], size: int) -> list[np.ndarray]:
    """Each photo centre-cropped to a square and resized to size x size (PIL bilinear), RGB uint8."""
    from PIL import Image

    images = []
    for name in names:
        with Image.open(EXAMPLES / name) as im:
            im = im.convert("RGB")
            w, h = im.size
            s = min(w, h)
            left, top = (w - s) // 2, (h - s) // 2
            im = im.crop((left, top, left + s, top + s)).resize((size, size), Image.BILINEAR)
            images.append(np.asarray(im).copy())
    return images


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "segfpn" / "benchmarks"


def reference_weights(images_file: Path, names: list[str], size: int, seed: int, use_cache: bool) -> Path:
    """torchvision Mask R-CNN state dict with seeded weights calibrated on the images (built in a
    subprocess, cached by seed, images and torchvision version)."""
    import torchvision

    key = hashlib.sha256(json.dumps([names, size, seed, torchvision.__version__]).encode()).hexdigest()[:12]
    path = cache_dir() / f"torchvision_maskrcnn_v1_calibrated_{key}.pth"
    if use_cache and path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    code = ("import sys, numpy as np, torch\n"
            f"sys.path.insert(0, {str(REFERENCE_DIR)!r})\n"
            "from reference import build_torchvision_maskrcnn\n"
            "images = list(np.load(sys.argv[1]).values())\n"
            "model = build_torchvision_maskrcnn(1, seed=int(sys.argv[3]), calibration_images=images)\n"
            "torch.save(model.state_dict(), sys.argv[2] + '.part')\n")
    subprocess.run([sys.executable, "-c", code, str(images_file), str(path), str(seed)], check=True)
    os.replace(str(path) + ".part", path)
    return path


# ---------------------------------------------------------------------------------------------
# Workers: one process per implementation, driven over stdin/stdout (one JSON object a line)

class TorchvisionRunner:
    """torchvision's model; image in (uint8), boolean full-resolution masks out."""

    def __init__(self, weights: Path, device: str):
        import torch
        from torchvision.models.detection import maskrcnn_resnet50_fpn

        self.torch = torch
        self.device = torch.device(device)
        from reference import use_coco_v1_eps

        model = maskrcnn_resnet50_fpn(weights=None, weights_backbone=None, box_score_thresh=0.0)
        model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
        use_coco_v1_eps(model)  # as the builder runs its COCO_V1 weights
        self.model = model.eval().to(self.device)
        self.sync = torch.cuda.synchronize if self.device.type == "cuda" else (lambda: None)
        m = self.model
        self.timer = StageTimer({"transform": m.transform, "backbone": m.backbone.body, "fpn": m.backbone.fpn,
                                 "rpn": m.rpn, "rpn_head": m.rpn.head, "roi_heads": m.roi_heads,
                                 "box_pool": m.roi_heads.box_roi_pool, "box_head": m.roi_heads.box_head,
                                 "box_predictor": m.roi_heads.box_predictor,
                                 "mask_pool": m.roi_heads.mask_roi_pool, "mask_head": m.roi_heads.mask_head,
                                 "mask_predictor": m.roi_heads.mask_predictor}, self.sync)

    def __call__(self, image: np.ndarray) -> dict:
        torch = self.torch
        with torch.inference_mode():
            x = torch.from_numpy(image).to(self.device).permute(2, 0, 1).float() / 255.0
            out = self.model([x])[0]
            masks = (out["masks"][:, 0] >= MASK_THRESHOLD).cpu().numpy()
        return {"boxes": out["boxes"].cpu().numpy(), "scores": out["scores"].cpu().numpy(),
                "labels": out["labels"].cpu().numpy(), "masks": masks}

    def flops(self, image):
        return count_flops(self.model, lambda: self(image))

    def stages(self, start: float, end: float) -> dict:
        t = self.timer
        return {"preprocess": t.events["transform.start"] - start + t.span("transform.start", "transform.end"),
                **t.network_stages(),
                "semantic_head": 0.0,
                "postprocess": end - t.events["roi_heads.end"]}


class SegfpnRunner:
    """segfpn's Predictor; ``optimize``: "full" (the default of segfpn.load), "fold" (BN folding
    only), "none". ``panoptic``: a Panoptic FPN (the same instance weights + a semantic head)."""

    def __init__(self, weights: Path, device: str, precision: str, optimize: str = "full", panoptic: bool = False):
        import torch

        import segfpn

        self.torch = torch
        predictor = segfpn.load(weights, device=device, precision=precision, overrides=ALL_DETECTIONS,
                                optimize=optimize == "full")
        if optimize == "fold":
            from segfpn.model.optimize import fold_frozen_batchnorm

            fold_frozen_batchnorm(predictor.model)
        if panoptic:
            predictor = with_semantic_head(predictor, optimize=optimize == "full")
        self.predictor = predictor
        self.sync = torch.cuda.synchronize if predictor.device.type == "cuda" else (lambda: None)
        m = predictor.model
        semantic = m.semantic_head
        self.timer = StageTimer({"backbone": m.backbone, "fpn": m.fpn, "rpn": m.rpn, "rpn_head": m.rpn.head,
                                 "roi_heads": m.roi_heads, "box_pool": m.roi_heads.box_pooler,
                                 "box_head": m.roi_heads.box_head, "box_predictor": m.roi_heads.box_predictor,
                                 "mask_pool": m.roi_heads.mask_pooler, "mask_head": m.roi_heads.mask_head,
                                 # The predictor runs the semantic head's branches and classifier
                                 # (coarse_logits); the labels are upsampled in its postprocessing.
                                 "semantic_head": semantic.branches["p2"] if semantic else None,
                                 "semantic_predictor": semantic.predictor if semantic else None}, self.sync)

    def __call__(self, image: np.ndarray) -> dict:
        result = self.predictor.predict(image)
        inst = result.instances
        out = {"boxes": inst.boxes, "scores": inst.scores, "labels": inst.labels + 1, "masks": np.asarray(inst.masks),
               "mask_probs": inst.mask_probs}
        if result.panoptic is not None:
            out["segment_ids"] = result.panoptic.segment_ids
        return out

    @contextlib.contextmanager
    def instance_only(self):
        """The same model without its semantic head (Mask R-CNN only)."""
        model = self.predictor.model
        head, model.semantic_head = model.semantic_head, None
        try:
            yield
        finally:
            model.semantic_head = head

    def flops(self, image):
        return count_flops(self.predictor.model, lambda: self.predictor.predict(image))

    def stages(self, start: float, end: float) -> dict:
        t = self.timer
        last = "semantic_predictor.end" if "semantic_predictor.end" in t.events else "roi_heads.end"
        return {"preprocess": t.events["backbone.start"] - start,
                **t.network_stages(),
                "semantic_head": t.span("semantic_head.start", "semantic_predictor.end"),
                "postprocess": end - t.events[last]}


def with_semantic_head(predictor, *, optimize: bool, seed: int = 0):
    """A Panoptic FPN Predictor: ``predictor``'s Mask R-CNN plus a seeded Panoptic FPN semantic
    head (54 classes, detectron2's default widths) whose logits are spread so that the argmax
    varies over the image; every detection takes part in the fusion (worst case)."""
    import torch

    from segfpn.categories import CategorySet, coco_panoptic_separated_stuff
    from segfpn.config import SemanticHeadConfig
    from segfpn.model.semantic_head import SemanticHead
    from segfpn.predictor import Predictor, optimize_for_inference

    model = predictor.model
    config = model.config.replace(semantic_head=SemanticHeadConfig()).with_overrides(
        {"panoptic": {"instance_score_threshold": 0.0}})
    torch.manual_seed(seed)
    head = SemanticHead(model.fpn.out_channels, config.semantic_head)
    with torch.no_grad():
        head.predictor.weight.mul_(20.0)
        head.predictor.bias.normal_(0.0, 0.5)
    model.config = config
    model.semantic_head = head.to(predictor.device).eval()
    if optimize:
        # The rest of the model is optimised already; this converts the new head.
        optimize_for_inference(model.semantic_head, precision=predictor.precision)
    categories = CategorySet(things=predictor.categories.things, stuff=coco_panoptic_separated_stuff())
    return Predictor(model, categories, device=predictor.device, arch=predictor.arch + "+semantic_head",
                     precision=predictor.precision, optimize=False)


def worker_main(args) -> int:
    """Serve commands from the parent: one run of one image at a time."""
    import torch

    torch.set_num_threads(args.threads)
    images = list(np.load(args.images).values())
    out_dir = Path(args.outputs)
    if args.worker == "torchvision":
        runner = TorchvisionRunner(args.weights, args.device)
        if os.environ.get("SEGFPN_KEEP_FREED_MEMORY") == "1":  # the ablation giving it segfpn's memory reuse
            from segfpn.model.optimize import keep_freed_memory

            keep_freed_memory()
    else:
        runner = SegfpnRunner(args.weights, args.device, args.precision, optimize=args.optimize,
                              panoptic=args.worker == "panoptic")
    load_peak = peak_rss_mb()
    can_reset = reset_peak_rss()
    saved = set()
    reply = {"ready": True, "load_peak_rss_mb": load_peak}
    print(json.dumps(reply), flush=True)
    for line in sys.stdin:
        cmd = json.loads(line)
        if cmd["cmd"] == "run":
            i = cmd["image"]
            reply = {}
            if args.worker == "panoptic":
                # Alternate the order so that neither side always runs first.
                order = ("instance", "panoptic") if cmd.get("round", 0) % 2 == 0 else ("panoptic", "instance")
                for kind in order:
                    with runner.instance_only() if kind == "instance" else contextlib.nullcontext():
                        runner.timer.events.clear()
                        start = time.perf_counter()
                        out = runner(images[i])
                        end = time.perf_counter()
                        reply[kind] = end - start
                        reply[kind + "_stages"] = runner.stages(start, end)
                if i not in saved:
                    np.savez_compressed(out_dir / f"{args.name}_{i}.npz", segment_ids=out["segment_ids"])
                    saved.add(i)
            else:
                runner.timer.events.clear()
                start = time.perf_counter()
                out = runner(images[i])
                end = time.perf_counter()
                reply = {"latency": end - start, "stages": runner.stages(start, end)}
                if i not in saved:
                    extra = {"mask_probs": out["mask_probs"]} if "mask_probs" in out else {}
                    np.savez(out_dir / f"{args.name}_{i}.npz", boxes=out["boxes"], scores=out["scores"],
                             labels=out["labels"], masks=np.packbits(out["masks"], axis=-1),
                             mask_shape=np.array(out["masks"].shape), **extra)
                    saved.add(i)
            del out
        elif cmd["cmd"] == "conv_rate":
            reply = {"fp32": conv_rate("fp32"), "bf16": conv_rate("bf16")}
        elif cmd["cmd"] == "flops":
            runner.timer.remove()
            reply = {"flops": runner.flops(images[0])}
        elif cmd["cmd"] == "throughput":
            # Images per second over a stream of images (GPU): no hooks, one sync at the end.
            runner.timer.remove()
            n = cmd["count"]
            start = time.perf_counter()
            for k in range(n):
                runner(images[k % len(images)])
            runner.sync()
            reply = {"images_per_s": n / (time.perf_counter() - start)}
        elif cmd["cmd"] == "finish":
            reply = {"peak_rss_mb": max(load_peak, peak_rss_mb()),
                     "inference_peak_rss_mb": peak_rss_mb() if can_reset else None}
            if torch.cuda.is_available() and args.device.startswith("cuda"):
                reply["gpu_peak_mb"] = torch.cuda.max_memory_allocated() / 2**20
            print(json.dumps(reply), flush=True)
            return 0
        print(json.dumps(reply), flush=True)
    return 0


class Worker:
    """The parent's handle on one worker process."""

    def __init__(self, name: str, kind: str, common: list[str], *, precision: str = "fp32", optimize: str = "full",
                 env: dict | None = None, script: Path | None = None):
        self.name = name
        command = [sys.executable, str(script or Path(__file__).resolve()), "--worker", kind, "--name", name,
                   "--precision", precision, "--optimize", optimize, *common]
        self.process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                        cwd=ROOT, env={**os.environ, **(env or {})})
        self.ready = None

    def send(self, **cmd) -> dict:
        self.process.stdin.write(json.dumps(cmd) + "\n")
        self.process.stdin.flush()
        return self.receive()

    def receive(self) -> dict:
        line = self.process.stdout.readline()
        if not line:
            code = self.process.wait()
            raise RuntimeError(f"benchmark worker {self.name} exited with status {code}")
        return json.loads(line)

    def close(self):
        with contextlib.suppress(Exception):
            self.process.stdin.close()
        with contextlib.suppress(Exception):
            self.process.wait(timeout=60)
        if self.process.poll() is None:
            self.process.kill()


# ---------------------------------------------------------------------------------------------
# Parity (parent)

def load_outputs(path: Path) -> dict:
    data = dict(np.load(path))
    shape = tuple(data.pop("mask_shape"))
    data["masks"] = np.unpackbits(data["masks"], axis=-1, count=shape[-1]).astype(bool).reshape(shape)
    return data


def _or(value, default):
    """``value``, or ``default`` where a comparison had no detection to measure."""
    return default if value is None else value


def parity(reference: dict, ours: dict) -> dict:
    """Every reference detection matched to ours: :func:`segfpn.evaluation.agreement.compare_detections`
    with the tests' tolerances (masks binarised with >= 0.5 on both sides)."""
    return compare_detections(reference, ours, tolerances=PARITY).to_dict()


# ---------------------------------------------------------------------------------------------
# Low precision on a trained model (parent)

def trained_low_precision(precision: str, device: str, num_images: int, workdir: Path) -> dict | None:
    """fp32 against ``precision`` on the bundled trained model (``weights/``), on held-out images
    of its synthetic data set (seed 3, as in weights/README.md): PQ and mask AP of each, and
    the parity of the low-precision detections with the fp32 ones.

    Calibrated random weights amplify rounding at every layer far more than trained ones, so
    their bf16 parity says little about what a user sees; this is that figure.
    """
    if not BUNDLED_MODEL.exists():
        return None
    import segfpn
    from segfpn.data import synthetic
    from segfpn.evaluation.evaluate import evaluate

    data = synthetic.generate(workdir / "heldout", num_images=num_images, seed=3, image_size=(288, 288),
                              max_image_size=(352, 352), progress=False)
    metrics, outputs = {}, {}
    for name in ("fp32", precision):
        predictor = segfpn.load(BUNDLED_MODEL, device=device, precision=name)
        results = outputs[name] = []

        def predict(path, predictor=predictor, results=results):
            result = predictor.predict(path)
            inst = result.instances
            results.append({"boxes": inst.boxes, "scores": inst.scores, "labels": inst.labels,
                            "masks": np.asarray(inst.masks)})
            return result

        predictor_view = type("RecordingPredictor", (), {"predict": staticmethod(predict)})()
        m = evaluate(predictor_view, images_dir=data.image_dir, instances_json=data.instances_json,
                     panoptic_json=data.panoptic_json, panoptic_dir=data.panoptic_dir,
                     out_dir=workdir / f"heldout_eval_{name}", progress=False)
        metrics[name] = {"PQ": m["panoptic"]["All"]["pq"], "mask_AP": m["segm"]["AP"], "box_AP": m["bbox"]["AP"]}
    pairs = [parity(ref, low) for ref, low in zip(outputs["fp32"], outputs[precision])]
    return {"precision": precision, "images": num_images, "metrics": metrics, "parity": pairs}


def print_trained_low_precision(figures: dict) -> None:
    low = figures["precision"]
    m, p = figures["metrics"], figures["parity"]
    total = sum(x["detections"] for x in p)
    strict = sum(x["matched"] for x in p)
    loose = sum(x["loose"] for x in p)
    ious = [x["median_mask_iou"] for x in p if x["median_mask_iou"] is not None]
    print(f"\n== {low} on a trained model: {BUNDLED_MODEL.relative_to(ROOT)}, {figures['images']} held-out "
          f"synthetic images")
    for name in ("fp32", low):
        print(f"  {name:5} PQ {100 * m[name]['PQ']:.1f}, mask AP {100 * m[name]['mask_AP']:.1f}, "
              f"box AP {100 * m[name]['box_AP']:.1f}")
    print(f"  {low} vs fp32 detections: {strict}/{total} matched by the fp32 parity rules, {loose}/{total} same class "
          f"and box IoU >= 0.5; mask IoU min {min(_or(x['min_mask_iou'], 1) for x in p):.3f} / "
          f"median {np.median(ious) if ious else 1:.3f}; max score diff "
          f"{max(_or(x['max_score_diff'], 0) for x in p):.1e}")


# ---------------------------------------------------------------------------------------------
# Driver (parent)

STAGES = ("preprocess", "backbone", "fpn", "rpn_head", "rpn_proposals", "box_roi_align", "box_head", "box_nms",
          "mask_roi_align", "mask_head", "semantic_head", "postprocess")


def run_suite(label: str, weights: Path, images_file: Path, num_images: int, args, workdir: Path) -> dict:
    """Time and compare every implementation on one set of weights; returns the figures."""
    common = ["--weights", str(weights), "--images", str(images_file), "--outputs", str(workdir),
              "--threads", str(args.threads), "--device", args.device]
    # (name, worker kind, precision, optimize, environment)
    specs = [("torchvision", "torchvision", "fp32", "full", {}), ("segfpn_fp32", "segfpn", "fp32", "full", {})]
    if "bf16" in args.precisions:
        specs.append(("segfpn_bf16", "segfpn", "bf16", "full", {}))
    if args.device == "cuda" and "fp16" in args.precisions:
        specs.append(("segfpn_fp16", "segfpn", "fp16", "full", {}))
    if args.ablations:
        # Each of segfpn's CPU measures taken away (BN folding and channels-last; memory reuse),
        # and torchvision given segfpn's memory reuse.
        keep_off = {"SEGFPN_KEEP_FREED_MEMORY": "0"}
        specs += [("segfpn_fp32_plain", "segfpn", "fp32", "none", keep_off),
                  ("segfpn_fp32_fold_only", "segfpn", "fp32", "fold", keep_off),
                  ("segfpn_fp32_no_memory_reuse", "segfpn", "fp32", "full", keep_off),
                  ("torchvision_memory_reuse", "torchvision", "fp32", "full", {"SEGFPN_KEEP_FREED_MEMORY": "1"})]
    if args.panoptic:
        specs.append(("panoptic_fp32", "panoptic", "fp32", "full", {}))
    workers = [Worker(f"{label}_{name}", kind, common, precision=precision, optimize=optimize, env=env)
               for name, kind, precision, optimize, env in specs]
    names = [spec[0] for spec in specs]
    runs = {name: [] for name in names}
    conv_rates = []
    try:
        ready = {name: w.receive() for name, w in zip(names, workers)}
        total_rounds = args.warmup + args.repeats
        for r in range(total_rounds):
            for i in range(num_images):
                for name, w in zip(names, workers):
                    reply = w.send(cmd="run", image=i, round=r)
                    if r >= args.warmup:
                        runs[name].append({"image": i, **reply})
            if r >= args.warmup:
                conv_rates.append(workers[1].send(cmd="conv_rate"))
            print(f"  round {r + 1}/{total_rounds} done" + (" (warm-up)" if r < args.warmup else ""),
                  file=sys.stderr, flush=True)
        flops = workers[1].send(cmd="flops")["flops"]
        throughput = {}
        if args.device == "cuda":
            for name, w in zip(names, workers):
                if not name.startswith("panoptic"):
                    throughput[name] = w.send(cmd="throughput", count=max(20, 5 * num_images))["images_per_s"]
        memory = {name: {**w.send(cmd="finish"), "load_peak_rss_mb": ready[name]["load_peak_rss_mb"]}
                  for name, w in zip(names, workers)}
    finally:
        for w in workers:
            w.close()
    figures = {"label": label, "weights": str(weights), "implementations": {}, "flops": flops,
               "conv_gflops": {k: float(np.median([c[k] for c in conv_rates])) for k in ("fp32", "bf16")},
               "throughput_images_per_s": throughput}
    for name in names:
        if name.startswith("panoptic"):
            pan = [x["panoptic"] for x in runs[name]]
            inst = [x["instance"] for x in runs[name]]
            figures["panoptic"] = {"panoptic_s": float(np.median(pan)), "instance_s": float(np.median(inst)),
                                   "ratio": float(np.median(pan) / np.median(inst)), **memory[name],
                                   "stages_s": {kind: {s: float(np.median([x[kind + "_stages"][s] for x in runs[name]]))
                                                       for s in STAGES} for kind in ("panoptic", "instance")}}
            continue
        latencies = [x["latency"] for x in runs[name]]
        per_image = [float(np.median([x["latency"] for x in runs[name] if x["image"] == i])) for i in range(num_images)]
        stages = {s: float(np.median([x["stages"][s] for x in runs[name]])) for s in STAGES}
        figures["implementations"][name] = {"median_s": float(np.median(latencies)), "per_image_s": per_image,
                                            "stages_s": stages, **memory[name]}
    reference = [load_outputs(workdir / f"{label}_torchvision_{i}.npz") for i in range(num_images)]
    for name in figures["implementations"]:
        if name.startswith("torchvision"):
            continue
        figures["implementations"][name]["parity"] = [
            parity(reference[i], load_outputs(workdir / f"{label}_{name}_{i}.npz")) for i in range(num_images)]
    tv = figures["implementations"]["torchvision"]["median_s"]
    tv_runs = [x["latency"] for x in runs["torchvision"]]
    for name, impl in figures["implementations"].items():
        impl["speedup_vs_torchvision"] = tv / impl["median_s"]
        # Each run is paired with torchvision's run of the same image in the same round (taken
        # seconds apart): the median of those ratios is the least affected by changing load.
        impl["paired_speedup_vs_torchvision"] = float(np.median(
            [t / x["latency"] for t, x in zip(tv_runs, runs[name])]))
    return figures


def print_figures(figures: dict, args, image_names: list[str]) -> None:
    impls = figures["implementations"]
    names = list(impls)
    width = max(14, *(len(n) + 2 for n in names))
    print(f"\n== {figures['label']} weights: {figures['weights']}")
    print(f"images: {', '.join(image_names)} (centre-cropped, {args.size}x{args.size}); "
          f"threads: {args.threads}; device: {args.device}; {args.repeats} timed run(s) per image, medians")
    print(f"{'':26}" + "".join(f"{n:>{width}}" for n in names))
    print(f"{'median latency (s)':26}" + "".join(f"{impls[n]['median_s']:>{width}.3f}" for n in names))
    print(f"{'speed-up vs torchvision':26}"
          + "".join(f"{impls[n]['speedup_vs_torchvision']:>{width - 1}.2f}x" for n in names))
    print(f"{'  median of paired ratios':26}"
          + "".join(f"{impls[n]['paired_speedup_vs_torchvision']:>{width - 1}.2f}x" for n in names))
    print(f"{'peak RSS, process (MB)':26}" + "".join(f"{impls[n]['peak_rss_mb']:>{width}.0f}" for n in names))
    if all(impls[n].get("inference_peak_rss_mb") for n in names):
        print(f"{'peak RSS, inference (MB)':26}"
              + "".join(f"{impls[n]['inference_peak_rss_mb']:>{width}.0f}" for n in names))
    print("per stage (ms):")
    for stage in STAGES:
        values = [impls[n]["stages_s"][stage] * 1000 for n in names]
        if any(v > 0.05 for v in values):
            print(f"  {stage:24}" + "".join(f"{v:>{width}.0f}" for v in values))
    for name in names:
        if "parity" not in impls[name]:
            continue
        p = impls[name]["parity"]
        total = sum(x["detections"] for x in p)
        matched, rounding = sum(x["matched"] for x in p), sum(x["paste_rounding"] for x in p)
        status = "PASS" if all(x["ok"] for x in p) else "FAIL"
        print(f"parity {name}: {matched}/{total} torchvision detections matched"
              + (f", {rounding} more whose paste box rounds to another pixel (our mask pasted in "
                 f"torchvision's box matches)" if rounding else "")
              + f" (detections per image: {', '.join(str(x['ours']) for x in p)}); "
              f"min box IoU {min(_or(x['min_box_iou'], 1) for x in p):.4f}, "
              f"max score diff {max(_or(x['max_score_diff'], 0) for x in p):.1e}, "
              f"mask IoU min {min(_or(x['min_mask_iou'], 1) for x in p):.4f} / "
              f"median {np.median([_or(x['median_mask_iou'], 1) for x in p]):.4f} -> {status}")
        if status == "FAIL" or "bf16" in name or "fp16" in name:
            loose = sum(x["loose"] for x in p)
            diffs = [x["loose_median_score_diff"] for x in p if x.get("loose_median_score_diff") is not None]
            ious = [x["loose_median_mask_iou"] for x in p if x.get("loose_median_mask_iou") is not None]
            print(f"  {name}, same class and box IoU >= 0.5: {loose}/{total}"
                  + (f"; among those, median score diff {np.median(diffs):.1e}, median mask IoU {np.median(ious):.3f}"
                     if diffs else ""))
    if all(impls[n].get("gpu_peak_mb") for n in names):
        print(f"{'peak GPU memory (MB)':26}" + "".join(f"{impls[n]['gpu_peak_mb']:>{width}.0f}" for n in names))
    flops = figures["flops"]
    rate = figures["conv_gflops"]
    floor32 = flops / 1e9 / rate["fp32"]
    floor16 = flops / 1e9 / rate["bf16"]
    print(f"model: {flops / 1e9:.0f} GFLOP per image; on this CPU a 3x3 conv runs at {rate['fp32']:.0f} GFLOP/s fp32, "
          f"{rate['bf16']:.0f} bf16 (channels-last, measured in this run)")
    print(f"CPU floor (every FLOP at that rate): fp32 {floor32:.2f} s, bf16 {floor16:.2f} s; "
          f"segfpn fp32 is {impls['segfpn_fp32']['median_s'] / floor32:.2f}x the fp32 floor, "
          f"torchvision {impls['torchvision']['median_s'] / floor32:.2f}x"
          + (f", segfpn bf16 {impls['segfpn_bf16']['median_s'] / floor16:.2f}x the bf16 floor"
             if "segfpn_bf16" in impls else ""))
    if "panoptic" in figures:
        pan = figures["panoptic"]
        print(f"panoptic FPN (same model + semantic head, all 100 detections fused): {pan['panoptic_s']:.3f} s vs "
              f"instance-only {pan['instance_s']:.3f} s = {pan['ratio']:.2f}x; peak RSS {pan['peak_rss_mb']:.0f} MB")
        extra = {s: (pan["stages_s"]["panoptic"][s] - pan["stages_s"]["instance"][s]) * 1000 for s in STAGES}
        print("  panoptic minus instance-only, per stage (ms): "
              + ", ".join(f"{s} {v:+.0f}" for s, v in extra.items() if abs(v) >= 0.5))
    for name, ips in figures["throughput_images_per_s"].items():
        print(f"GPU throughput {name}: {ips:.1f} images/s")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--short", action="store_true", help="one image, one run, no warm-up (CI smoke test)")
    parser.add_argument("--images", nargs="+", default=None, help="file names in examples/images")
    parser.add_argument("--size", type=int, default=800, help="side of the square test images (default 800)")
    parser.add_argument("--repeats", type=int, default=None, help="timed runs per image (default 5; 1 with --short)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed rounds first (default 1; 0 with --short)")
    parser.add_argument("--precisions", default="fp32,bf16", help="segfpn precisions besides fp32 (bf16; fp16 on CUDA)")
    parser.add_argument("--no-panoptic", dest="panoptic", action="store_false", help="skip the panoptic/instance ratio")
    parser.add_argument("--ablations", action="store_true", help="also time segfpn without BN folding / channels-last")
    parser.add_argument("--checkpoint", default=None, help="a real torchvision COCO checkpoint (default: "
                        f"weights/{COCO_CHECKPOINT} when present)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--no-cache", dest="cache", action="store_false",
                        help=f"rebuild the calibrated reference weights instead of reusing {cache_dir()}")
    parser.add_argument("--json", default=None, help="also write the figures to this file")
    parser.add_argument("--trained-images", type=int, default=None,
                        help="held-out images for low-precision parity on the bundled trained model "
                             "(default 100; 4 with --short; 0 to skip)")
    # Worker mode (internal).
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--name", default="", help=argparse.SUPPRESS)
    parser.add_argument("--weights", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--outputs", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--precision", default="fp32", help=argparse.SUPPRESS)
    parser.add_argument("--optimize", default="full", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.threads = args.threads or os.cpu_count() or 1
    if args.worker:
        args.images = args.images[0]
        return worker_main(args)

    import torch

    args.device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    names = args.images or (list(DEFAULT_IMAGES[:1]) if args.short else list(DEFAULT_IMAGES))
    args.repeats = args.repeats if args.repeats is not None else (1 if args.short else 5)
    args.warmup = args.warmup if args.warmup is not None else (0 if args.short else 1)
    args.precisions = [p for p in args.precisions.split(",") if p]
    all_figures = []
    with tempfile.TemporaryDirectory(prefix="segfpn-bench-") as tmp:
        workdir = Path(tmp)
        images_file = workdir / "images.npz"
        np.savez(images_file, *load_images(names, args.size))
        print(f"building the calibrated reference weights (cached in {cache_dir()}) ...", file=sys.stderr, flush=True)
        suites = [("calibrated random", reference_weights(images_file, names, args.size, args.seed, args.cache))]
        checkpoint = Path(args.checkpoint) if args.checkpoint else ROOT / "weights" / COCO_CHECKPOINT
        if checkpoint.exists():
            suites.append(("COCO", checkpoint))
        for label, weights in suites:
            print(f"timing with {label} weights ...", file=sys.stderr, flush=True)
            figures = run_suite(label.replace(" ", "_"), weights, images_file, len(names), args, workdir)
            figures["label"] = label
            print_figures(figures, args, names)
            all_figures.append(figures)
        trained_images = args.trained_images if args.trained_images is not None else (4 if args.short else 100)
        low = next((p for p in args.precisions if p != "fp32"), None)
        if low and trained_images > 0:
            print("low precision on the bundled trained model ...", file=sys.stderr, flush=True)
            trained = trained_low_precision(low, args.device, trained_images, workdir)
            if trained:
                print_trained_low_precision(trained)
                all_figures.append({"label": "trained low precision", **trained})
    if args.json:
        Path(args.json).write_text(json.dumps(all_figures, indent=1))
    ok = all(x["ok"] for f in all_figures if "implementations" in f
             for x in f["implementations"]["segfpn_fp32"]["parity"])
    print("\nfp32 parity with torchvision: " + ("PASS" if ok else "FAIL"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
