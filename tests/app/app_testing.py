"""Helpers for the app tests: the photos, a predictor that counts its calls, tiny box-only
checkpoints, serving the app."""

from __future__ import annotations

import os
import socket
import threading
from dataclasses import dataclass, replace
from pathlib import Path

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

ROOT = Path(__file__).resolve().parents[2]
import app  # noqa: E402  (app.py at the repository root: pytest's pythonpath has ".")

#: Small real photos (about 1 s per run of the mini model on two cores).
PHOTO = ROOT / "examples" / "images" / "voc2007_000001_portrait.jpg"
SECOND_PHOTO = ROOT / "examples" / "images" / "chelsea_cat.png"
#: Where the browser test leaves its screenshots (git-ignored).
SCREENSHOTS = ROOT / "artifacts" / "screenshots"
#: detectron2's Panoptic FPN at a tiny width (tests/data/d2_mini/README.md).
MINI_CHECKPOINT = ROOT / "tests" / "data" / "d2_mini" / "panoptic_fpn_mini.pkl"
#: Its inference settings for fast tests: a 128 px network input, few proposals, 10 detections
#: (as tests/robustness/serve_app.py's --small-input).
SMALL_INPUT = {"input": {"min_size": 128, "max_size": 256},
               "rpn": {"pre_nms_topk": 200, "post_nms_topk": 100},
               "box_head": {"detections_per_image": 10}}
#: The box-only architectures of the tiny checkpoints (:func:`save_tiny_box_only`), by file stem.
TINY_BOX_ONLY = {"tiny_faster_rcnn": "faster_rcnn_R_50_FPN", "tiny_retinanet": "retinanet_R_50_FPN"}


def small_loader(path, *, device=None):
    """``segfpn.load`` for the app's model sources: detectron2 pickles (the mini checkpoint) with
    :data:`SMALL_INPUT`, any other file as it is."""
    import segfpn

    overrides = SMALL_INPUT if Path(path).suffix == ".pkl" else None
    return segfpn.load(path, device=device, overrides=overrides)


def save_tiny_box_only(folder: Path, *, seed: int = 0) -> dict[str, Path]:
    """A tiny random Faster R-CNN and RetinaNet (ResNet-18 at 1/4 width, 16 FPN channels, a 256 px
    input, 80 COCO classes, few proposals, class scores spread so that some pass 0.5) saved as segfpn
    ``.safetensors`` in ``folder``: ``{stem: path}`` of :data:`TINY_BOX_ONLY`. Built unoptimised
    (a Predictor's folded BatchNorm must not be saved)."""
    from segfpn.config import ARCHITECTURES, BackboneConfig

    from testdata import save_random_detector

    paths = {}
    for stem, arch in TINY_BOX_ONLY.items():
        config = ARCHITECTURES[arch]()
        changes = dict(backbone=BackboneConfig(depth=18, stem_channels=8, res2_out_channels=16),
                       input=replace(config.input, min_size=256, max_size=400),
                       fpn=replace(config.fpn, out_channels=16))
        if config.box_head is not None:  # few proposals: fast on a busy CPU
            changes["rpn"] = replace(config.rpn, pre_nms_topk=200, post_nms_topk=100)
            changes["box_head"] = replace(config.box_head, fc_channels=(32, 32), detections_per_image=30)
        if config.retina_head is not None:
            changes["retina_head"] = replace(config.retina_head, num_convs=2, norm_groups=8, detections_per_image=50)
        paths[stem] = save_random_detector(Path(folder) / f"{stem}.safetensors",
                                           config.replace(num_classes=80, **changes), arch=arch, seed=seed,
                                           class_score_spread=1.0)
    return paths


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
    models: object = None  # the app's ModelPool, when the test made it


def serve(model, *, models=None) -> Server:
    """Build the app around ``model`` (``models``: its ModelPool, see :func:`serve_with_picker`)
    and serve it from this process (a background thread) on 127.0.0.1 and a free port. Close it
    with ``server.demo.close()``."""
    demo = app.build_demo(model, models=models)
    _, url, _ = app.launch(demo, host="127.0.0.1", port=free_port(), prevent_thread_lock=True,
                           quiet=True)
    return Server(url=url, demo=demo, predictor=model, models=models)


def serve_with_picker(weights_dir: Path, *, default=MINI_CHECKPOINT, capacity: int = 2) -> Server:
    """The app with ``default`` (the mini checkpoint, :func:`small_loader`) and a model picker
    listing the checkpoint files of ``weights_dir``; downloads off."""
    from segfpn.app.models import ModelPool
    from segfpn.app.source import ModelSource

    source = ModelSource([str(default)], device="cpu", loader=small_loader, allow_download=False)
    pool = ModelPool(source, capacity=capacity, weights_dir=weights_dir, allow_download=False)
    return serve(source, models=pool)
