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
