"""Peak memory of `segfpn predict` and of one app request on a large photo with 100 detections.

    python benchmarks/large_image_memory.py            # 6000x4000, both models, CLI and app
    python benchmarks/large_image_memory.py --size 3000x2000 --models mini --no-app

The photo is a real one (examples/images/truck_1800x1200.jpg) scaled up to the size asked for and
saved as a JPEG. Each model gets a score threshold of 0, so that 100 detections reach the masks,
the panoptic fusion and the files, as the worst case:

* "mini": detectron2's narrow Panoptic FPN of tests/data/d2_mini (model-zoo .pkl);
* "R50": a full-size Panoptic FPN R50 (detectron2 settings) with segfpn's random initialisation,
  written to segfpn's .safetensors once (in a temporary folder).

The CLI runs in a process of its own; its peak resident memory is the kernel's maximum RSS of that
child (``getrusage(RUSAGE_CHILDREN)``). The app is ``python app.py`` serving the same checkpoint,
called through gradio_client: the server's resident memory (VmRSS) before the request, its peak
during it (VmHWM, reset first through /proc/<pid>/clear_refs) and after it. Targets (README):
under 2 GB for the CLI, under +1 GB per app request.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PHOTO = ROOT / "examples" / "images" / "truck_1800x1200.jpg"
MINI = ROOT / "tests" / "data" / "d2_mini" / "panoptic_fpn_mini.pkl"
ALL_DETECTIONS = {"box_head": {"score_threshold": 0.0}}


def make_photo(size: tuple[int, int], path: Path) -> Path:
    from PIL import Image

    with Image.open(PHOTO) as image:
        image.convert("RGB").resize(size, Image.LANCZOS).save(path, quality=90)
    return path


def checkpoint(name: str, workdir: Path) -> Path:
    """The checkpoint of ``name`` with every detection kept, as a segfpn .safetensors file."""
    import segfpn
    from segfpn.checkpoints.loading import load_checkpoint, save_native
    from segfpn.categories import coco_panoptic_category_set
    from segfpn.config import detectron2_panoptic_fpn
    from segfpn.model.detector import SegFPN

    path = workdir / f"{name}_all_detections.safetensors"
    if name == "mini":
        loaded = load_checkpoint(MINI, overrides=ALL_DETECTIONS)
        save_native(path, loaded.model, loaded.categories, arch=loaded.arch)
    else:
        config = detectron2_panoptic_fpn(50).with_overrides(ALL_DETECTIONS)
        save_native(path, SegFPN(config).eval(), coco_panoptic_category_set(), arch="panoptic_fpn_R_50")
    segfpn.load(path, device="cpu")  # it loads
    return path


def run_cli(weights: Path, image: Path, out: Path) -> dict:
    start = time.perf_counter()
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    proc = subprocess.run([sys.executable, "-m", "segfpn.cli", "predict", str(image), "--weights", str(weights),
                           "--out", str(out), "--device", "cpu", "--no-progress"],
                          cwd=ROOT, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"segfpn predict failed: {proc.stderr}")
    peak_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    if peak_kb <= before:
        raise RuntimeError("this child's peak is below an earlier child's: run one CLI case per process")
    results = json.loads((out / f"{image.stem}.instances.json").read_text())
    return {"peak_mb": peak_kb / 1024, "seconds": seconds, "detections": len(results)}


def _status(pid: int) -> dict[str, float]:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = int(value.split()[0]) / 1024
    return fields


def run_app(weights: Path, image: Path) -> dict:
    from gradio_client import Client, handle_file

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    command = [sys.executable, "app.py", "--port", str(port), "--device", "cpu", "--weights", str(weights)]
    server = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              env={**os.environ, "SEGFPN_OFFLINE": "1"})
    try:
        deadline = time.time() + 180
        while True:
            try:
                client = Client(f"http://127.0.0.1:{port}/", verbose=False)
                break
            except Exception:
                if time.time() > deadline or server.poll() is not None:
                    raise RuntimeError("the app did not start") from None
                time.sleep(1)
        # One small request first: what a server has once it has served anyone.
        small = image.with_name("small.jpg")
        make_photo((640, 427), small)
        client.predict(image=handle_file(str(small)), score=0.5, api_name="/segment")
        time.sleep(1)
        before = _status(server.pid)["VmRSS"]
        Path(f"/proc/{server.pid}/clear_refs").write_text("5")  # reset VmHWM to VmRSS
        start = time.perf_counter()
        outputs = client.predict(image=handle_file(str(image)), score=0.5, api_name="/segment")
        seconds = time.perf_counter() - start
        time.sleep(1)
        status = _status(server.pid)
        coco = json.loads(Path(outputs[2]).read_text())
        return {"before_mb": before, "peak_mb": status["VmHWM"], "after_mb": status["VmRSS"], "seconds": seconds,
                "detections": len(coco)}
    finally:
        server.terminate()
        server.wait(30)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", default="6000x4000", help="WxH of the photo (default %(default)s)")
    parser.add_argument("--models", default="mini,R50", help="comma-separated: mini, R50 (default %(default)s)")
    parser.add_argument("--no-app", action="store_true", help="the CLI only")
    args = parser.parse_args(argv)
    width, height = (int(v) for v in args.size.lower().split("x"))
    with tempfile.TemporaryDirectory(prefix="segfpn-large-") as tmp:
        workdir = Path(tmp)
        image = make_photo((width, height), workdir / f"photo_{width}x{height}.jpg")
        print(f"photo: {image.name}, {image.stat().st_size / 1e6:.1f} MB JPEG; "
              "every detection kept (score threshold 0)")
        for name in args.models.split(","):
            weights = checkpoint(name, workdir)
            # Each CLI case in a fresh interpreter, so that RUSAGE_CHILDREN is this child's alone.
            cli = json.loads(subprocess.run(
                [sys.executable, __file__, "--cli-case", str(weights), str(image), str(workdir / f"out_{name}")],
                capture_output=True, text=True, check=True).stdout)
            print(f"{name:5} segfpn predict: peak RSS {cli['peak_mb']:.0f} MB, {cli['seconds']:.1f} s, "
                  f"{cli['detections']} detections (target: under 2048 MB)")
            if not args.no_app:
                app = run_app(weights, image)
                print(f"{name:5} app request:    server {app['before_mb']:.0f} MB before, peak {app['peak_mb']:.0f} MB "
                      f"(+{app['peak_mb'] - app['before_mb']:.0f} MB), {app['after_mb']:.0f} MB after; "
                      f"{app['seconds']:.1f} s, {app['detections']} detections (target: under +1024 MB)")
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "--cli-case":
        print(json.dumps(run_cli(Path(sys.argv[2]), Path(sys.argv[3]), Path(sys.argv[4]))))
        sys.exit(0)
    sys.exit(main())
