"""16 gradio_client sessions at once, 3 photos each, against the app with a queue of 6: every
request is answered with its own session's result or, beyond the queue, "busy, try again"; the
server's peak memory stays bounded. benchmarks/load_app.py prints the same run's figures."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from app_process import QUEUE_SIZE, segment
from load_clients import make_photos, run_load
from PIL import Image

CLIENTS, PHOTOS_EACH = 16, 3
#: Peak resident memory of the server above its level before the load.
MAX_PEAK_GROWTH_MB = 300
#: A "busy" answer comes at once: the request is refused when it is sent, not after a wait
#: (the time includes uploading the photo while 15 other clients do the same).
MAX_BUSY_ANSWER_S = 10.0


def _rgb(path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


@pytest.fixture(scope="module")
def load(app_server, client, tmp_path_factory):
    """The load, run once: (LoadRun, server memory before, after, request folders before/after)."""
    photos = make_photos(tmp_path_factory.mktemp("load_photos"), CLIENTS, PHOTOS_EACH)
    segment(client, photos[0][0])  # the first run allocates the model's working memory
    dirs = set(app_server.tmp.glob("segfpn-app-*/request-*"))
    before = app_server.memory()
    app_server.reset_peak()
    run = run_load(app_server.url, photos)
    after = app_server.memory()
    print(f"\n{run.report()}\nserver memory: {before['rss']:.0f} MB before, peak "
          f"{after['peak']:.0f} MB, {after['rss']:.0f} MB after")
    return run, before, after, dirs, set(app_server.tmp.glob("segfpn-app-*/request-*"))


def test_every_request_answered_with_its_own_result(load, app_server):
    run, *_ = load
    assert len(run.requests) == CLIENTS * PHOTOS_EACH
    assert [r for r in run.requests if not r.answered] == []  # none dropped, none hanging
    assert [r.error for r in run.requests if r.error] == []
    for request in run.requests:
        overlay, overlay_png, coco_json, _, panoptic_json, summary = request.answer
        photo = _rgb(request.photo)  # a size no other request has
        np.testing.assert_array_equal(_rgb(overlay), photo)  # this photo, not another session's
        np.testing.assert_array_equal(_rgb(overlay_png), photo)
        assert f"**{request.photo.name}**" in summary
        image = json.loads(Path(panoptic_json).read_text())["images"][0]
        assert image["file_name"] == request.photo.name
        assert (image["height"], image["width"]) == photo.shape[:2]
        detections = json.loads(Path(coco_json).read_text())
        assert f"{len(detections)} detections" in summary
        for d in detections:  # boxes inside this photo
            x, y, w, h = d["bbox"]
            assert -1 <= x and -1 <= y and x + w <= photo.shape[1] + 1 and y + h <= photo.shape[0] + 1
    assert app_server.alive()


def test_beyond_the_queue_requests_are_told_busy_at_once(load):
    run, *_ = load
    assert run.busy > 0, f"16 clients never overflowed a queue of {QUEUE_SIZE}"
    messages = set().union(*(r.busy_messages for r in run.requests))
    assert messages and all("try again" in m for m in messages), messages
    assert max(t for r in run.requests for t in r.busy_s) < MAX_BUSY_ANSWER_S
    # A busy request was not lost: it was answered when sent again.
    assert all(r.answer is not None for r in run.requests if r.busy_s)


def test_peak_memory_stays_bounded_under_load(load):
    run, before, after, dirs_before, dirs_after = load
    assert after["peak"] - before["rss"] < MAX_PEAK_GROWTH_MB, (before, after)
    # Files: a request's folder goes with its request (the downloads are Gradio's copies).
    assert dirs_after - dirs_before == set()
