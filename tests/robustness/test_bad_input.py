"""Bad and unusual images, each sent for real to the running app (gradio_client on 127.0.0.1)
and to `segfpn predict` (a process of its own per file): a clear message or a correct result,
and the server keeps serving with its memory back to its level."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import cv2
import httpx
import numpy as np
import pytest
from app_process import ROOT, segment
from gradio_client.exceptions import AppError
from input_cases import BY_NAME, CASES, LITERAL_CASE, PORTRAIT
from PIL import Image

#: app.py's --max-side: an upload whose longest side is above it is downscaled to it.
MAX_SIDE = 2000
#: A refused upload may leave this much more resident memory behind (allocator caches).
MAX_RSS_GROWTH_MB = 300
#: Peak above the starting level while the barrage runs: the 30000 x 30000 PNG, if decoded,
#: would take 2700 MB.
MAX_PEAK_GROWTH_MB = 500


def _rgb(path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


def _gray(image: np.ndarray) -> np.ndarray:
    return np.asarray(Image.fromarray(image).convert("L"), dtype=np.float64)


def _correlation(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(_gray(a).ravel(), _gray(b).ravel())[0, 1])


def _mean_abs(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean())


def _as_the_app_scales(image: np.ndarray) -> np.ndarray:
    """``image`` downscaled (area averaging) so that its longest side is at most MAX_SIDE."""
    h, w = image.shape[:2]
    scale = MAX_SIDE / max(h, w)
    if scale >= 1:
        return image
    return cv2.resize(image, (round(w * scale), round(h * scale)), interpolation=cv2.INTER_AREA)


def _request_dirs(server) -> set[Path]:
    return set(server.tmp.glob("segfpn-app-*/request-*"))


@pytest.fixture(scope="module", autouse=True)
def _cli_in_the_background(cli_job):
    """`segfpn predict` works through the cases while the app is tested."""


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_bad_input_in_the_app(app_server, client, bad_inputs, case):
    path = bad_inputs[case.name]
    if case.message:
        with pytest.raises(AppError) as refused:
            segment(client, path)
        assert case.message in str(refused.value)
        assert "Traceback" not in str(refused.value)
    else:
        overlay, overlay_png, coco_json, _, panoptic_json, summary = segment(client, path)
        # What the model saw is the picture a person sees (downscaled to 2000 px like any upload).
        picture = case.expected()
        seen = _as_the_app_scales(picture)
        got = _rgb(overlay)
        assert got.shape == seen.shape
        assert _mean_abs(got, seen) <= case.tolerance
        if case.wrong is not None:
            assert _mean_abs(got, seen) + 20 < _mean_abs(got, _as_the_app_scales(case.wrong()))
        if seen.shape != picture.shape:
            (h, w), (sh, sw) = picture.shape[:2], seen.shape[:2]
            assert f"{w} × {h} px, downscaled to {sw} × {sh} px" in summary
        np.testing.assert_array_equal(_rgb(overlay_png), got)
        detections = json.loads(Path(coco_json).read_text())
        assert detections and f"{len(detections)} detections" in summary
        assert f"**{case.file_name}**" in summary
        image = json.loads(Path(panoptic_json).read_text())["images"][0]
        assert (image["height"], image["width"]) == seen.shape[:2]
    assert app_server.alive()


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_bad_input_with_segfpn_predict(cli_runs, case):
    run = cli_runs[case.name]
    out, stem = run["out"], Path(case.file_name).stem
    assert "Traceback" not in run["stderr"], run["stderr"]
    if case.message:
        assert run["returncode"] == 2, run
        assert "error: " in run["stderr"] and case.message in run["stderr"]
        assert not out.exists() or not any(out.iterdir())  # nothing half-written
        return
    assert run["returncode"] == 0, run["stderr"]
    assert f"wrote results for {case.file_name}" in run["stdout"]
    expected = case.expected()
    results = json.loads((out / f"{stem}.instances.json").read_text())
    document = json.loads((out / f"{stem}.panoptic.json").read_text())
    size = document["images"][0]["height"], document["images"][0]["width"]
    assert size == expected.shape[:2]  # the orientation a person sees
    assert results
    overlay = _rgb(out / f"{stem}.overlay.png")
    assert overlay.shape == expected.shape
    assert (out / f"{stem}.panoptic.png").is_file() and (out / f"{stem}.panoptic.json").is_file()
    # The overlay is drawn over the picture a person sees, not over a wrong reading of the file.
    resemblance = _correlation(overlay, expected)
    assert resemblance > 0.2
    if case.wrong is not None:
        assert resemblance > _correlation(overlay, case.wrong()) + 0.1


#: Mistakes on `segfpn predict`'s command line: name -> (what follows `predict`, what the one
#: error line says). {photo}: a photo; {missing}: a path that does not exist; {file}: a file.
USAGE_ERRORS = {
    "missing_image": (["{missing}"], "missing.jpg does not exist"),
    "unknown_device": (["{photo}", "--device", "gpu0"], "--device gpu0: not a device; use cpu, cuda or cuda:N"),
    "missing_cuda_device": (["{photo}", "--device", "cuda:99"], "--device cuda:99: "),
    "fp16_on_cpu": (["{photo}", "--device", "cpu", "--precision", "fp16"],
                    "--precision fp16 needs a CUDA device; use --precision bf16 on a CPU"),
    "out_is_a_file": (["{photo}", "--out", "{file}"], "is a file, not a folder"),
}
MINI = ROOT / "tests" / "data" / "d2_mini" / "panoptic_fpn_mini.pkl"


@pytest.fixture(scope="module")
def usage_error_runs(tmp_path_factory) -> dict[str, dict]:
    """Each of :data:`USAGE_ERRORS` run through cli_runner.py (a process of its own each), with
    ``--out`` a fresh folder path unless the case gives its own."""
    root = tmp_path_factory.mktemp("usage_errors")
    a_file = root / "notes.txt"
    a_file.write_text("not a folder")
    places = {"photo": PORTRAIT, "missing": root / "missing.jpg", "file": a_file}
    argvs = [["predict", *(a.format(**places) for a in arguments), "--weights", str(MINI)]
             + ([] if "--out" in arguments else ["--out", str(root / name)])
             for name, (arguments, _) in USAGE_ERRORS.items()]
    runner = subprocess.run([sys.executable, str(Path(__file__).with_name("cli_runner.py")), str(root / "logs")],
                            input=json.dumps(argvs), capture_output=True, text=True, timeout=600, cwd=ROOT,
                            check=False)
    assert runner.returncode == 0, runner.stderr
    runs = [json.loads(line) for line in runner.stdout.splitlines()]
    return {name: {**run, "out": root / name} for name, run in zip(USAGE_ERRORS, runs)}


@pytest.mark.parametrize("name", list(USAGE_ERRORS))
def test_usage_errors_of_segfpn_predict_are_one_error_line(usage_error_runs, name):
    run, message = usage_error_runs[name], USAGE_ERRORS[name][1]
    assert run["returncode"] == 2, run
    assert run["stderr"].startswith("error: ") and run["stderr"].count("\n") == 1, run["stderr"]
    assert message in run["stderr"] and run["stdout"] == ""
    assert not run["out"].exists()  # nothing written, not even the folder


def test_segfpn_predict_runs_are_the_command_itself(cli_runs, cli_literal_run):
    """The runner's fork of segfpn.cli gives what `python -m segfpn.cli predict` gives."""
    case = BY_NAME[LITERAL_CASE]
    forked, literal = cli_runs[case.name], cli_literal_run
    assert literal["returncode"] == forked["returncode"] == 0, literal["stderr"]
    assert literal["stdout"].replace(str(literal["out"]), "OUT") == \
        forked["stdout"].replace(str(forked["out"]), "OUT")
    assert sorted(p.name for p in literal["out"].iterdir()) == \
        sorted(p.name for p in forked["out"].iterdir())
    stem = Path(case.file_name).stem
    a, b = (json.loads((run["out"] / f"{stem}.instances.json").read_text())
            for run in (literal, forked))
    assert len(a) == len(b) > 0
    assert [r["category_id"] for r in a] == [r["category_id"] for r in b]
    np.testing.assert_allclose([r["bbox"] for r in a], [r["bbox"] for r in b],
                               atol=1e-2)


