"""`segfpn predict` with weights that cannot be had: one `error:` line on stderr, exit code 2.

In-process through ``segfpn.cli.main`` (stderr captured), and once as the real command, to show
that nothing else (a traceback, a log line) reaches the terminal.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading

import pytest

from segfpn.cli import main as cli_main

from testdata import EXAMPLES, ROOT

IMAGE = EXAMPLES / "synthetic_shapes_0.png"


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    """An empty weights folder, no mirror, no proxy."""
    monkeypatch.setenv("SEGFPN_WEIGHTS_DIR", str(tmp_path / "weights"))
    for var in ("SEGFPN_BASE_URL", "SEGFPN_OFFLINE", "http_proxy", "https_proxy", "HTTP_PROXY",
                "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)


def _predict(capsys, tmp_path, weights: str) -> tuple[int, str]:
    status = cli_main(["predict", str(IMAGE), "--weights", weights, "--out", str(tmp_path / "out"),
                       "--device", "cpu", "--no-progress"])
    return status, capsys.readouterr().err


def _one_error_line(err: str) -> str:
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err[-3000:]
    return lines[0]


def test_offline_and_missing(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("SEGFPN_OFFLINE", "1")
    status, err = _predict(capsys, tmp_path, "panoptic_fpn_R_50_3x")
    line = _one_error_line(err)
    assert status == 2
    assert "checkpoint 'panoptic_fpn_R_50_3x' is not available" in line
    assert "model_final_c10459.pkl" in line and "SEGFPN_OFFLINE" in line
    assert not [p for p in (tmp_path / "out").rglob("*") if p.is_file()]


def test_download_refused(tmp_path, monkeypatch, capsys):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    monkeypatch.setenv("SEGFPN_BASE_URL", f"http://127.0.0.1:{port}/")
    status, err = _predict(capsys, tmp_path, "panoptic_fpn_R_50_3x")
    line = _one_error_line(err)
    assert status == 2 and "connection refused" in line and "by hand" in line
    assert list((tmp_path / "weights").iterdir()) == []


def test_native_file_without_config(tmp_path, capsys):
    from safetensors.torch import save

    import torch

    path = tmp_path / "model.safetensors"
    path.write_bytes(save({"w": torch.zeros(2)}, metadata={"format": "segfpn", "arch": "x", "categories": "{}"}))
    status, err = _predict(capsys, tmp_path, str(path))
    assert status == 2 and "without the 'config' metadata entry" in _one_error_line(err)


def test_fifo_as_weights(tmp_path, capsys):
    fifo = tmp_path / "weights.pkl"
    os.mkfifo(fifo)
    outcome = {}
    thread = threading.Thread(target=lambda: outcome.update(result=_predict(capsys, tmp_path, str(fifo))),
                              daemon=True)
    thread.start()
    thread.join(15)
    if thread.is_alive():
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))  # frees the open() it is blocked in
        thread.join(5)
        pytest.fail("segfpn predict blocked on a FIFO given as --weights")
    status, err = outcome["result"]
    assert status == 2 and "FIFO" in _one_error_line(err)


def test_the_command_itself_prints_one_line(tmp_path):
    """`python -m segfpn.cli predict x.jpg --weights NAME` offline: no traceback."""
    env = {**os.environ, "SEGFPN_OFFLINE": "1", "SEGFPN_WEIGHTS_DIR": str(tmp_path / "weights")}
    done = subprocess.run([sys.executable, "-m", "segfpn.cli", "predict", str(IMAGE), "--weights",
                           "panoptic_fpn_R_50_3x", "--out", str(tmp_path / "out")],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr[-3000:]
    assert "is not available" in _one_error_line(done.stderr)
    assert done.stdout == ""
