"""How fast the pyramid views are: a full run, the what-if (RoI heads re-run on the kept pyramid)
and explaining one detection, on the 1800x1200 truck photo with 100 detections.

    python benchmarks/pyramid_views.py                    # both models, 3 timed runs each
    OPENBLAS_NUM_THREADS=1 python benchmarks/pyramid_views.py --runs 5 --threads 1   # steady on a shared machine

On a machine other processes share, threads that wait for each other dominate: torch's (use
``--threads 1``) and numpy's OpenBLAS, which the PCA of ``explain`` runs on (``explain(i)`` of the
R50 measured 12 ms with ``OPENBLAS_NUM_THREADS=1`` and 0.5 s with OpenBLAS's two threads there,
nearly all of it in one 256 x 256 ``eigh``).

Models, each with a score threshold of 0 so that 100 detections reach the mask head, the pasting
and the diff:

* "bundled": weights/synthetic_panoptic_fpn.safetensors (R18, 64-channel FPN, 320-384 px input:
  the photo runs at 256x384);
* "R50": a full-size Panoptic FPN R50 with detectron2's settings and segfpn's seeded random
  initialisation (as benchmarks/large_image_memory.py builds it): the photo runs at 800x1200.

Printed per model (medians of ``--runs`` runs, the calls interleaved so that the shared machine's
load changes touch every figure alike): ``predict`` (image in, Result out, as the app runs it),
``inspect`` (the same run keeping the pyramid), the what-if with every RoI forced onto p3 and with
s0 = 112 (heads only: RoI heads, boxes and masks to the image, the diff) and its ratio to
``predict`` in the same round (goal: under 40 %), and ``explain(i)``: the first call (which runs
the box head once more to find each detection's proposal) and the next ones.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
PHOTO = ROOT / "examples" / "images" / "truck_1800x1200.jpg"
BUNDLED = ROOT / "weights" / "synthetic_panoptic_fpn.safetensors"
ALL_DETECTIONS = {"box_head": {"score_threshold": 0.0}}


def predictor(name: str):
    import segfpn
    from segfpn.categories import coco_panoptic_category_set
    from segfpn.config import detectron2_panoptic_fpn
    from segfpn.model.detector import SegFPN

    if name == "bundled":
        return segfpn.load(BUNDLED, device="cpu", overrides=ALL_DETECTIONS)
    torch.manual_seed(0)
    config = detectron2_panoptic_fpn(50).with_overrides(ALL_DETECTIONS)
    return segfpn.Predictor(SegFPN(config).eval(), coco_panoptic_category_set(), device="cpu",
                            arch="panoptic_fpn_R_50", optimize=True)


def bench(name: str, runs: int) -> None:
    from segfpn.imageio import read_image

    model = predictor(name)
    image = read_image(PHOTO)
    result = model.predict(image)  # warm-up: first-call allocations and kernels
    inspection = model.inspect(image)
    model.what_if(inspection, level=3)
    # Interleaved, so that a change in the machine's load touches every figure alike (it is shared).
    seconds = {key: [] for key in ("predict", "inspect", "forced", "smaller", "ratio_forced", "ratio_smaller")}
    for _ in range(runs):
        start = time.perf_counter()
        result = model.predict(image)
        seconds["predict"].append(time.perf_counter() - start)
        start = time.perf_counter()
        inspection = model.inspect(image)
        seconds["inspect"].append(time.perf_counter() - start)
        start = time.perf_counter()
        forced = model.what_if(inspection, level=3)
        seconds["forced"].append(time.perf_counter() - start)
        start = time.perf_counter()
        smaller = model.what_if(inspection, canonical_size=112)
        seconds["smaller"].append(time.perf_counter() - start)
        seconds["ratio_forced"].append(seconds["forced"][-1] / seconds["predict"][-1])
        seconds["ratio_smaller"].append(seconds["smaller"][-1] / seconds["predict"][-1])
    median = {key: statistics.median(values) for key, values in seconds.items()}
    start = time.perf_counter()
    model.explain(inspection, 0)
    first_explain = time.perf_counter() - start
    start = time.perf_counter()
    count = min(len(result.instances), 21)
    for i in range(1, count):
        model.explain(inspection, i)
    explain = (time.perf_counter() - start) / max(count - 1, 1)

    stages = ", ".join(f"{k} {1000 * v:.0f}" for k, v in result.timings.items())
    heads = ", ".join(f"{k} {1000 * v:.0f}" for k, v in forced.timings.items())
    height, width = result.input_size
    print(f"\n{name}: {PHOTO.name} at {width}x{height}, {len(result.instances)} detections, "
          f"{torch.get_num_threads()} threads, medians of {runs} interleaved runs")
    print(f"  predict (full run)            {1000 * median['predict']:7.0f} ms   (last run: {stages} ms)")
    print(f"  inspect (the run, kept)       {1000 * median['inspect']:7.0f} ms")
    print(f"  what_if(level=3)              {1000 * median['forced']:7.0f} ms   {100 * median['ratio_forced']:5.1f} % "
          f"of predict (goal < 40 %; last run: {heads} ms; {forced.counts})")
    print(f"  what_if(canonical_size=112)   {1000 * median['smaller']:7.0f} ms   "
          f"{100 * median['ratio_smaller']:5.1f} % of predict ({smaller.counts})")
    print(f"  explain(i), first call        {1000 * first_explain:7.0f} ms   (runs the box head once more to find "
          "every detection's proposal)")
    print(f"  explain(i), next calls        {1000 * explain:7.1f} ms   (mean of {count - 1})")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default="bundled,R50", help="comma-separated: bundled, R50 (default %(default)s)")
    parser.add_argument("--runs", type=int, default=3, help="timed runs per figure (default %(default)s)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads (default: torch's, 2 on the project's machine; 1 gives steadier "
                             "figures while other processes share the cores)")
    args = parser.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(max(1, args.threads))
    for name in args.models.split(","):
        if name not in ("bundled", "R50"):
            parser.error(f"unknown model {name!r}: use bundled and/or R50")
        bench(name, max(1, args.runs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
