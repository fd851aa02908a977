"""Small real videos made with PyAV from the bundled photos, and a stand-in predictor."""

import pytest

import segfpn

from testdata import ROOT, photo_frames, write_video

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
