"""Faults while the app runs: its checkpoint deleted or corrupted, a download interrupted, the
weights folder read-only. Each gives a message; the app keeps working with what it has."""

from __future__ import annotations

import functools
import pickle
import shutil
from types import SimpleNamespace

import numpy as np
import pytest
from app_process import page_status, segment, serve_in_process
from gradio_client import Client
from gradio_client.exceptions import AppError
from input_cases import CAT, PORTRAIT
from PIL import Image
from serve_app import MINI_CHECKPOINT, SMALL_INPUT

import segfpn
from segfpn.app_state import ModelSource
from segfpn.checkpoints import catalogue

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
    url, demo = serve_in_process(source)
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
        assert len(cut_downloads.hits) - hits == 2  # tried, and tried once more
        status = page_status(url)
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
