"""What a request can reach: uploads stay in Gradio's temp folder (or memory), no path from a
request reaches the file system, the app listens on 127.0.0.1 unless told otherwise, and
checkpoints are never unpickled beyond numpy arrays (torch.load only with weights_only=True)."""

from __future__ import annotations

import ast
import os
import secrets
import sys
import time
from pathlib import Path

import httpx
import pytest
import torch
from app_process import ROOT, listening_addresses, segment
from input_cases import CAT
from PIL import Image, PngImagePlugin

import segfpn
from segfpn.app_state import ModelSource

MINI = ROOT / "tests" / "data" / "d2_mini" / "panoptic_fpn_mini.pkl"


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
    segment(client, CAT)
    files = [p for p in app_server.tmp.glob("segfpn-app-*/request-*/*") if p.is_file()]
    assert files
    for path in files:
        assert httpx.get(app_server.url + "gradio_api/file=" + str(path), timeout=30).status_code == 403


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
    sys.path.insert(0, str(ROOT))
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
    # The one unpickler there is allows numpy arrays and containers, nothing else.
    from segfpn.checkpoints.safe_pickle import _ALLOWED_GLOBALS

    assert {module.split(".")[0] for module, _ in _ALLOWED_GLOBALS} == {"collections", "numpy"}
    assert os.environ.get("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD") is None
