"""Helpers for the app tests: the photos, a predictor that counts its calls, serving the app."""

from __future__ import annotations

import os
import socket
import threading
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

ROOT = Path(__file__).resolve().parents[2]
import app  # noqa: E402  (app.py at the repository root: pytest's pythonpath has ".")

#: Small real photos (about 1 s per run of the mini model on two cores).
PHOTO = ROOT / "examples" / "images" / "voc2007_000001_portrait.jpg"
SECOND_PHOTO = ROOT / "examples" / "images" / "chelsea_cat.png"
#: Where the browser test leaves its screenshots (git-ignored).
SCREENSHOTS = ROOT / "artifacts" / "screenshots"


class CountingPredictor:
    """Wraps a predictor and counts its full runs (``predict`` and ``inspect`` calls);
    everything else is the wrapped one's."""

    def __init__(self, predictor):
        self._predictor = predictor
        self._lock = threading.Lock()
        self.calls = 0

    def _count(self) -> None:
        with self._lock:
            self.calls += 1

    def predict(self, image, **kwargs):
        self._count()
        return self._predictor.predict(image, **kwargs)

    def inspect(self, image, **kwargs):
        self._count()
        return self._predictor.inspect(image, **kwargs)

    def __getattr__(self, name):
        return getattr(self._predictor, name)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Server:
    url: str
    demo: object
    predictor: object = None


def serve(model) -> Server:
    """Build the app around ``model`` and serve it from this process (a background thread) on
    127.0.0.1 and a free port. Close it with ``server.demo.close()``."""
    demo = app.build_demo(model)
    _, url, _ = app.launch(demo, host="127.0.0.1", port=free_port(), prevent_thread_lock=True,
                           quiet=True)
    return Server(url=url, demo=demo, predictor=model)
