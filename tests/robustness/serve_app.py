"""Serve the app on 127.0.0.1 for the robustness tests and the load benchmark.

    python tests/robustness/serve_app.py --port 7861 --queue-size 6 --small-input

The app as ``python app.py`` builds it (``app.build_demo`` and ``app.launch``, SIGTERM handled
as app.py does), with two knobs that app.py does not offer: ``--small-input`` runs the model at
128-256 px with 10 detections (the mini checkpoint answers in a fraction of a second on two
busy cores), and the weights default to the mini test checkpoint.
"""

from __future__ import annotations

import argparse
import functools
import logging
import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

MINI_CHECKPOINT = ROOT / "tests" / "data" / "d2_mini" / "panoptic_fpn_mini.pkl"
#: Inference settings of ``--small-input``: a 128 px network input, few proposals, 10 detections.
SMALL_INPUT = {"input": {"min_size": 128, "max_size": 256},
               "rpn": {"pre_nms_topk": 200, "post_nms_topk": 100},
               "box_head": {"detections_per_image": 10}}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--weights", default=str(MINI_CHECKPOINT))
    parser.add_argument("--queue-size", type=int, default=None)
    parser.add_argument("--small-input", action="store_true")
    parser.add_argument("--session-memory-mb", type=int, default=None)
    parser.add_argument("--allow-reload", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)

    import torch

    import app
    import segfpn
    from segfpn.app.session import RunStore
    from segfpn.app.source import ModelSource

    stopped = app.stop_signals()
    torch.set_num_threads(2)
    loader = functools.partial(segfpn.load, overrides=SMALL_INPUT) if args.small_input else None
    source = ModelSource(args.weights.split(","), device="cpu", loader=loader)
    runs = RunStore(budget_bytes=(args.session_memory_mb or app.SESSION_MEMORY_MB) << 20)
    demo = app.build_demo(source, queue_size=args.queue_size or app.QUEUE_SIZE,
                          allow_reload=args.allow_reload, runs=runs)
    app.serve_until(stopped, demo, host="127.0.0.1", port=args.port, quiet=True)


if __name__ == "__main__":
    main()
