"""The app's exports, Video tab and webcam through gradio_client, as a script would call them."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import av
import numpy as np
import pytest
from app_testing import PHOTO
from gradio_client import handle_file
from gradio_client.exceptions import AppError

from testdata import photo_frames, write_video


def test_exports_follow_the_instances_view(client):
    _, *_, summary = client.predict(handle_file(PHOTO), api_name="/segment")
    files = client.predict(formats=["labelme", "csv", "cutouts"], score=0.5, classes=[], api_name="/export")
    names = sorted(Path(f).name for f in files)
    stem = PHOTO.stem
    assert names == sorted([f"{stem}.labelme.json", f"{stem}.detections.csv", f"{stem}.cutouts.zip"])
    labelme = json.loads(Path(next(f for f in files if f.endswith(".labelme.json"))).read_text())
    rows = list(csv.DictReader(Path(next(f for f in files if f.endswith(".csv"))).open()))
    assert rows and all(float(r["score"]) >= 0.5 for r in rows)  # the Instances view's threshold
    assert {s["label"] for s in labelme["shapes"] if s["label"] != "_background_"} <= {r["class"] for r in rows}
    fewer = client.predict(formats=["csv"], score=0.9, classes=[], api_name="/export")
    assert len(list(csv.DictReader(Path(fewer[0]).open()))) < len(rows)
    with pytest.raises(AppError, match="unicorn"):
        client.predict(formats=["csv"], score=0.5, classes=["unicorn"], api_name="/export")


def test_a_video_is_segmented_frame_by_frame(client, tmp_path):
    clip = write_video(tmp_path / "clip.mp4", photo_frames(20))  # 2 s at 10 frames/s
    video, results, summary = client.predict(video=handle_file(clip), every=4, overlay_kind="instances",
                                             api_name="/segment_video")
    video_path = video["video"] if isinstance(video, dict) else video
    with av.open(video_path) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.name == "h264"
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(stream)]
    assert len(frames) == 5 and frames[0].shape[:2] == (72, 96)
    document = json.loads(Path(results).read_text())
    assert [f["frame_index"] for f in document["frames"]] == [0, 4, 8, 12, 16]
    assert "5 frames segmented" in summary


def test_a_file_that_is_not_a_video_gets_a_message(client, tmp_path):
    fake = tmp_path / "fake.mp4"
    fake.write_bytes(np.random.default_rng(0).bytes(5000))
    with pytest.raises(AppError):
        client.predict(video=handle_file(fake), every=1, overlay_kind="instances", api_name="/segment_video")
