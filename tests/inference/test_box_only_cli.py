"""`segfpn predict` with box-only models (tiny random Faster R-CNN and RetinaNet): a folder run
with every export format, a video, --score-threshold, and each option the loaded model cannot
honour refused with one `error:` line and exit code 2 before any image is segmented."""

import importlib.util
import json

import av
import numpy as np
import pytest
from PIL import Image

from segfpn.cli import main
from segfpn.formats import boxes_in_image, cvat, labelme, table, yolo

from testdata import load_rgb, photo_frames, write_video

ARCHS = ["faster_rcnn_R_50_FPN", "retinanet_R_50_FPN"]
PHOTOS = ["coffee.png", "voc2007_000001_portrait.jpg"]


def predict(weights, *args):
    return main(["predict", *map(str, args), "--weights", str(weights), "--device", "cpu", "--no-progress"])


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """A folder of two small photos of different sizes."""
    folder = tmp_path_factory.mktemp("photos")
    for name, longest in zip(PHOTOS, (200, 150)):
        image = Image.fromarray(load_rgb(name))
        image.thumbnail((longest, longest))
        image.save(folder / (name.rsplit(".", 1)[0] + ".png"))
    return folder


def coco_boxes(results):
    """float64 [N, 4] xyxy of COCO results."""
    return np.asarray([[x, y, x + w, y + h] for x, y, w, h in (r["bbox"] for r in results)], np.float64).reshape(-1, 4)


@pytest.mark.parametrize("arch", ARCHS)
def test_a_folder_gets_overlays_coco_results_and_box_exports(tmp_path, box_only_weights, photos, arch):
    out = tmp_path / "out"
    assert predict(box_only_weights[arch], photos, "--out", out,
                   "--formats", "labelme,yolo,cvat,cutouts,csv,parquet") == 0
    names = {p.name for p in out.iterdir()}
    assert not [n for n in names if "panoptic" in n]
    merged = json.loads((out / "coco_instances_results.json").read_text())
    assert merged and all("segmentation" not in r for r in merged)
    for photo in sorted(photos.iterdir()):
        stem, size = photo.stem, np.asarray(Image.open(photo)).shape[:2]
        results = json.loads((out / f"{stem}.instances.json").read_text())
        assert len(results) > 3 and all("segmentation" not in r for r in results)
        # The overlay fills the boxes scoring 0.5 or more (the app's Instances view as it opens).
        overlay = np.asarray(Image.open(out / f"{stem}.overlay.png").convert("RGB"))
        changed = overlay != np.asarray(Image.open(photo).convert("RGB"))
        assert overlay.shape[:2] == size and changed.any() == any(r["score"] >= 0.5 for r in results)
        expected = boxes_in_image(coco_boxes(results), size)
        # The exports hold every detection (no threshold or class filter given), in score order.
        classes, from_labelme = labelme.read_labelme_boxes(out / f"{stem}.labelme.json")
        np.testing.assert_allclose(from_labelme, expected, atol=1e-4)
        _, from_yolo = yolo.read_yolo_boxes(out / f"{stem}.yolo.txt", size)
        np.testing.assert_allclose(from_yolo, expected, atol=1e-3)
        cvat_classes, from_cvat = cvat.read_cvat_boxes(out / f"{stem}.cvat.xml")
        np.testing.assert_allclose(from_cvat, expected, atol=0.006)
        assert classes == cvat_classes and len(classes) == len(results)
        rows = table.read_table(out / f"{stem}.detections.parquet")
        allowed = set(range(3, 8)) if arch.startswith("retinanet") else {2, 3, 4, 5}
        assert len(rows) == len(results) and {r["level"] for r in rows} <= allowed
        assert f"{stem}.cutouts.zip" in names and f"{stem}.detections.csv" in names


@pytest.mark.parametrize("arch", ARCHS)
def test_score_threshold_reaches_either_detection_head(tmp_path, box_only_weights, photos, arch):
    """RetinaNet keeps its threshold in ``retina_head``: --score-threshold used to stop with a
    ConfigError traceback there."""
    image = sorted(photos.iterdir())[0]
    assert predict(box_only_weights[arch], image, "--out", tmp_path / "all") == 0
    everything = json.loads((tmp_path / "all" / f"{image.stem}.instances.json").read_text())
    threshold = float(np.median([r["score"] for r in everything]))
    assert predict(box_only_weights[arch], image, "--out", tmp_path / "some", "--score-threshold", threshold) == 0
    kept = json.loads((tmp_path / "some" / f"{image.stem}.instances.json").read_text())
    assert 0 < len(kept) < len(everything) and min(r["score"] for r in kept) > threshold


def test_a_video_with_a_box_only_model(tmp_path, box_only_weights):
    clip = write_video(tmp_path / "clip.mp4", photo_frames(6, size=(64, 48)))
    out = tmp_path / "out"
    assert predict(box_only_weights["retinanet_R_50_FPN"], clip, "--out", out, "--every", "2") == 0
    results = json.loads((out / "clip.video.json").read_text())
    assert [f["frame_index"] for f in results["frames"]] == [0, 2, 4]
    detections = [r for f in results["frames"] for r in f["results"]]
    assert detections and all("segmentation" not in r for r in detections)
    with av.open(str(out / "clip.overlay.mp4")) as container:
        assert sum(1 for _ in container.decode(video=0)) == 3


@pytest.mark.parametrize("args, words", [
    (["--overlay", "panoptic"], "--overlay panoptic: retinanet_R_50_FPN is a box-only model, it gives no panoptic"),
    (["--classes", "person,unicorn"], "--classes unicorn: not a class of this model; its classes are person, bicycle"),
    (["--formats", "csv", "--classes", "sky"], "--classes sky: not a class of this model"),
])
def test_options_the_model_cannot_honour_are_one_error_line(tmp_path, capsys, box_only_weights, photos, args, words):
    out = tmp_path / "out"
    assert predict(box_only_weights["retinanet_R_50_FPN"], photos, "--out", out, *args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and words in err[0], err
    assert not list(out.iterdir())  # refused before any image was segmented


def test_classes_for_a_video_are_refused_before_the_model_loads(tmp_path, capsys):
    clip = write_video(tmp_path / "clip.mp4", photo_frames(2, size=(32, 32)))
    assert predict(tmp_path / "no such weights.safetensors", clip, "--out", tmp_path / "out", "--classes", "cat") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--classes cat: it chooses what the --formats files of images keep" in err[0], err


def test_parquet_without_pyarrow_is_refused_by_the_parser(tmp_path, capsys, monkeypatch, box_only_weights, photos):
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "pyarrow" else find_spec(name, *a))
    with pytest.raises(SystemExit) as caught:
        predict(box_only_weights["faster_rcnn_R_50_FPN"], photos, "--out", tmp_path / "out", "--formats", "csv,parquet")
    assert caught.value.code == 2 and "parquet format needs pyarrow: pip install pyarrow" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
