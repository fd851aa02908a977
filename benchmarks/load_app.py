"""The app under load: N gradio_client sessions at once, each sending its photos one after the
other, in several rounds of new sessions; prints requests/s, p50/p95 latency, the "busy"
answers, and the server's memory: resident after each round (once idle) and the peak.

    python benchmarks/load_app.py                       # 4 rounds of 16 clients x 3 photos, queue of 6
    python benchmarks/load_app.py --clients 32 --queue-size 16 --full-input --rounds 2

The app runs in a process of its own on 127.0.0.1 (tests/robustness/serve_app.py: app.py's
build_demo and launch, the mini test checkpoint), so the memory figures are the server's own
(/proc/<pid>/status: VmRSS now, VmHWM peak). By default the model runs at a 128-256 px network
input (``--full-input``: 800-1333 px, as app.py does). Photos are 64-200 px crops of
examples/images, every one of another size; each answer is checked to be its own photo's.
The same run is tests/robustness/test_load.py. Memory comes back: after each round the server
is left idle for ``--idle-s`` seconds (the app hands freed memory back to the OS after 2 s
idle), and the sessions of a round keep their last runs within ``--session-memory-mb``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
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
    parser.add_argument("--rounds", type=int, default=4,
                        help="rounds of new sessions, one after the other (default %(default)s)")
    parser.add_argument("--idle-s", type=float, default=5.0,
                        help="seconds the server is left idle after each round before its "
                             "memory is read (default %(default)s)")
    parser.add_argument("--session-memory-mb", type=int, default=None,
                        help="the server's budget for the sessions' runs (default: app.py's)")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="segfpn-load-") as folder:
        folder = Path(folder)
        rounds = [make_photos(folder / f"photos{r}", args.clients, args.photos)
                  for r in range(args.rounds)]
        env = {"MALLOC_ARENA_MAX": str(args.malloc_arenas)} if args.malloc_arenas else None
        options = ["--queue-size", str(args.queue_size)] + ([] if args.full_input else ["--small-input"])
        if args.session_memory_mb:
            options += ["--session-memory-mb", str(args.session_memory_mb)]
        server = AppProcess.serve(folder / "server", *options, env=env)
        runs, memory = [], []
        try:
            from gradio_client import Client

            warm = Client(server.url, verbose=False)
            segment(warm, rounds[0][0][0])  # the first run allocates the model's working memory
            warm.close()
            time.sleep(args.idle_s)
            before = server.memory()
            for photos in rounds:
                server.reset_peak()
                runs.append(run_load(server.url, photos))
                peak = server.memory()["peak"]
                time.sleep(args.idle_s)
                memory.append({"peak": peak, "rss": server.memory()["rss"]})
            alive = server.alive()
        finally:
            server.stop()
        sides = [max(Image.open(p).size) for photos in rounds for mine in photos for p in mine]
        mixed_up = sum(_mixed_up(run) for run in runs)

    print(f"load: {args.rounds} rounds of {args.clients} new clients at once x {args.photos} photos "
          f"({min(sides)}-{max(sides)} px), queue size {args.queue_size}, mini checkpoint at "
          f"{'800-1333' if args.full_input else '128-256'} px network input, cpu")
    for i, (run, mem) in enumerate(zip(runs, memory), 1):
        print(f"round {i}: " + run.report().replace("\n", "\n         "))
        print(f"         server memory: peak {mem['peak']:.0f} MB (+{mem['peak'] - before['rss']:.0f}), "
              f"{mem['rss']:.0f} MB resident {args.idle_s:.0f} s after the round "
              f"(+{mem['rss'] - before['rss']:.0f})")
    print(f"answers mixed up between sessions: {mixed_up}")
    print(f"server memory: {before['rss']:.0f} MB before the load; resident after each round: "
          + ", ".join(f"{m['rss']:.0f}" for m in memory)
          + f" MB; highest peak {max(m['peak'] for m in memory):.0f} MB; "
          f"server {'still serving' if alive else 'DIED'}")

if __name__ == "__main__":
    main()
