"""The app over HTTP, as a script sees it: gradio_client calling the named endpoints."""

from __future__ import annotations

import json
import shutil
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from app_testing import PHOTO, SECOND_PHOTO, free_port
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError
from PIL import Image
from pycocotools import mask as mask_utils

import app
from segfpn import read_image
from segfpn.app.source import ModelSource
from segfpn.checkpoints import catalogue, resolve
from segfpn.export import rgb_to_id
from testdata import EXAMPLES


def _rgb(path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


def test_segment_returns_what_the_predictor_gives(server, client, mini_predictor):
    overlay, overlay_png, coco_json, panoptic_png, panoptic_json, summary = client.predict(
        handle_file(PHOTO), api_name="/segment")
    expected = mini_predictor.predict(read_image(PHOTO))
    inst = expected.instances
    assert len(inst) > 10

    # COCO results: every detection, same boxes, classes and scores, masks as RLE.
    results = json.loads(open(coco_json).read())
    assert len(results) == len(inst)
    boxes = np.array([[x, y, x + w, y + h] for x, y, w, h in (r["bbox"] for r in results)])
    np.testing.assert_allclose(boxes, inst.boxes, atol=1e-4)
    np.testing.assert_allclose([r["score"] for r in results], inst.scores, atol=1e-4)
    assert [r["category_id"] for r in results] == [inst.category_ids[i] for i in inst.labels]
    assert all(r["image_id"] == 1 for r in results)
    decoded = mask_utils.decode([r["segmentation"] for r in results]).transpose(2, 0, 1)
    np.testing.assert_array_equal(decoded.astype(bool), inst.masks)

    # The overlay: the photo's size, drawn on (not the photo itself), same as the PNG download.
    photo = read_image(PHOTO)
    drawn = _rgb(overlay)
    assert drawn.shape == photo.shape
    assert np.abs(drawn.astype(int) - photo).mean() > 5
    np.testing.assert_array_equal(_rgb(overlay_png), drawn)

    # The panoptic download: a COCO panoptic PNG whose ids are the JSON's segments.
    ids = rgb_to_id(_rgb(panoptic_png))
    document = json.loads(open(panoptic_json).read())
    segments = document["annotations"][0]["segments_info"]
    assert set(np.unique(ids)) - {0} == {s["id"] for s in segments}
    assert {s["id"]: s["area"] for s in segments} == {
        int(i): int((ids == i).sum()) for i in np.unique(ids) if i != 0}
    assert document["images"][0]["height"] == photo.shape[0]

    assert f"{len(inst)} detections" in summary and "cpu" in summary


@pytest.mark.parametrize("name, content, message", [
    ("notes.jpg", b"this is a text file, not a photo\n", "not an image"),
    ("empty.png", b"", "empty"),
    ("cut.jpg", PHOTO.read_bytes()[:600], "damaged or truncated"),
])
def test_bad_upload_is_a_clear_error(client, tmp_path, name, content, message):
    bad = tmp_path / name
    bad.write_bytes(content)
    with pytest.raises(AppError, match=message):
        client.predict(handle_file(bad), api_name="/segment")


def test_server_keeps_serving_after_an_error(client, tmp_path):
    bad = tmp_path / "notes.jpg"
    bad.write_text("not an image")
    with pytest.raises(AppError, match="not an image"):
        client.predict(handle_file(bad), api_name="/segment")
    overlay, *_, summary = client.predict(handle_file(SECOND_PHOTO), api_name="/segment")
    assert _rgb(overlay).shape == read_image(SECOND_PHOTO).shape
    assert "chelsea_cat.png" in summary


@pytest.mark.parametrize("where", ["tmp", "examples"])
def test_a_server_path_in_a_request_is_refused(server, tmp_path, where):
    """Only files uploaded through the app are read: a request naming a file on the server fails."""
    path = SECOND_PHOTO if where == "examples" else tmp_path / "on_the_server.png"
    if where == "tmp":
        Image.fromarray(read_image(SECOND_PHOTO)).save(path)
    calls = server.predictor.calls
    body = json.dumps({"data": [{"path": str(path), "meta": {"_type": "gradio.FileData"}},
                                0.5, 0.5, True, True]}).encode()
    request = urllib.request.Request(server.url + "gradio_api/call/segment", data=body,
                                     headers={"Content-Type": "application/json"})
    event_id = json.load(urllib.request.urlopen(request))["event_id"]
    answer = urllib.request.urlopen(f"{server.url}gradio_api/call/segment/{event_id}").read().decode()
    assert "event: error" in answer and "event: complete" not in answer
    assert server.predictor.calls == calls


def test_large_upload_is_downscaled(client, tmp_path):
    big = tmp_path / "big.png"
    Image.fromarray(read_image(SECOND_PHOTO)).resize((2400, 1596)).save(big)
    overlay, *_, summary = client.predict(handle_file(big), api_name="/segment")
    assert _rgb(overlay).shape == (1330, 2000, 3)
    assert "2400 × 1596 px, downscaled to 2000 × 1330 px" in summary


def test_without_a_checkpoint_the_page_says_what_to_fetch(monkeypatch, tmp_path, d2_mini_checkpoint):
    monkeypatch.setenv("SEGFPN_OFFLINE", "1")
    monkeypatch.setenv("SEGFPN_WEIGHTS_DIR", str(tmp_path))
    default = catalogue.default_checkpoint()
    demo = app.build_demo(ModelSource(resolve.candidates(None, fallback=False)))  # not even the bundled model
    _, url, _ = app.launch(demo, host="127.0.0.1", port=free_port(), prevent_thread_lock=True,
                           quiet=True)
    try:
        config = json.load(urllib.request.urlopen(url + "config"))
        status = next(c["props"]["value"] for c in config["components"]
                      if c.get("props", {}).get("elem_id") == "model-status")
        assert "No model is loaded" in status
        assert default.url in status and default.file_name in status and str(tmp_path) in status

        client = Client(url, verbose=False)
        with pytest.raises(AppError, match="No model is loaded"):
            client.predict(handle_file(PHOTO), api_name="/segment")

        # The file put in place while the app runs is picked up by the next press.
        shutil.copy(d2_mini_checkpoint, tmp_path / default.file_name)
        overlay, *_ = client.predict(handle_file(PHOTO), api_name="/segment")
        assert _rgb(overlay).shape == read_image(PHOTO).shape
    finally:
        demo.close()


def test_offline_the_bundled_synthetic_model_serves_with_a_banner(monkeypatch, tmp_path):
    monkeypatch.setenv("SEGFPN_OFFLINE", "1")
    monkeypatch.setenv("SEGFPN_WEIGHTS_DIR", str(tmp_path))
    source = ModelSource(resolve.candidates(None), device="cpu")
    predictor = source.get()
    assert source.loaded_from == str(resolve.BUNDLED_CHECKPOINT)
    status = source.describe()
    assert status.startswith("**Offline model in use.**")
    assert catalogue.default_checkpoint().file_name in status  # and what to fetch for the real one
    result = predictor.predict(EXAMPLES / "synthetic_shapes_1.png")
    assert len(result.panoptic.segments) >= 3
    assert {"circle", "square", "triangle", "star"} & {s.class_name for s in result.panoptic.segments}


def test_the_app_and_segfpn_predict_write_identical_files(client, tmp_path, d2_mini_checkpoint):
    # One writer (segfpn.outputs) for both: same names, same bytes, for the same image and model,
    # the app's overlay being its Instances view as it opens (`--overlay instances`).
    from segfpn.cli import main

    photo = tmp_path / "photo.png"
    Image.fromarray(read_image(PHOTO)).save(photo)
    _, *downloads, _ = client.predict(handle_file(photo), api_name="/segment")
    out = tmp_path / "cli"
    assert main(["predict", str(photo), "--weights", str(d2_mini_checkpoint), "--out", str(out), "--device", "cpu",
                 "--overlay", "instances", "--no-progress"]) == 0
    written = sorted(out.iterdir())
    assert [p.name for p in written] == sorted(Path(d).name for d in downloads)
    for path in written:
        app_copy = next(Path(d) for d in downloads if Path(d).name == path.name)
        assert app_copy.read_bytes() == path.read_bytes(), path.name
