"""What a request can reach: every event goes through the queue (no direct HTTP route runs the
model beside it), reloading the weights only when the operator allows it, uploads stay in
Gradio's temp folder (or memory), no path from a request reaches the file system, the app
listens on 127.0.0.1 unless told otherwise, and checkpoints are never unpickled beyond numpy
arrays (torch.load only with weights_only=True)."""

from __future__ import annotations

import ast
import functools
import os
import secrets
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace

import httpx
import pytest
import torch
from app_process import (ROOT, ConcurrencyCountingPredictor, listening_addresses, segment,
                         serve_in_process)
from gradio_client import Client
from input_cases import CAT
from PIL import Image, PngImagePlugin
from serve_app import SMALL_INPUT

import segfpn
from segfpn.app.source import ModelSource

MINI = ROOT / "tests" / "data" / "d2_mini" / "panoptic_fpn_mini.pkl"
#: Requests sent at once, straight over HTTP, as no page would send them.
DIRECT_CALLS = 16


@pytest.fixture(scope="module")
def counted_app():
    """The app (queue of 6) around a predictor that records how many of its calls ever ran
    at once (each lasting at least 0.3 s, so that calls let through together overlap)."""
    predictor = ConcurrencyCountingPredictor(segfpn.load(MINI, device="cpu", overrides=SMALL_INPUT))
    url, demo = serve_in_process(ModelSource.from_predictor(predictor, "mini"), queue_size=6)
    yield SimpleNamespace(url=url, predictor=predictor)
    demo.close()


def _upload(url: str, path: Path) -> str:
    with path.open("rb") as f:
        return httpx.post(url + "gradio_api/upload", files={"files": (path.name, f)},
                          timeout=30).json()[0]


@pytest.mark.parametrize("route", ["run", "api", "call"])
def test_direct_http_calls_never_run_the_model_beside_the_queue(counted_app, route):
    """16 POSTs at once to /segment by every HTTP route Gradio has: /run/ and /api/ (which run
    an event at once when the API is open) are refused; /call/ is queued or told "busy". The
    model never runs for two requests at once."""
    url, predictor = counted_app.url, counted_app.predictor
    data = [{"path": _upload(url, CAT), "meta": {"_type": "gradio.FileData"}}, 1.0, 0.5, True, True]
    calls, predictor.most_at_once = predictor.calls, 0

    def send(_):
        with httpx.Client(timeout=120) as http:
            if route in ("run", "api"):
                answer = http.post(f"{url}gradio_api/{route}/segment", json={"data": [*data, None]})
                return answer.status_code, answer.text
            joined = http.post(f"{url}gradio_api/call/segment", json={"data": data})
            if joined.status_code != 200:
                return joined.status_code, joined.text
            return 200, http.get(f"{url}gradio_api/call/segment/{joined.json()['event_id']}").text

    with ThreadPoolExecutor(DIRECT_CALLS) as pool:
        answers = list(pool.map(send, range(DIRECT_CALLS)))
    assert predictor.most_at_once == (0 if route in ("run", "api") else 1)
    if route in ("run", "api"):
        assert [(s, t) for s, t in answers if s != 404 or "join the queue" not in t] == []
        assert predictor.calls == calls
        # Nor does any other event of the page run beside the queue (the drawing ones included).
        for name in ("redraw_instances", "roi_levels", "inspect", "model_status"):
            assert httpx.post(f"{url}gradio_api/{route}/{name}", json={"data": []},
                              timeout=30).status_code == 404
    else:
        busy = [t for s, t in answers if s == 503]
        done = [t for s, t in answers if s == 200 and "event: complete" in t]
        assert len(busy) + len(done) == DIRECT_CALLS, answers
        assert all("Queue is full" in t for t in busy)
        assert predictor.calls - calls == len(done) > 0


@pytest.mark.parametrize("allowed", ["off", "on"])
def test_reload_model_only_when_the_operator_allows_it(monkeypatch, allowed):
    """Without --allow-reload (SEGFPN_ALLOW_RELOAD=1) the page has no "Reload weights" and no
    client can reload the weights, by name or by any HTTP route; with it, both work."""
    import app

    options = {}  # off: the app as built by default
    if allowed == "on":
        monkeypatch.setenv("SEGFPN_ALLOW_RELOAD", "1")
        options["allow_reload"] = app.parse_args([]).allow_reload
    source = ModelSource([str(MINI)], device="cpu",
                         loader=functools.partial(segfpn.load, overrides=SMALL_INPUT))
    url, demo = serve_in_process(source, **options)
    client = Client(url, verbose=False)
    try:
        loaded = source.get()
        config = httpx.get(url + "config", timeout=30).json()
        button = [c for c in config["components"]
                  if c.get("props", {}).get("elem_id") == "reload-button"]
        endpoints = {d.get("api_name") for d in config["dependencies"]}
        if allowed == "on":
            assert button and "reload_model" in endpoints
            assert "Model **panoptic_fpn_mini.pkl**" in client.predict(api_name="/reload_model")["value"]
            assert source.get() is not loaded  # read from disk again
            return
        assert button == [] and "reload_model" not in endpoints
        assert [fn.name for fn in demo.fns.values() if fn.name == "reload_model"] == []
        with pytest.raises(ValueError, match="reload_model"):
            client.predict(api_name="/reload_model")
        for route in ("run", "api", "call"):
            answer = httpx.post(f"{url}gradio_api/{route}/reload_model", json={"data": []}, timeout=30)
            assert answer.status_code >= 400, (route, answer.text)
        assert source.get() is loaded
    finally:
        client.close()
        demo.close()


