"""Paths of the test data and small helpers shared by the tests. Every file lives in this repository."""

from fractions import Fraction
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "tests" / "data"
EXAMPLES = ROOT / "examples" / "images"
D2_MINI = DATA / "d2_mini"


def load_rgb(name: str) -> np.ndarray:
    """An example photo as RGB uint8 [H, W, 3]."""
    return np.asarray(Image.open(EXAMPLES / name).convert("RGB")).copy()


VIDEO_PHOTOS = ["astronaut.png", "coffee.png", "chelsea_cat.png", "synthetic_shapes_0.png"]


def photo_frames(count: int, size: tuple[int, int] = (96, 72)) -> list[np.ndarray]:
    """``count`` frames (w, h = ``size``): the photos in turn, each shown for 5 frames, drifting."""
    photos = [np.asarray(Image.fromarray(load_rgb(p)).resize((size[0] + 40, size[1] + 40))) for p in VIDEO_PHOTOS]
    return [np.ascontiguousarray(photos[(i // 5) % len(photos)][i % 40:i % 40 + size[1], i % 40:i % 40 + size[0]])
            for i in range(count)]


def write_video(path, frames, *, times=None, fps=10, codec="libx264", container_options=None, bframes=True):
    """Encode RGB frames; ``times`` (seconds) gives each frame its own time (variable frame rate)."""
    import av

    time_base = Fraction(1, 1000)
    with av.open(str(path), "w", options=container_options or {}) as out:
        stream = out.add_stream(codec, rate=fps)
        stream.width, stream.height = frames[0].shape[1], frames[0].shape[0]
        stream.pix_fmt = "yuv420p"
        stream.time_base = time_base
        stream.codec_context.time_base = time_base  # else the encoder rounds times to 1/fps
        if codec == "libx264" and not bframes:
            stream.options = {"bf": "0"}
        for i, rgb in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
            frame.pts = round((times[i] if times is not None else i / fps) / time_base)
            frame.time_base = time_base
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    return path


# ---------------------------------------------------------------------------------------------
# Tiny random detectors (no download, seconds on a CPU)


def tiny_detector_config(config, *, input_config=None):
    """``config`` (a :class:`segfpn.config.ModelConfig`) at a tiny width: ResNet-18 at 1/8 width,
    16 FPN channels, a 256-400 px input (``input_config``'s normalisation, detectron2's by default),
    80 COCO classes, small heads with a score threshold of 0 (every detection kept)."""
    import dataclasses

    from segfpn.config import BackboneConfig, detectron2_faster_rcnn

    base_input = input_config if input_config is not None else detectron2_faster_rcnn().input
    changes = dict(backbone=BackboneConfig(depth=18, stem_channels=8, res2_out_channels=16),
                   input=dataclasses.replace(base_input, min_size=256, max_size=400),
                   fpn=dataclasses.replace(config.fpn, out_channels=16))
    if config.box_head is not None:
        changes["box_head"] = dataclasses.replace(config.box_head, fc_channels=(32, 32), score_threshold=0.0)
    if config.retina_head is not None:
        changes["retina_head"] = dataclasses.replace(config.retina_head, num_convs=2, norm_groups=8,
                                                     score_threshold=0.0, detections_per_image=50)
    return config.replace(num_classes=80, **changes)


def random_detector(config, *, seed: int = 0, class_score_spread: float | None = None):
    """``build_model(config)`` with seeded random weights, in eval mode, unoptimised (so it can be
    saved: a Predictor's folded BatchNorm must not be). ``class_score_spread``: the standard
    deviation the classifier's weights and biases are drawn with instead, so that the class scores
    spread and a score threshold has something to choose."""
    import torch

    from segfpn.model.build import build_model

    torch.manual_seed(seed)
    model = build_model(config).eval()
    if class_score_spread is not None:
        with torch.no_grad():
            for name, parameter in model.named_parameters():
                if name.endswith(("cls_score.weight", "cls_score.bias")):
                    parameter.normal_(0, class_score_spread)
    return model


def save_random_detector(path, config, *, arch: str, seed: int = 0, class_score_spread: float | None = None):
    """:func:`random_detector` saved as a segfpn ``.safetensors`` at ``path`` (COCO's 80 classes)."""
    from segfpn.categories import coco_instance_categories
    from segfpn.checkpoints.loading import save_native

    model = random_detector(config, seed=seed, class_score_spread=class_score_spread)
    return save_native(Path(path), model, coco_instance_categories(), arch=arch)


class LocalHTTPServer:
    """An HTTP server on 127.0.0.1 and a free port answering with ``handler`` (an
    ``http.server.BaseHTTPRequestHandler`` class), from daemon threads: ``url``; ``close()``."""

    def __init__(self, handler):
        import http.server
        import threading

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