def test_server_keeps_serving_with_memory_back_to_its_level(app_server, client, bad_inputs):
    segment(client, PORTRAIT)  # the first run allocates the model's working memory
    dirs = _request_dirs(app_server)
    start = app_server.memory()
    app_server.reset_peak()
    refused = 0
    for case in CASES:
        try:
            segment(client, bad_inputs[case.name])
        except AppError:
            refused += 1
    assert refused == sum(1 for c in CASES if c.message)
    overlay, *_, summary = segment(client, PORTRAIT)  # the next request is served
    assert _rgb(overlay).shape == _rgb(PORTRAIT).shape and PORTRAIT.name in summary
    end = app_server.memory()
    print(f"server memory: {start['rss']:.0f} MB before, peak {end['peak']:.0f} MB, "
          f"{end['rss']:.0f} MB after {len(CASES) + 1} requests")
    assert end["rss"] - start["rss"] < MAX_RSS_GROWTH_MB
    assert end["peak"] - start["rss"] < MAX_PEAK_GROWTH_MB
    # Files: this session keeps one folder of downloads, its last run's; the rest are gone.
    assert len(_request_dirs(app_server) - dirs) <= 1
    assert app_server.alive()


def test_upload_over_25_mb_is_refused_before_it_is_read(app_server, client, tmp_path):
    big = tmp_path / "huge.jpg"
    big.write_bytes(b"\xff\xd8\xff\xe0" + bytes(26 * 1024 * 1024))
    with pytest.raises(ValueError, match="exceeds the maximum file size"):
        segment(client, big)  # gradio_client checks the app's limit first
    with big.open("rb") as f:  # a client that does not check: the server refuses it
        answer = httpx.post(app_server.url + "gradio_api/upload", files={"files": (big.name, f)},
                            timeout=60)
    assert answer.status_code == 413 and "maximum" in answer.text.lower()
    assert not [p for p in app_server.gradio_tmp.rglob("*") if p.is_file()
                and p.stat().st_size > 25 * 1024 * 1024]
    assert app_server.alive()