def _call_segment(server, path: str) -> str:
    """/segment with an input naming ``path`` on the server (not an upload): the raw answer."""
    body = {"data": [{"path": path, "meta": {"_type": "gradio.FileData"}}, 1.0, 0.5, True, True]}
    event = httpx.post(server.url + "gradio_api/call/segment", json=body, timeout=30).json()
    return httpx.get(f"{server.url}gradio_api/call/segment/{event['event_id']}", timeout=60).text


@pytest.mark.parametrize("target", ["etc_passwd", "checkpoint", "example_photo", "app_source",
                                    "traversal"])
def test_request_naming_a_server_path_is_refused(app_server, target):
    path = {"etc_passwd": "/etc/passwd", "checkpoint": str(MINI),
            "example_photo": str(CAT),  # an image the app could read: still refused
            "app_source": str(ROOT / "app.py"),
            "traversal": f"{app_server.gradio_tmp}/../../../../../etc/passwd"}[target]
    answer = _call_segment(app_server, path)
    assert "event: error" in answer and "event: complete" not in answer
    assert "not uploaded by a user" in app_server.log()  # refused by the upload check, not a crash
    # ... and through the route that serves files: only the example photos are served.
    served = httpx.get(app_server.url + "gradio_api/file=" + path, timeout=30)
    if target == "example_photo":
        assert served.status_code == 200 and served.content == CAT.read_bytes()
    else:
        assert served.status_code == 403 and "not allowed" in served.text
    assert app_server.alive()


def test_the_app_download_folders_are_not_served(app_server, client):
    """The downloads a session gets are Gradio's copies (in its temp folder, served from
    there); the app's own folder (under TMPDIR) holds a request's files only while it runs,
    and is never served."""
    _, *downloads, _ = segment(client, CAT)
    app_folders = list(app_server.tmp.glob("segfpn-app-*"))
    assert app_folders and [p for p in app_folders[0].rglob("*") if p.is_file()] == []
    in_progress = app_folders[0] / "request-in-progress" / "cat.overlay.png"  # as a request writes it
    in_progress.parent.mkdir()
    in_progress.write_bytes(CAT.read_bytes())
    try:
        assert httpx.get(app_server.url + "gradio_api/file=" + str(in_progress),
                         timeout=30).status_code == 403
    finally:
        shutil.rmtree(in_progress.parent)
    # What the session downloads lives in Gradio's temp folder (its copy, not the app's file).
    assert all(Path(d).name.startswith(CAT.stem) for d in downloads if d)
    served = [p for p in app_server.gradio_tmp.rglob(f"{CAT.stem}.*") if p.is_file()]
    assert {p.name for p in served} >= {Path(d).name for d in downloads if d}


def _recent_files(folder: Path, since: float, max_bytes: int = 64 << 20):
    """Files under ``folder`` changed since ``since`` (none over ``max_bytes``: an upload is at
    most 25 MB, and the repository may hold large files a training run is writing)."""
    for path in folder.rglob("*"):
        try:
            if ".git" in path.parts or path.is_symlink() or not path.is_file():
                continue
            stat = path.stat()
            if stat.st_mtime >= since and stat.st_size <= max_bytes:
                yield path
        except OSError:
            continue


def test_uploads_are_written_to_gradio_temp_folder_only(app_server, client, tmp_path):
    """Uploads carrying a random token: afterwards the token is in files under Gradio's temp
    folder and nowhere else the server writes (its working and temp folders, the repository)."""
    since = time.time() - 1
    token = secrets.token_hex(16).encode()
    photo = tmp_path / "tagged.png"
    info = PngImagePlugin.PngInfo()
    info.add_text("Comment", token.decode())
    Image.open(CAT).save(photo, pnginfo=info)
    text = tmp_path / "tagged.jpg"
    text.write_bytes(b"not an image " + token)
    segment(client, photo)
    with pytest.raises(Exception, match="not an image"):
        segment(client, text)
    # A file name that tries to climb out of the upload folder.
    with CAT.open("rb") as f:
        uploaded = httpx.post(app_server.url + "gradio_api/upload", timeout=30,
                              files={"files": (f"../../../escaped_{token.decode()}.png", f)}).json()
    assert Path(uploaded[0]).resolve().is_relative_to(app_server.gradio_tmp.resolve())

    holders = [p for folder in (app_server.root, ROOT) for p in _recent_files(folder, since)
               if token in p.read_bytes() or token.decode() in p.name]
    assert holders, "the uploads were not found at all"
    outside = [p for p in holders if not p.resolve().is_relative_to(app_server.gradio_tmp.resolve())]
    assert outside == []


