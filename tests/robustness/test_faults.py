"""Faults while the app runs: its checkpoint deleted or corrupted, a download interrupted or
too slow to finish, the weights folder read-only, the server stopped by SIGTERM. Each gives a
message; the app keeps working with what it has, and leaves nothing behind when stopped."""

from __future__ import annotations

import concurrent.futures
import functools
import hashlib
import http.server
import os
import pickle
import shutil
import signal
import threading
from types import SimpleNamespace

import numpy as np
import pytest
from app_process import AppProcess, page_status, segment, serve_in_process
from gradio_client import Client
from gradio_client.exceptions import AppError
from input_cases import CAT, PORTRAIT
from PIL import Image
from serve_app import MINI_CHECKPOINT, SMALL_INPUT

from testdata import LocalHTTPServer

import segfpn
from segfpn.checkpoints import resolve
from segfpn.app.source import ModelSource
from segfpn.checkpoints import catalogue

#: Seconds an app may take to answer while its download hangs (it does not wait for it).
START_WITHOUT_DOWNLOAD_S = 60

FAST = functools.partial(segfpn.load, overrides=SMALL_INPUT)


def _rgb(path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


def _works(client, photo=PORTRAIT) -> None:
    """Segment answers with this photo's result."""
    overlay, *_, summary = segment(client, photo)
    assert _rgb(overlay).shape == _rgb(photo).shape and photo.name in summary


class _Marker:
    """Unpickling this creates ``path``: a file that proves code from a checkpoint ran."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


@pytest.fixture(scope="module")
def running(tmp_path_factory):
    """The app serving a copy of the mini checkpoint, weights/model.pkl, loaded at start."""
    folder = tmp_path_factory.mktemp("weights")
    path = folder / "model.pkl"
    shutil.copy(MINI_CHECKPOINT, path)
    source = ModelSource([str(path)], device="cpu", loader=FAST)
    url, demo = serve_in_process(source, allow_reload=True)
    client = Client(url, verbose=False)
    _works(client)
    yield SimpleNamespace(path=path, source=source, url=url, client=client)
    client.close()
    demo.close()


@pytest.fixture
def checkpoint(running):
    """weights/model.pkl, put back as it was after the test."""
    yield running.path
    shutil.copy(MINI_CHECKPOINT, running.path)


def _reload_fails(client, *messages: str) -> str:
    with pytest.raises(AppError) as failed:
        client.predict(api_name="/reload_model")
    text = str(failed.value)
    for message in (*messages, "model.pkl) stays in use"):
        assert message in text
    return text


def test_checkpoint_deleted_while_running(running, checkpoint):
    loaded = running.source.get()
    checkpoint.unlink()
    _works(running.client)  # the model is in memory: nothing changes
    _reload_fails(running.client, f"{checkpoint} does not exist")
    _works(running.client)
    assert running.source.get() is loaded
    assert "Model **model.pkl**" in page_status(running.url)


@pytest.mark.parametrize("damage, message", [
    ("truncated", "is not a readable pickle"),
    ("text", "is not a checkpoint"),
    ("empty", "is empty (0 bytes)"),
], ids=["truncated", "text", "empty"])
def test_checkpoint_corrupted_while_running(running, checkpoint, damage, message):
    loaded = running.source.get()
    data = MINI_CHECKPOINT.read_bytes()
    checkpoint.write_bytes({"truncated": data[:len(data) // 2], "empty": b"",
                            "text": b"<html>502 Bad Gateway</html>\n"}[damage])
    _works(running.client)
    _reload_fails(running.client, "could not be loaded", message)
    _works(running.client, CAT)
    assert running.source.get() is loaded


def test_reload_of_a_pickle_that_runs_code_is_refused(running, checkpoint, tmp_path):
    marker = tmp_path / "code_ran"
    checkpoint.write_bytes(pickle.dumps({"model": {"w": _Marker(marker)}}))
    _reload_fails(running.client, "refusing to unpickle", "Nothing from it was executed")
    assert not marker.exists()
    _works(running.client)


def test_reload_with_the_file_back_reads_it_again(running, checkpoint):
    loaded = running.source.get()
    checkpoint.unlink()
    _reload_fails(running.client, "does not exist")
    shutil.copy(MINI_CHECKPOINT, checkpoint)
    status = running.client.predict(api_name="/reload_model")["value"]  # the page's new status
    assert "Model **model.pkl**" in status and "on **cpu**" in status
    assert running.source.get() is not loaded  # read from disk again
    _works(running.client)


def test_checkpoint_corrupted_at_start_says_so_then_recovers(tmp_path):
    path = tmp_path / "model.pkl"
    path.write_bytes(MINI_CHECKPOINT.read_bytes()[:100_000])
    url, demo = serve_in_process(ModelSource([str(path)], device="cpu", loader=FAST))
    try:
        status = page_status(url)
        assert "No model is loaded" in status and "could not be loaded" in status
        client = Client(url, verbose=False)
        with pytest.raises(AppError, match="No model is loaded.*not a readable pickle"):
            segment(client, PORTRAIT)
        shutil.copy(MINI_CHECKPOINT, path)  # fixed while the app runs: the next press uses it
        _works(client)
        client.close()
    finally:
        demo.close()


def test_download_interrupted_at_start(monkeypatch, tmp_path, cut_downloads):
    weights = tmp_path / "weights"
    monkeypatch.setenv("SEGFPN_WEIGHTS_DIR", str(weights))
    monkeypatch.setenv("SEGFPN_BASE_URL", cut_downloads.url)
    monkeypatch.delenv("SEGFPN_OFFLINE", raising=False)
    known = catalogue.default_checkpoint()
    hits = len(cut_downloads.hits)
    source = ModelSource([known.name, str(MINI_CHECKPOINT)], device="cpu", loader=FAST,
                         download_timeout=10)
    url, demo = serve_in_process(source)
    try:
        status = page_status(url)  # once the download in the background has ended
        assert len(cut_downloads.hits) - hits == 2  # tried, and tried once more
        assert "Model **panoptic_fpn_mini.pkl**" in status  # the fallback serves
        assert f"`{known.name}`: could not download it" in status
        assert "connection dropped" in status or "cut short" in status
        assert known.url.split("/")[-1] in status and str(weights / known.file_name) in status
        assert not any(weights.iterdir())  # no partial file left behind
        client = Client(url, verbose=False)
        _works(client)
        client.close()
    finally:
        demo.close()


def test_weights_folder_read_only(readonly_app):
    before = sorted(p.name for p in readonly_app.weights.iterdir())
    status = page_status(readonly_app.url)
    assert "Model **panoptic_fpn_mini.pkl**" in status, status  # read from the read-only folder
    assert "could not download it" in status and str(readonly_app.weights) in status
    assert "Read-only file system" in status or "Permission denied" in status, status
    client = Client(readonly_app.url, verbose=False)
    _works(client)
    client.close()
    assert sorted(p.name for p in readonly_app.weights.iterdir()) == before
    assert readonly_app.alive()


class _GatedMirror(LocalHTTPServer):
    """An HTTP server on 127.0.0.1 serving ``data`` for any path: the headers and the first
    half at once, the rest once :attr:`gate` is set."""

    def __init__(self, data: bytes):
        self.gate = threading.Event()
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                self.send_response(200)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data[:len(data) // 2])
                self.wfile.flush()
                outer.gate.wait(120)
                self.wfile.write(data[len(data) // 2:])
                self.close_connection = True

            def log_message(self, *args):
                pass

        super().__init__(Handler)

    def close(self) -> None:
        self.gate.set()
        super().close()


def test_download_in_the_background_then_used(monkeypatch, tmp_path):
    """A known checkpoint missing from weights/ and slow to arrive: the app serves at once with
    the offline model and says it is downloading; once the file has arrived it is used."""
    data = MINI_CHECKPOINT.read_bytes()
    name = "mini_on_a_mirror"
    known = catalogue.KnownCheckpoint(
        name=name, arch="panoptic_fpn_R_50", format="detectron2", categories="coco_panoptic",
        url="https://example.invalid/mini/panoptic_fpn_mini_mirror.pkl",
        file_name="panoptic_fpn_mini_mirror.pkl", source_url="https://example.invalid/",
        size_bytes=len(data), md5_prefix=hashlib.md5(data).hexdigest()[:8])
    monkeypatch.setattr(catalogue, "CHECKPOINTS", {**catalogue.CHECKPOINTS, name: known})
    mirror = _GatedMirror(data)
    monkeypatch.setenv("SEGFPN_WEIGHTS_DIR", str(tmp_path / "weights"))
    monkeypatch.setenv("SEGFPN_BASE_URL", mirror.url)
    monkeypatch.delenv("SEGFPN_OFFLINE", raising=False)
    source = ModelSource(resolve.candidates(name), device="cpu", loader=FAST)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        started = pool.submit(serve_in_process, source)
        try:
            url, demo = started.result(timeout=START_WITHOUT_DOWNLOAD_S)  # half the file sent
        finally:
            if not started.done():
                mirror.gate.set()  # let the app that waits for its download go, then fail
    try:
        status = page_status(url, settled=False)
        assert f"**Downloading `{name}`**" in status and f"of {len(data) / 2**20:.1f} MB" in status
        assert "the offline model is used meanwhile" in status
        assert "Model **synthetic_panoptic_fpn.safetensors**" in status
        client = Client(url, verbose=False)
        *_, summary = segment(client, PORTRAIT)  # served by the offline model meanwhile
        assert PORTRAIT.name in summary
        mirror.gate.set()
        status = page_status(url)  # once it has arrived and loaded
        assert status.startswith(f"Model **{name}**") and "80 thing classes" in status, status
        assert "Downloading" not in status and "offline" not in status
        before = len(source.get().categories.thing_names)
        assert before == 80 and source.loaded_from == name
        _works(client)
        client.close()
    finally:
        demo.close()
        mirror.close()


@pytest.fixture
def app_py_with_a_trickling_download(tmp_path, trickle_downloads):
    """`python app.py --weights <default checkpoint>,<mini>`: the default one missing and its
    mirror sending one byte every 2 s (so it never finishes and never times out)."""
    weights = tmp_path / "weights"
    weights.mkdir()
    server = AppProcess.app_py(
        tmp_path / "app", "--weights", f"{catalogue.default_checkpoint().name},{MINI_CHECKPOINT}",
        env={"SEGFPN_WEIGHTS_DIR": str(weights), "SEGFPN_BASE_URL": trickle_downloads.url,
             "SEGFPN_OFFLINE": "0"})
    yield server.wait_ready()
    server.stop()


def test_app_py_serves_at_once_while_its_download_trickles(app_py_with_a_trickling_download,
                                                           trickle_downloads):
    server = app_py_with_a_trickling_download  # ready: it did not wait for the download
    known = catalogue.default_checkpoint()
    assert trickle_downloads.hits == [f"/{known.file_name}"]  # still the first attempt
    status = page_status(server.url, settled=False)
    assert f"**Downloading `{known.name}`**" in status and "the model below is used meanwhile" in status
    assert "Model **panoptic_fpn_mini.pkl**" in status
    client = Client(server.url, verbose=False)
    _works(client)
    client.close()


def test_sigterm_removes_the_user_files_and_exits_cleanly(app_py_with_a_trickling_download):
    """SIGTERM (kill, docker stop, systemd) ends `python app.py` as Ctrl+C does, even with a
    download under way: exit code 0, and neither the app's folder (segfpn-app-*) nor Gradio's
    copies of the uploads and results are left in the temp folders (Gradio's copies of the
    example photos may stay)."""
    server = app_py_with_a_trickling_download
    client = Client(server.url, verbose=False)
    _works(client)
    client.close()
    examples = {p.read_bytes() for p in PORTRAIT.parent.iterdir() if p.is_file()}

    def user_files():
        return [p for p in server.gradio_tmp.rglob("*") if p.is_file() and p.read_bytes() not in examples]

    assert list(server.tmp.glob("segfpn-app-*"))
    assert {p.suffix for p in user_files()} >= {".png", ".json"}  # the overlay, the COCO JSON
    os.kill(server.pid, signal.SIGTERM)
    assert server.process.wait(timeout=60) == 0, server.log()
    assert list(server.tmp.glob("segfpn-app-*")) == []
    assert user_files() == []
    assert "Traceback" not in server.log()
