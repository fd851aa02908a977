"""Controls redraw from the session's last run: the model runs once per Segment, never again."""

from __future__ import annotations

from collections import Counter

import numpy as np
from app_testing import PHOTO
from gradio_client import handle_file
from PIL import Image

from segfpn import read_image


def _rgb(path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


def _all_different(images: dict[str, np.ndarray]) -> None:
    names = list(images)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            assert not np.array_equal(images[a], images[b]), f"{a} and {b} look the same"


def test_instance_controls_redraw_without_running_the_model(server, client, mini_predictor):
    client.predict(handle_file(PHOTO), api_name="/segment")
    calls = server.predictor.calls
    expected = mini_predictor.predict(read_image(PHOTO)).instances  # uncounted: not the app's

    def redraw(score=0.5, opacity=0.5, classes=(), boxes=True, labels=True):
        settings = (score, opacity, list(classes), boxes, labels)
        image, summary = client.predict(*settings, api_name="/redraw_instances")
        png = _rgb(client.predict(*settings, api_name="/overlay_download"))
        # The download follows the view: the view is its JPEG (a few levels off at most).
        assert np.abs(png.astype(int) - _rgb(image)).mean() < 2.0
        return png, summary

    top_class = Counter(expected.names).most_common(1)[0][0]
    views = {"default": redraw(), "score 0.9": redraw(score=0.9), "opaque": redraw(opacity=1.0),
             "no boxes": redraw(boxes=False), "no labels": redraw(labels=False),
             f"only {top_class}": redraw(classes=[top_class])}
    _all_different({name: image for name, (image, _) in views.items()})
    for image, _ in views.values():
        assert image.shape == read_image(PHOTO).shape

    kept = int((expected.scores >= 0.9).sum())
    assert views["score 0.9"][1].startswith(f"{kept} of {len(expected)} detections shown")
    of_class = sum(1 for n, s in zip(expected.names, expected.scores) if n == top_class and s >= 0.5)
    assert views[f"only {top_class}"][1].startswith(f"{of_class} of {len(expected)}")
    assert server.predictor.calls == calls


def test_inspector_switches_levels_and_modes_from_the_cached_features(server, client):
    client.predict(handle_file(PHOTO), api_name="/segment")
    calls = server.predictor.calls

    def inspect(level, mode, channel=0):
        image, info, slider = client.predict(level, mode, channel, api_name="/inspect")
        return _rgb(image), info, slider

    views = {(level, mode): inspect(level, mode)
             for level, mode in [("p4", "mean_abs"), ("p4", "pca"), ("p2", "mean_abs"),
                                 ("c2", "max"), ("c5", "l2"), ("p6", "channel")]}
    _all_different({f"{k[0]} {k[1]}": v[0] for k, v in views.items()})
    photo_shape = read_image(PHOTO).shape
    assert all(image.shape == photo_shape for image, _, _ in views.values())

    _, info, slider = views[("p4", "mean_abs")]
    assert "**p4**" in info and "FPN output" in info and "stride **16 px**" in info
    assert slider["maximum"] == 15  # the mini FPN has 16 channels
    _, info, slider = views[("c5", "l2")]
    assert "bottom-up" in info and "stride **32 px**" in info and slider["maximum"] == 255
    assert "PCA" in views[("p4", "pca")][1]

    # Channel 200 of c5 (256 channels), then p3 (16 channels): clamped to its last, no error.
    inspect("c5", "mean_abs")  # the channel slider follows the level: 0..255 now
    _, info, slider = inspect("c5", "channel", 200)
    assert slider["value"] == 200 and "single channel 200" in info
    _, info, slider = inspect("p3", "channel", 200)
    assert slider["value"] == 15 and "single channel 15" in info
    assert server.predictor.calls == calls


def test_roi_levels_view_counts_the_levels(server, client, mini_predictor):
    client.predict(handle_file(PHOTO), api_name="/segment")
    calls = server.predictor.calls
    image, text, table = client.predict(0.5, [], "mask", api_name="/roi_levels")
    expected = mini_predictor.predict(read_image(PHOTO)).instances
    keep = expected.scores >= 0.5
    assert len(table["data"]) == int(keep.sum())  # the detection table beside the view: one row each
    for level in range(2, 6):
        assert f"**p{level}** (stride {2 ** level}): {int((expected.levels[keep] == level).sum())}" in text
    assert "⌊4 + log2(√(wh)/224)⌋" in text
    by_box, _, _ = client.predict(0.5, [], "box", api_name="/roi_levels")
    assert not np.array_equal(_rgb(image), _rgb(by_box))
    assert server.predictor.calls == calls


def test_sessions_do_not_share_runs(server, client):
    from gradio_client import Client

    client.predict(handle_file(PHOTO), api_name="/segment")
    other = Client(server.url, verbose=False)
    image, info, _ = other.predict("p4", "pca", 0, api_name="/inspect")
    assert not isinstance(image, str)  # nothing drawn: that session has not pressed Segment
