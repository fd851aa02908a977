"""`segfpn predict` on a video, an image URL (a local server) and with --formats / --classes:
the files written, and one `error:` line with exit code 2 for each mistake."""

import functools
import http.server
import json
import threading

import av
import numpy as np
import pytest
from PIL import Image

from segfpn.cli import main
from segfpn.formats import labelme, table

from testdata import EXAMPLES, ROOT, load_rgb

WEIGHTS = str(ROOT / "weights" / "synthetic_panoptic_fpn.safetensors")


def predict(*args):
    return main(["predict", *map(str, args), "--weights", WEIGHTS, "--device", "cpu", "--no-progress"])


@pytest.fixture(scope="module")
def photos_server(tmp_path_factory):
    folder = tmp_path_factory.mktemp("site")
    (folder / "shapes.png").write_bytes((EXAMPLES / "synthetic_shapes_0.png").read_bytes())
    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    handler = functools.partial(Quiet, directory=str(folder))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    path = tmp_path_factory.mktemp("video") / "shapes clip.mp4"
    frames = [np.asarray(Image.fromarray(load_rgb(n)).resize((80, 64)))
              for n in ("synthetic_shapes_0.png", "synthetic_shapes_1.png")]
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=5)
        stream.width, stream.height, stream.pix_fmt = 80, 64, "yuv420p"
        for i in range(10):
            out.mux(stream.encode(av.VideoFrame.from_ndarray(frames[i // 5], format="rgb24")))
        out.mux(stream.encode(None))
    return path


def test_image_with_every_format_and_a_class_filter(tmp_path, capsys):
    out = tmp_path / "out"
    formats = "coco,labelme,yolo,cvat,cutouts,csv,parquet"
    assert predict(EXAMPLES / "synthetic_shapes_0.png", "--out", out, "--formats", formats,
                   "--classes", "circle,square", "--score-threshold", "0.5") == 0
    names = {p.name for p in out.iterdir()}
    for suffix in ("overlay.png", "instances.json", "panoptic.png", "panoptic.json", "labelme.json", "yolo.txt",
                   "cvat.xml", "cutouts.zip", "detections.csv", "detections.parquet"):
        assert f"synthetic_shapes_0.{suffix}" in names
    assert "yolo_data.yaml" in names
    classes, _ = labelme.read_labelme(out / "synthetic_shapes_0.labelme.json")
    rows = table.read_table(out / "synthetic_shapes_0.detections.parquet")
    assert classes and set(classes) <= {"circle", "square"} and len(rows) == len(classes)
    assert min(r["score"] for r in rows) >= 0.5


def test_image_url(tmp_path, photos_server):
    out = tmp_path / "out"
    assert predict(f"{photos_server}/shapes.png", "--out", out, "--formats", "csv") == 0
    results = json.loads((out / "shapes.instances.json").read_text())
    assert results and (out / "shapes.overlay.png").exists() and (out / "shapes.detections.csv").exists()


def test_video_then_already_done(tmp_path, clip, capsys):
    out = tmp_path / "out"
    assert predict(clip, "--out", out, "--every", "3") == 0
    assert "4 frames segmented" in capsys.readouterr().out
    results = json.loads((out / "shapes_clip.video.json").read_text())
    assert [f["frame_index"] for f in results["frames"]] == [0, 3, 6, 9]
    with av.open(str(out / "shapes_clip.overlay.mp4")) as container:
        assert sum(1 for _ in container.decode(video=0)) == 4
    assert predict(clip, "--out", out, "--every", "3") == 0
    assert "already done" in capsys.readouterr().out


def test_unknown_format_is_refused_by_the_parser(tmp_path, capsys):
    with pytest.raises(SystemExit) as caught:
        predict(EXAMPLES / "synthetic_shapes_0.png", "--out", tmp_path, "--formats", "labelme,pascal")
    assert caught.value.code == 2 and "unknown export format(s) pascal" in capsys.readouterr().err


def test_unknown_class_is_refused(tmp_path, capsys):
    assert predict(EXAMPLES / "synthetic_shapes_0.png", "--out", tmp_path, "--classes", "circle,unicorn") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: --classes unicorn: not a class of this model; its classes are circle")
    assert not list(tmp_path.glob("*.json"))  # refused before anything was written


def test_bad_inputs_get_one_error_line(tmp_path, capsys, clip, photos_server):
    audio = tmp_path / "talk.mp4"
    with av.open(str(audio), "w") as out:
        stream = out.add_stream("aac", rate=8000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 8000), np.float32), format="fltp", layout="mono")
        frame.sample_rate = 8000
        out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    cases = [([audio], "no video stream (audio only)"),
             ([clip, "--formats", "labelme"], "a video gets its overlay MP4"),
             ([f"{photos_server}/missing.jpg"], "HTTP 404"),
             (["file:///etc/passwd"], "only http:// and https://")]
    for args, words in cases:
        assert predict(*args, "--out", tmp_path / "out") == 2, args
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: ") and words in err[0], (args, err)
