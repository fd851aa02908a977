"""The app under load: N gradio_client sessions at once, each sending its photos one after the
other; prints requests/s, p50/p95 latency, the "busy" answers and the server's peak memory.

    python benchmarks/load_app.py                       # 16 clients x 3 photos, queue of 6
    python benchmarks/load_app.py --clients 32 --queue-size 16 --full-input

The app runs in a process of its own on 127.0.0.1 (tests/robustness/serve_app.py: app.py's
build_demo and launch, the mini test checkpoint), so the memory figures are the server's own
(/proc/<pid>/status: VmRSS now, VmHWM peak). By default the model runs at a 128-256 px network
input (``--full-input``: 800-1333 px, as app.py does). Photos are 64-200 px crops of
examples/images, every one of another size; each answer is checked to be its own photo's.
The same run is tests/robustness/test_load.py.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "robustness"))

from app_process import AppProcess, segment  # noqa: E402
from load_clients import make_photos, run_load  # noqa: E402


def _mixed_up(run) -> int:
    """Answers whose overlay is not their own photo (score 1.0 draws nothing over it)."""
    wrong = 0
    for request in run.completed:
        overlay = np.asarray(Image.open(request.answer[0]).convert("RGB"))
        wrong += not np.array_equal(overlay, np.asarray(Image.open(request.photo).convert("RGB")))
    return wrong


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--photos", type=int, default=3, help="photos per client (default 3)")
    parser.add_argument("--queue-size", type=int, default=6)
    parser.add_argument("--full-input", action="store_true",
                        help="run the model at app.py's 800-1333 px (default: 128-256 px)")
    parser.add_argument("--malloc-arenas", type=int, default=None,
                        help="MALLOC_ARENA_MAX for the server (default: glibc's own)")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="segfpn-load-") as folder:
        folder = Path(folder)
        photos = make_photos(folder / "photos", args.clients, args.photos)
        env = {"MALLOC_ARENA_MAX": str(args.malloc_arenas)} if args.malloc_arenas else None
        options = ["--queue-size", str(args.queue_size)] + ([] if args.full_input else ["--small-input"])
        server = AppProcess.serve(folder / "server", *options, env=env)
        try:
            from gradio_client import Client

            warm = Client(server.url, verbose=False)
            segment(warm, photos[0][0])  # the first run allocates the model's working memory
            warm.close()
            before = server.memory()
            server.reset_peak()
            run = run_load(server.url, photos)
            after = server.memory()
            alive = server.alive()
        finally:
            server.stop()
        sides = [max(Image.open(p).size) for mine in photos for p in mine]
        mixed_up = _mixed_up(run)

    print(f"load: {args.clients} clients at once x {args.photos} photos ({min(sides)}-{max(sides)} px), "
          f"queue size {args.queue_size}, mini checkpoint at "
          f"{'800-1333' if args.full_input else '128-256'} px network input, cpu")
    print(run.report())
    print(f"answers mixed up between sessions: {mixed_up}")
    print(f"server memory: {before['rss']:.0f} MB before, peak {after['peak']:.0f} MB "
          f"(+{after['peak'] - before['rss']:.0f} MB), {after['rss']:.0f} MB after; "
          f"server {'still serving' if alive else 'DIED'}")

if __name__ == "__main__":
    main()