def test_binds_to_127_0_0_1_unless_told_otherwise(readonly_app, monkeypatch):
    # `python app.py` started without --host (and no SEGFPN_HOST / GRADIO_SERVER_NAME):
    assert listening_addresses(readonly_app.pid, readonly_app.port) == {"127.0.0.1"}
    import app

    for name in ("SEGFPN_HOST", "GRADIO_SERVER_NAME"):
        monkeypatch.delenv(name, raising=False)
    assert app.parse_args([]).host == "127.0.0.1"
    assert app.parse_args(["--host", "0.0.0.0"]).host == "0.0.0.0"
    monkeypatch.setenv("SEGFPN_HOST", "0.0.0.0")  # told otherwise, by the environment
    assert app.parse_args([]).host == "0.0.0.0"


class _RunsCode:
    """Unpickling this creates ``path``: proof that code from a checkpoint ran."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


@pytest.mark.parametrize("kind", ["detectron2_pickle", "torch_zip", "torch_legacy", "in_the_app"])
def test_checkpoint_that_runs_code_is_refused(tmp_path, kind):
    marker = tmp_path / "code_ran"
    payload = {"model": {"conv.weight": _RunsCode(marker)}}
    path = tmp_path / ("model.pth" if kind.startswith("torch") else "model.pkl")
    if kind == "torch_zip":
        torch.save(payload, path)
    elif kind == "torch_legacy":
        torch.save(payload, path, _use_new_zipfile_serialization=False)
    else:
        import pickle

        path.write_bytes(pickle.dumps(payload))
    if kind == "in_the_app":
        source = ModelSource([str(path)], device="cpu")
        assert source.try_get() is None
        assert "refusing to unpickle" in source.describe()
    else:
        with pytest.raises(segfpn.CheckpointError):
            segfpn.load(path, device="cpu")
    assert not marker.exists()


def _calls(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            yield node, ast.unparse(node.func)


def test_torch_load_only_with_weights_only_and_no_other_unpickling():
    sources = [ROOT / "app.py", *sorted((ROOT / "segfpn").rglob("*.py"))]
    torch_loads, problems = 0, []
    for source in sources:
        tree = ast.parse(source.read_text(), filename=str(source))
        where = source.relative_to(ROOT)
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module in ("torch", "pickle", "dill"):
                names = {a.name for a in node.names}
                if names & {"load", "loads", "Unpickler"}:
                    problems.append(f"{where}:{node.lineno} imports {names} from {node.module}")
        for node, func in _calls(tree):
            keywords = {k.arg: k.value for k in node.keywords}
            if func == "torch.load":
                torch_loads += 1
                value = keywords.get("weights_only")
                if not (isinstance(value, ast.Constant) and value.value is True):
                    problems.append(f"{where}:{node.lineno} torch.load without weights_only=True")
            elif func in ("pickle.load", "pickle.loads", "pickle.Unpickler", "dill.load",
                          "dill.loads", "joblib.load", "torch.jit.load", "torch.package"):
                problems.append(f"{where}:{node.lineno} calls {func}")
            elif func in ("np.load", "numpy.load"):
                value = keywords.get("allow_pickle")
                if value is not None and not (isinstance(value, ast.Constant) and value.value is False):
                    problems.append(f"{where}:{node.lineno} np.load with allow_pickle")
            elif func.endswith("Unpickler") and source.name != "safe_pickle.py":
                problems.append(f"{where}:{node.lineno} makes an unpickler ({func})")
    assert torch_loads >= 2  # the scan sees the two calls in segfpn/checkpoints/loading.py
    assert problems == []
    # The one unpickler there is allows numpy arrays and containers, and the latin-1 codec that
    # Python 3 writes protocol-2 bytes with (tests/checkpoints/test_file_formats.py), nothing else.
    from segfpn.checkpoints.safe_pickle import _ALLOWED_GLOBALS

    assert {module.split(".")[0] for module, _ in _ALLOWED_GLOBALS} == {"collections", "numpy", "_codecs"}
    assert [name for module, name in _ALLOWED_GLOBALS if module == "_codecs"] == ["encode"]
    assert os.environ.get("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD") is None
