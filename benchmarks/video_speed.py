"""Video throughput of `segfpn.video.predict_video`: frames segmented per second, whole pipeline
(decode, model, overlay, H.264 encode, results JSON), for the bundled model and a full-size
Panoptic FPN R50 with random weights.

    python benchmarks/video_speed.py                         # 640x360, 2 s at 15 frames/s
    python benchmarks/video_speed.py --size 1280x720 --seconds 4 --device cuda --models R50

The clip is made from a real photo (examples/images/street_wide_17790319373.jpg) panning across
it, encoded with libx264. "bundled": weights/synthetic_panoptic_fpn.safetensors; "R50": detectron2's
Panoptic FPN R50 settings with segfpn's random initialisation and every detection kept (score
threshold 0, 100 detections per frame: the worst case for masks, fusion and drawing), saved once
as .safetensors in a temporary folder. Also printed: the model alone (predict on the decoded
frames) and the peak resident memory of this process.
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
PHOTO = ROOT / "examples" / "images" / "street_wide_17790319373.jpg"
BUNDLED = ROOT / "weights" / "synthetic_panoptic_fpn.safetensors"


def make_clip(path: Path, size: tuple[int, int], seconds: float, fps: int) -> Path:
    import av
    from PIL import Image

    w, h = size
    with Image.open(PHOTO) as photo:
        scale = max(w * 1.5 / photo.width, h / photo.height)
        wide = np.asarray(photo.convert("RGB").resize((round(photo.width * scale), round(photo.height * scale))))
    count = int(seconds * fps)
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        for i in range(count):
            x = int((wide.shape[1] - w) * i / max(count - 1, 1))
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(wide[:h, x:x + w]), format="rgb24")
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    return path


def r50_checkpoint(workdir: Path) -> Path:
    from segfpn.categories import coco_panoptic_category_set
    from segfpn.checkpoints.loading import save_native
    from segfpn.config import detectron2_panoptic_fpn
    from segfpn.model.detector import SegFPN

    path = workdir / "panoptic_fpn_R50_random.safetensors"
    config = detectron2_panoptic_fpn(50).with_overrides({"box_head": {"score_threshold": 0.0}})
    save_native(path, SegFPN(config).eval(), coco_panoptic_category_set(), arch="panoptic_fpn_R_50")
    return path


def measure(name: str, weights: Path, clip: Path, out: Path, *, device: str, precision: str) -> None:
    import segfpn
    from segfpn.video import predict_video, read_frames

    predictor = segfpn.load(weights, device=device, precision=precision)
    frames = [f.rgb for f in read_frames(clip)]
    predictor.predict(frames[0])  # warm-up
    start = time.perf_counter()
    for rgb in frames:
        predictor.predict(rgb)
    model_only = time.perf_counter() - start
    start = time.perf_counter()
    report = predict_video(predictor, clip, out, progress_bar=False)
    whole = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"{name:8s} {report.frames_done:4d} frames  {report.frames_done / whole:7.2f} frames/s "
          f"(model alone {len(frames) / model_only:6.2f} frames/s)  peak RSS so far {peak:6.0f} MiB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="640x360")
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--fps", type=int, default=15)
    parser.add_argument("--models", default="bundled,R50")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="fp32")
    args = parser.parse_args()
    size = tuple(int(v) for v in args.size.lower().split("x"))
    import torch

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {args.device}, "
          f"clip {size[0]}x{size[1]}, {args.seconds:g} s at {args.fps} frames/s")
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        clip = make_clip(workdir / "clip.mp4", size, args.seconds, args.fps)
        for run, name in enumerate(args.models.split(",")):
            weights = BUNDLED if name == "bundled" else r50_checkpoint(workdir)
            measure(name, weights, clip, workdir / f"run{run}", device=args.device, precision=args.precision)


if __name__ == "__main__":
    main()
