"""Small real videos made with PyAV from the bundled photos, and a stand-in predictor."""

from fractions import Fraction

import av
import numpy as np
import pytest
from PIL import Image

import segfpn

from testdata import ROOT, load_rgb

PHOTOS = ["astronaut.png", "coffee.png", "chelsea_cat.png", "synthetic_shapes_0.png"]


def photo_frames(count: int, size: tuple[int, int] = (96, 72)) -> list[np.ndarray]:
    """``count`` frames (w, h = ``size``): the photos in turn, each shown for 5 frames, drifting."""
    photos = [np.asarray(Image.fromarray(load_rgb(p)).resize((size[0] + 40, size[1] + 40))) for p in PHOTOS]
    return [np.ascontiguousarray(photos[(i // 5) % len(photos)][i % 40:i % 40 + size[1], i % 40:i % 40 + size[0]])
            for i in range(count)]


def write_video(path, frames, *, times=None, fps=10, codec="libx264", container_options=None, bframes=True):
    """Encode RGB frames; ``times`` (seconds) gives each frame its own time (variable frame rate)."""
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


@pytest.fixture(scope="session")
def clip(tmp_path_factory):
    """A 2-second H.264 MP4 at 10 frames/s, 96x72, with B-frames."""
    return write_video(tmp_path_factory.mktemp("videos") / "clip.mp4", photo_frames(20))


@pytest.fixture(scope="session")
def real_predictor():
    return segfpn.load(ROOT / "weights" / "synthetic_panoptic_fpn.safetensors", device="cpu")


class CountingPredictor:
    """Stands in for a model where only the plumbing is under test: it records the frames it is
    given and answers the bundled model's result for the first one, every time. ``stop_after``:
    raise KeyboardInterrupt (a Ctrl-C) when asked for more frames than that."""

    def __init__(self, real, stop_after=None):
        self.real, self.stop_after, self.seen = real, stop_after, []
        self.source, self.config, self._result = real.source, real.config, None

    def predict_batch(self, frames):
        if self.stop_after is not None and len(self.seen) + len(frames) > self.stop_after:
            raise KeyboardInterrupt
        self.seen += [f.copy() for f in frames]
        if self._result is None:
            self._result = self.real.predict(frames[0])
        return [self._result for _ in frames]


@pytest.fixture(scope="session")
def videos():
    """The helpers above, for the tests: ``videos.write_video``, ``videos.photo_frames``,
    ``videos.counting(real, stop_after=None)``."""

    class Helpers:
        pass

    helpers = Helpers()
    helpers.write_video, helpers.photo_frames, helpers.counting = write_video, photo_frames, CountingPredictor
    return helpers
