"""Speed and parity of segfpn's box-only detectors against torchvision's own builders: Faster R-CNN
and RetinaNet, v1 and v2, each with the same weights on the same photos.

    python benchmarks/detectors_speed.py                  # the four models, 4 photos, 3 timed runs each
    python benchmarks/detectors_speed.py --short          # one photo, one run per model
    python benchmarks/detectors_speed.py --models retinanet_resnet50_fpn --repeats 5

The machinery is benchmarks/maskrcnn_speed.py's: photos centre-cropped to SIZE x SIZE (default
800, the models' own input size), torchvision's model with seeded calibrated random weights
(``tests/reference.py``'s ``build_torchvision_detector``, cached), every implementation in its own
process, the processes taking turns image by image, medians. Faster R-CNN runs with a score
threshold of 0 (100 detections through every head), RetinaNet with its own settings (threshold
0.05, top 1000 per level, up to 300 detections). Prints, per model, the median latency of each,
the speed-up (and the median of the ratios of runs paired image by image), peak resident memory
and the parity of the outputs (every torchvision detection matched: same class, box IoU >= 0.99,
score within 1e-3). Exit status 0 only if every model's parity passes.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from maskrcnn_speed import (DEFAULT_IMAGES, PARITY, REFERENCE_DIR, Worker, cache_dir, load_images,  # noqa: E402
                            peak_rss_mb, reset_peak_rss)

from segfpn.evaluation.agreement import compare_detections  # noqa: E402

#: builder -> (segfpn overrides, torchvision builder keyword arguments): the same settings on both sides.
MODELS = {
    "fasterrcnn_resnet50_fpn": ({"box_head": {"score_threshold": 0.0}}, {"box_score_thresh": 0.0}),
    "fasterrcnn_resnet50_fpn_v2": ({"box_head": {"score_threshold": 0.0}}, {"box_score_thresh": 0.0}),
    "retinanet_resnet50_fpn": (None, {}),
    "retinanet_resnet50_fpn_v2": (None, {}),
}


def reference_weights(model: str, images_file: Path, names: list[str], size: int, seed: int, use_cache: bool) -> Path:
    """torchvision ``model``'s state dict with seeded weights calibrated on the images (built in a
    subprocess, cached by model, seed, images and torchvision version)."""
    import torchvision

    key = hashlib.sha256(json.dumps([model, names, size, seed, torchvision.__version__]).encode()).hexdigest()[:12]
    path = cache_dir() / f"{model}_calibrated_{key}.pth"
    if use_cache and path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    code = ("import sys, json, numpy as np, torch\n"
            f"sys.path.insert(0, {str(REFERENCE_DIR)!r})\n"
            "from reference import build_torchvision_detector\n"
            "images = list(np.load(sys.argv[1]).values())\n"
            "model = build_torchvision_detector(sys.argv[4], seed=int(sys.argv[3]), calibration_images=images,\n"
            "                                   **json.loads(sys.argv[5]))\n"
            "torch.save(model.state_dict(), sys.argv[2] + '.part')\n")
    subprocess.run([sys.executable, "-c", code, str(images_file), str(path), str(seed), model,
                    json.dumps(MODELS[model][1])], check=True)
    os.replace(str(path) + ".part", path)
    return path


# ---------------------------------------------------------------------------------------------
# Workers


class TorchvisionDetector:
    """torchvision's builder with ``weights=None`` and the state dict loaded, eps set as its COCO_V1
    weights run (v1), eval mode; uint8 image in, boxes out."""

    def __init__(self, model: str, weights: Path):
        import torch
        from torchvision.models import detection

        from reference import TORCHVISION_BUILDERS, use_coco_v1_eps

        self.torch = torch
        net = getattr(detection, model)(weights=None, weights_backbone=None, **MODELS[model][1])
        net.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
        if TORCHVISION_BUILDERS[model]:
            use_coco_v1_eps(net)
        self.model = net.eval()

    def __call__(self, image: np.ndarray) -> dict:
        torch = self.torch
        with torch.inference_mode():
            out = self.model([torch.from_numpy(image).permute(2, 0, 1).float() / 255.0])[0]
        return {"boxes": out["boxes"].numpy(), "scores": out["scores"].numpy(), "labels": out["labels"].numpy()}


class SegfpnDetector:
    """``segfpn.load`` on the same state dict (default: optimised for inference)."""

    def __init__(self, model: str, weights: Path):
        import segfpn

        self.predictor = segfpn.load(weights, device="cpu", overrides=MODELS[model][0])
        assert self.predictor.arch == model, self.predictor.arch

    def __call__(self, image: np.ndarray) -> dict:
        inst = self.predictor.predict(image).instances
        # Labels in torchvision's space (COCO ids, slot 0 = background) for the comparison.
        return {"boxes": inst.boxes, "scores": inst.scores, "labels": inst.labels + 1, "levels": inst.levels}


def worker_main(args) -> int:
    import torch

    torch.set_num_threads(args.threads)
    images = list(np.load(args.images).values())
    runner = (TorchvisionDetector if args.worker == "torchvision" else SegfpnDetector)(args.model, Path(args.weights))
    load_peak = peak_rss_mb()
    can_reset = reset_peak_rss()
    print(json.dumps({"ready": True}), flush=True)
    saved = set()
    for line in sys.stdin:
        cmd = json.loads(line)
        if cmd["cmd"] == "run":
            i = cmd["image"]
            start = time.perf_counter()
            out = runner(images[i])
            reply = {"latency": time.perf_counter() - start}
            if i not in saved:
                np.savez(Path(args.outputs) / f"{args.name}_{i}.npz", **out)
                saved.add(i)
        else:  # finish
            print(json.dumps({"peak_rss_mb": max(load_peak, peak_rss_mb()),
                              "inference_peak_rss_mb": peak_rss_mb() if can_reset else None}), flush=True)
            return 0
        print(json.dumps(reply), flush=True)
    return 0


# ---------------------------------------------------------------------------------------------
# Driver


def run_model(model: str, weights: Path, images_file: Path, num_images: int, args, workdir: Path) -> dict:
    common = ["--model", model, "--weights", str(weights), "--images", str(images_file), "--outputs", str(workdir),
              "--threads", str(args.threads)]
    workers = {kind: Worker(f"{model}_{kind}", kind, common, script=Path(__file__).resolve())
               for kind in ("torchvision", "segfpn")}
    runs = {kind: [] for kind in workers}
    try:
        for w in workers.values():
            w.receive()
        for r in range(args.warmup + args.repeats):
            for i in range(num_images):
                for kind, w in workers.items():
                    reply = w.send(cmd="run", image=i)
                    if r >= args.warmup:
                        runs[kind].append(reply["latency"])
        memory = {kind: w.send(cmd="finish") for kind, w in workers.items()}
    finally:
        for w in workers.values():
            w.close()
    parity = []
    levels = set()
    for i in range(num_images):
        ref = dict(np.load(workdir / f"{model}_torchvision_{i}.npz"))
        ours = dict(np.load(workdir / f"{model}_segfpn_{i}.npz"))
        levels |= set(ours.pop("levels").tolist())
        parity.append(compare_detections(ref, ours, tolerances=PARITY).to_dict())
    tv, sf = np.median(runs["torchvision"]), np.median(runs["segfpn"])
    return {"model": model, "torchvision_s": float(tv), "segfpn_s": float(sf), "speedup": float(tv / sf),
            "paired_speedup": float(np.median([t / s for t, s in zip(runs["torchvision"], runs["segfpn"])])),
            "memory": memory, "parity": parity, "levels": sorted(levels)}


def print_row(f: dict) -> None:
    p = f["parity"]
    total, matched = sum(x["detections"] for x in p), sum(x["matched"] for x in p)
    status = "PASS" if all(x["ok"] for x in p) else "FAIL"
    min_box_iou = min(x["min_box_iou"] or 1 for x in p)
    max_score_diff = max(x["max_score_diff"] or 0 for x in p)
    levels = ",".join(f"p{v}" for v in f["levels"])
    print(f"{f['model']:28} {f['torchvision_s']:>9.3f} {f['segfpn_s']:>9.3f} {f['speedup']:>8.2f}x "
          f"{f['paired_speedup']:>8.2f}x {f['memory']['torchvision']['peak_rss_mb']:>7.0f} "
          f"{f['memory']['segfpn']['peak_rss_mb']:>7.0f}   {matched}/{total} matched, min box IoU "
          f"{min_box_iou:.4f}, max score diff {max_score_diff:.1e}, levels {levels} -> {status}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated torchvision builder names")
    parser.add_argument("--short", action="store_true", help="one image, one run, no warm-up")
    parser.add_argument("--images", nargs="+", default=None, help="file names in examples/images")
    parser.add_argument("--size", type=int, default=800, help="side of the square test images (default 800)")
    parser.add_argument("--repeats", type=int, default=None, help="timed runs per image (default 3; 1 with --short)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed rounds first (default 1; 0 with --short)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--no-cache", dest="cache", action="store_false", help="rebuild the calibrated weights")
    parser.add_argument("--json", default=None, help="also write the figures to this file")
    # Worker mode (internal; the flags of maskrcnn_speed.Worker's command line are accepted and ignored).
    for flag in ("--worker", "--name", "--model", "--weights", "--outputs", "--precision", "--optimize"):
        parser.add_argument(flag, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.threads = args.threads or os.cpu_count() or 1
    if args.worker:
        args.images = args.images[0]
        return worker_main(args)
    models = [m for m in args.models.split(",") if m]
    unknown = [m for m in models if m not in MODELS]
    if unknown:
        parser.error(f"unknown model(s) {', '.join(unknown)}; known: {', '.join(MODELS)}")
    names = args.images or (list(DEFAULT_IMAGES[:1]) if args.short else list(DEFAULT_IMAGES))
    args.repeats = args.repeats if args.repeats is not None else (1 if args.short else 3)
    args.warmup = args.warmup if args.warmup is not None else (0 if args.short else 1)
    figures = []
    with tempfile.TemporaryDirectory(prefix="segfpn-bench-") as tmp:
        workdir = Path(tmp)
        images_file = workdir / "images.npz"
        np.savez(images_file, *load_images(names, args.size))
        for model in models:
            print(f"{model}: calibrated reference weights (cached in {cache_dir()}) ...", file=sys.stderr, flush=True)
            weights = reference_weights(model, images_file, names, args.size, args.seed, args.cache)
            print(f"{model}: timing ...", file=sys.stderr, flush=True)
            figures.append(run_model(model, weights, images_file, len(names), args, workdir))
    print(f"\nimages: {', '.join(names)} (centre-cropped, {args.size}x{args.size}); threads: {args.threads}; "
          f"{args.repeats} timed run(s) per image after {args.warmup} warm-up round(s), medians; CPU")
    print(f"{'model':28} {'tv (s)':>9} {'segfpn':>9} {'speed-up':>9} {'paired':>9} "
          f"{'tv MiB':>7} {'ours MiB':>7}   parity")
    for f in figures:
        print_row(f)
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=1))
    ok = all(x["ok"] for f in figures for x in f["parity"])
    print("\nparity with torchvision: " + ("PASS" if ok else "FAIL"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
