"""Downloads against a real HTTP server on 127.0.0.1 serving generated files.

Every failure mode must leave the destination folder empty (no final file, no ``.part-*``).
Nothing here may connect anywhere but 127.0.0.1 (an autouse fixture enforces it).
"""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import http.server
import os
import random
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections import Counter, namedtuple
from pathlib import Path

import pytest

from segfpn.checkpoints import catalogue, weights_cli
from segfpn.checkpoints import download as dl
from segfpn.checkpoints.catalogue import KnownCheckpoint
from segfpn.checkpoints.download import (
    ChecksumError,
    DownloadError,
    OfflineError,
    download,
    ensure_available,
    local_status,
    verify_file,
    weights_dir,
)

PAYLOAD = random.Random(0).randbytes(300_000)
MD5 = hashlib.md5(PAYLOAD).hexdigest()
SHA256 = hashlib.sha256(PAYLOAD).hexdigest()
D2_NAME = f"model_final_{MD5[:6]}.pkl"
TV_NAME = f"tiny_maskrcnn_coco-{SHA256[:8]}.pth"


class _Handler(http.server.BaseHTTPRequestHandler):
    """Serves ``server.routes[path] = (mode, body)``; modes: ok, truncate, drop, hang, flaky, <code>,
    and for the limits: nolength (the body without Content-Length, then close), endless (the
    body over and over without Content-Length, up to ``server.endless_bytes``), trickle (one
    byte every ``server.trickle_s``), oversize (announces and sends the body three times)."""

    protocol_version = "HTTP/1.1"

    def log_message(self, format, *args):  # keep pytest output clean
        pass

    def do_GET(self):
        server = self.server
        with server.lock:
            server.hits[self.path] += 1
            hit = server.hits[self.path]
        mode, body = server.routes.get(self.path, ("404", b""))
        if mode == "flaky":
            mode = "drop" if hit == 1 else "ok"
        if mode.isdigit():
            self.send_response(int(mode))
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if mode == "hang":
            server.release.wait(5)
            return
        if mode in ("nolength", "endless"):
            self.send_response(200)
            self.send_header("Connection", "close")
            self.end_headers()
            self.close_connection = True
            repeats = 1 if mode == "nolength" else server.endless_bytes // len(body) + 1
            try:
                for _ in range(repeats):
                    self.wfile.write(body)
                    server.sent[self.path] += len(body)
            except OSError:  # the client went away
                pass
            return
        if mode == "trickle":
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            try:
                for i in range(len(body)):
                    self.wfile.write(body[i:i + 1])
                    self.wfile.flush()
                    if server.release.wait(server.trickle_s):
                        break
            except OSError:
                pass
            self.close_connection = True
            return
        if mode == "oversize":
            body = body * 3
        announced = len(body) + (1000 if mode == "truncate" else 0)
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(announced))
        self.end_headers()
        if mode in ("ok", "oversize"):
            try:
                self.wfile.write(body)
            except OSError:  # the client refused the body and went away
                pass
            return
        self.wfile.write(body[: len(body) // 2])
        self.wfile.flush()
        self.close_connection = True
        if mode == "drop":  # abort with a TCP reset instead of a clean close
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.connection.close()


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.routes: dict[str, tuple[str, bytes]] = {}
        self.hits: Counter[str] = Counter()
        self.sent: Counter[str] = Counter()  # body bytes written, for the no-Content-Length modes
        self.endless_bytes = 64 << 20
        self.trickle_s = 0.2
        self.lock = threading.Lock()
        self.release = threading.Event()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}{path}"


@pytest.fixture(autouse=True)
def _only_localhost(monkeypatch):
    """Refuse any connection that is not to 127.0.0.1, and keep proxies and env settings out."""
    real = socket.create_connection

    def guarded(address, *args, **kwargs):
        if address[0] not in ("127.0.0.1", "localhost"):
            raise AssertionError(f"test tried to connect to {address}")
        return real(address, *args, **kwargs)

    monkeypatch.setattr(socket, "create_connection", guarded)
    for var in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy", "ALL_PROXY",
                dl.BASE_URL_ENV, dl.WEIGHTS_DIR_ENV, dl.OFFLINE_ENV):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(dl, "_RETRY_BACKOFF_S", 0.0)


@pytest.fixture
def server():
    srv = _Server()
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield srv
    srv.release.set()
    srv.shutdown()
    srv.server_close()
    thread.join(5)


def _checkpoint(url: str, *, file_name: str = D2_NAME, **changes) -> KnownCheckpoint:
    fields = dict(name="tiny_panoptic", arch="panoptic_fpn_R_50", format="detectron2", url=url,
                  file_name=file_name, categories="coco_panoptic",
                  metrics={"box_ap": 1.0, "mask_ap": 1.0, "pq": 1.0},
                  source_url="http://127.0.0.1/", md5_prefix=MD5[:6])
    fields.update(changes)
    return KnownCheckpoint(**fields)


def _serve(server: _Server, mode: str = "ok", *, body: bytes = PAYLOAD, file_name: str = D2_NAME,
           folder: str = "/zoo") -> KnownCheckpoint:
    path = f"{folder}/{file_name}"
    server.routes[path] = (mode, body)
    return _checkpoint(server.url(path), file_name=file_name)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


# ---------------------------------------------------------------------------------------------
# Success


def test_download_verifies_and_renames(server, tmp_path, capsys):
    checkpoint = _serve(server)
    dest = tmp_path / "weights" / "nested"  # created on demand
    path = download(checkpoint, dest_dir=dest, progress=False)
    assert path == dest / D2_NAME
    assert path.read_bytes() == PAYLOAD
    assert _listing(dest) == [D2_NAME]
    assert server.hits[f"/zoo/{D2_NAME}"] == 1
    assert capsys.readouterr().err == ""  # progress=False: no bar
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask  # like any file, not a temp file's 0600


def test_download_sha256_entry_with_progress_bar(server, tmp_path, capsys):
    checkpoint = dataclasses.replace(_serve(server, file_name=TV_NAME), md5_prefix=None,
                                     sha256_prefix=SHA256[:8], format="torchvision",
                                     arch="maskrcnn_resnet50_fpn",
                                     categories="coco_instances_torchvision")
    path = download(checkpoint, dest_dir=tmp_path, progress=True)
    assert path.read_bytes() == PAYLOAD
    assert TV_NAME in capsys.readouterr().err  # tqdm's description


def test_present_file_is_not_fetched_again(server, tmp_path):
    checkpoint = _serve(server)
    (tmp_path / D2_NAME).write_bytes(b"placed by hand")
    assert download(checkpoint, dest_dir=tmp_path, progress=False) == tmp_path / D2_NAME
    assert ensure_available(checkpoint, dest_dir=tmp_path) == tmp_path / D2_NAME
    assert server.hits.total() == 0
    assert (tmp_path / D2_NAME).read_bytes() == b"placed by hand"
    with pytest.raises(ChecksumError):  # ...but verify_file catches it
        verify_file(tmp_path / D2_NAME, checkpoint)

    download(checkpoint, dest_dir=tmp_path, progress=False, force=True)
    assert server.hits.total() == 1
    assert (tmp_path / D2_NAME).read_bytes() == PAYLOAD
    verify_file(tmp_path / D2_NAME, checkpoint)


def test_file_mirror(tmp_path):
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    (mirror / D2_NAME).write_bytes(PAYLOAD)
    checkpoint = _checkpoint(f"http://127.0.0.1:{_closed_port()}/{D2_NAME}")
    path = download(checkpoint, dest_dir=tmp_path / "w", base_url=mirror.as_uri(), progress=False)
    assert path.read_bytes() == PAYLOAD


# ---------------------------------------------------------------------------------------------
# Failures leave nothing behind


def test_wrong_hash(server, tmp_path):
    checkpoint = _serve(server, body=PAYLOAD[::-1])
    with pytest.raises(ChecksumError) as excinfo:
        download(checkpoint, dest_dir=tmp_path, progress=False)
    got = hashlib.md5(PAYLOAD[::-1]).hexdigest()[:6]
    message = str(excinfo.value)
    assert f"md5 of the downloaded file starts with {got}, expected {MD5[:6]}" in message
    assert "corrupted or not the official one" in message
    assert checkpoint.url in message and excinfo.value.url == checkpoint.url
    assert _listing(tmp_path) == []
    assert server.hits.total() == 1  # a wrong file is not retried


def test_sha256_mismatch_message(server, tmp_path):
    checkpoint = dataclasses.replace(_serve(server), md5_prefix=None, sha256_prefix="1234abcd")
    with pytest.raises(ChecksumError, match=f"sha256 of the downloaded file starts with "
                                            f"{SHA256[:8]}, expected 1234abcd"):
        download(checkpoint, dest_dir=tmp_path, progress=False)
    assert _listing(tmp_path) == []


def test_truncated_body(server, tmp_path):
    checkpoint = _serve(server, "truncate")
    with pytest.raises(DownloadError) as excinfo:
        download(checkpoint, dest_dir=tmp_path, progress=False, retries=0)
    assert checkpoint.url in str(excinfo.value)
    assert f"received {len(PAYLOAD) // 2} of {len(PAYLOAD) + 1000} bytes" in str(excinfo.value)
    assert _listing(tmp_path) == []


def test_dropped_connection(server, tmp_path):
    checkpoint = _serve(server, "drop")
    with pytest.raises(DownloadError) as excinfo:
        download(checkpoint, dest_dir=tmp_path, progress=False, retries=0)
    assert checkpoint.url in str(excinfo.value)
    assert not isinstance(excinfo.value, ChecksumError)
    assert _listing(tmp_path) == []


def test_transient_failures_are_retried_a_bounded_number_of_times(server, tmp_path, monkeypatch):
    waits = []
    monkeypatch.setattr(dl, "_RETRY_BACKOFF_S", 1.0)
    monkeypatch.setattr(dl._Stop, "sleep", lambda stop, seconds: waits.append(seconds))
    dropping = _serve(server, "drop")
    with pytest.raises(DownloadError):
        download(dropping, dest_dir=tmp_path, progress=False, retries=2)
    assert server.hits[f"/zoo/{D2_NAME}"] == 3
    assert waits == [1.0, 2.0]
    assert _listing(tmp_path) == []

    flaky = _serve(server, "flaky", folder="/flaky")
    assert download(flaky, dest_dir=tmp_path, progress=False, retries=1).read_bytes() == PAYLOAD
    assert server.hits[f"/flaky/{D2_NAME}"] == 2

    busy = _serve(server, "503", folder="/busy")
    with pytest.raises(DownloadError, match="HTTP 503"):
        download(busy, dest_dir=tmp_path / "busy", progress=False, retries=1)
    assert server.hits[f"/busy/{D2_NAME}"] == 2

    with pytest.raises(ValueError):
        download(flaky, dest_dir=tmp_path / "x", retries=100)
    for deadline in (0, -1, float("inf"), float("nan")):
        with pytest.raises(ValueError, match="deadline_s"):
            download(flaky, dest_dir=tmp_path / "x", deadline_s=deadline)


def test_http_404_names_url_and_status(server, tmp_path):
    checkpoint = _checkpoint(server.url(f"/missing/{D2_NAME}"))
    with pytest.raises(DownloadError) as excinfo:
        download(checkpoint, dest_dir=tmp_path, progress=False)  # default retries: 4xx not retried
    message = str(excinfo.value)
    assert f"could not download {checkpoint.url}: HTTP 404" in message
    assert "SEGFPN_BASE_URL" in message and str(tmp_path / D2_NAME) in message
    assert server.hits.total() == 1
    assert _listing(tmp_path) == []


def test_connection_refused_names_url(tmp_path, monkeypatch):
    waits = []
    monkeypatch.setattr(dl._Stop, "sleep", lambda stop, seconds: waits.append(seconds))
    checkpoint = _checkpoint(f"http://127.0.0.1:{_closed_port()}/zoo/{D2_NAME}")
    with pytest.raises(DownloadError) as excinfo:
        download(checkpoint, dest_dir=tmp_path, progress=False, retries=2)
    assert waits == []  # refused is not transient: no retry
    message = str(excinfo.value)
    assert f"could not reach {checkpoint.url}: connection refused" in message
    assert "by hand" in message and "SEGFPN_BASE_URL" in message
    assert excinfo.value.reason == "connection refused"
    assert _listing(tmp_path) == []


def test_timeout(server, tmp_path):
    checkpoint = _serve(server, "hang")
    with pytest.raises(DownloadError, match="timed out"):
        download(checkpoint, dest_dir=tmp_path, progress=False, timeout=0.3, retries=0)
    assert _listing(tmp_path) == []


def test_announced_size_differs_from_published_size(server, tmp_path):
    checkpoint = dataclasses.replace(_serve(server), size_bytes=len(PAYLOAD) + 1)
    with pytest.raises(ChecksumError, match=f"announces {len(PAYLOAD)} bytes, expected "
                                            f"{len(PAYLOAD) + 1}"):
        download(checkpoint, dest_dir=tmp_path, progress=False)
    assert _listing(tmp_path) == []


def test_disk_error_while_writing(server, tmp_path, monkeypatch):
    checkpoint = _serve(server)
    real_open_temp = dl._open_temp

    class _FullDisk:
        def __init__(self, file):
            self.file = file

        def write(self, data):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.file.close()

    class _FullOnClose(_FullDisk):  # buffered data hits the full disk only when closed
        def write(self, data):
            return len(data)

        def __exit__(self, *exc):
            self.file.close()
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def open_full(dest_dir, file_name):
        file, temp_path = real_open_temp(dest_dir, file_name)
        assert temp_path.name.startswith(f"{D2_NAME}.part-") and temp_path.exists()
        return wrapper(file), temp_path

    wrapper = _FullDisk
    monkeypatch.setattr(dl, "_open_temp", open_full)
    with pytest.raises(DownloadError, match=os.strerror(errno.ENOSPC)):
        download(checkpoint, dest_dir=tmp_path, progress=False)
    assert _listing(tmp_path) == []

    wrapper = _FullOnClose
    with pytest.raises(DownloadError, match=f"could not write .*{os.strerror(errno.ENOSPC)}"):
        download(checkpoint, dest_dir=tmp_path, progress=False)
    assert _listing(tmp_path) == []


def test_not_enough_free_space(server, tmp_path, monkeypatch):
    checkpoint = _serve(server)
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(dl.shutil, "disk_usage", lambda path: usage(10**12, 10**12 - 1000, 1000))
    with pytest.raises(DownloadError, match="not enough disk space"):
        download(checkpoint, dest_dir=tmp_path, progress=False)
    assert _listing(tmp_path) == []


# ---------------------------------------------------------------------------------------------
# Destinations that cannot be written


def test_destination_is_a_file(server, tmp_path):
    checkpoint = _serve(server)
    blocker = tmp_path / "weights"
    blocker.write_text("not a folder")
    with pytest.raises(DownloadError, match="not a folder"):
        download(checkpoint, dest_dir=blocker, progress=False)
    with pytest.raises(DownloadError, match="cannot create"):
        download(checkpoint, dest_dir=blocker / "inside", progress=False)
    assert server.hits.total() == 0
    assert _listing(tmp_path) == ["weights"]


def test_unwritable_destination(server, tmp_path, monkeypatch):
    checkpoint = _serve(server)

    real_open = os.open

    def denied_in_tmp_path(path, *args, **kwargs):
        if Path(path).parent == tmp_path:
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(dl.os, "open", denied_in_tmp_path)
    with pytest.raises(DownloadError) as excinfo:
        download(checkpoint, dest_dir=tmp_path, progress=False)
    assert f"cannot write to {tmp_path}" in str(excinfo.value)
    assert "SEGFPN_WEIGHTS_DIR" in str(excinfo.value)
    assert _listing(tmp_path) == []


def test_read_only_folder_for_real(server, tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        try:
            (folder / "probe").touch()
        except PermissionError:
            pass
        else:
            pytest.skip("permissions are not enforced for this user (root); covered by "
                        "test_unwritable_destination")
        with pytest.raises(DownloadError, match="cannot write to"):
            download(_serve(server), dest_dir=folder, progress=False)
        assert _listing(folder) == []
    finally:
        folder.chmod(0o755)


# ---------------------------------------------------------------------------------------------
# Environment and ensure_available


def test_weights_dir_env_and_default(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert weights_dir() == tmp_path / "weights"
    monkeypatch.setenv("SEGFPN_WEIGHTS_DIR", str(tmp_path / "elsewhere"))
    assert weights_dir() == tmp_path / "elsewhere"


def test_env_weights_dir_is_used_by_ensure_available(server, tmp_path, monkeypatch):
    checkpoint = _serve(server)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SEGFPN_WEIGHTS_DIR", str(tmp_path / "env_weights"))
    path = ensure_available(checkpoint, progress=False)
    assert path == tmp_path / "env_weights" / D2_NAME and path.read_bytes() == PAYLOAD
    assert not (tmp_path / "weights").exists()


def test_base_url_env_and_argument(server, tmp_path, monkeypatch):
    server.routes[f"/env-mirror/{D2_NAME}"] = ("ok", PAYLOAD)
    server.routes[f"/arg-mirror/{D2_NAME}"] = ("ok", PAYLOAD)
    checkpoint = _checkpoint(f"http://127.0.0.1:{_closed_port()}/official/{D2_NAME}")

    monkeypatch.setenv("SEGFPN_BASE_URL", server.url("/env-mirror/"))
    download(checkpoint, dest_dir=tmp_path / "a", progress=False)
    assert server.hits == Counter({f"/env-mirror/{D2_NAME}": 1})

    download(checkpoint, dest_dir=tmp_path / "b", progress=False, base_url=server.url("/arg-mirror"))
    assert server.hits[f"/arg-mirror/{D2_NAME}"] == 1  # the argument wins over the env

    monkeypatch.delenv("SEGFPN_BASE_URL")
    with pytest.raises(DownloadError, match="connection refused"):  # back to the official URL
        download(checkpoint, dest_dir=tmp_path / "c", progress=False)


def test_offline_says_what_to_fetch_and_where(server, tmp_path, monkeypatch):
    checkpoint = _serve(server)
    with pytest.raises(OfflineError) as excinfo:
        ensure_available(checkpoint, dest_dir=tmp_path, offline=True)
    message = str(excinfo.value)
    assert f"Fetch {checkpoint.url} and put it in {tmp_path} as {D2_NAME}" in message
    assert "offline=True" in message

    monkeypatch.setenv("SEGFPN_OFFLINE", "1")
    with pytest.raises(OfflineError, match="SEGFPN_OFFLINE=1"):
        ensure_available(checkpoint, dest_dir=tmp_path)
    assert server.hits.total() == 0
    assert _listing(tmp_path) == []

    (tmp_path / D2_NAME).write_bytes(PAYLOAD)  # placed by hand: offline is fine
    assert ensure_available(checkpoint, dest_dir=tmp_path) == tmp_path / D2_NAME


def test_offline_with_a_catalogue_name_points_at_the_official_url(tmp_path, monkeypatch):
    monkeypatch.setenv("SEGFPN_OFFLINE", "1")
    monkeypatch.setenv("SEGFPN_WEIGHTS_DIR", str(tmp_path))
    with pytest.raises(OfflineError) as excinfo:
        ensure_available("panoptic_fpn_R_101_3x")
    official = catalogue.find("panoptic_fpn_R_101_3x").url
    assert f"Fetch {official} and put it in {tmp_path} as model_final_cafdb1.pkl" in str(excinfo.value)


def test_local_status(tmp_path):
    (tmp_path / "model_final_c10459.pkl").write_bytes(b"x" * 1234)
    status = {s.checkpoint.name: s for s in local_status(dest_dir=tmp_path)}
    assert set(status) == set(catalogue.CHECKPOINTS)
    assert status["panoptic_fpn_R_50_3x"].present and status["panoptic_fpn_R_50_3x"].size_bytes == 1234
    assert status["panoptic_fpn_R_50_3x"].path == tmp_path / "model_final_c10459.pkl"
    assert not status["panoptic_fpn_R_101_3x"].present
    assert status["panoptic_fpn_R_101_3x"].size_bytes is None


def test_verify_file_missing(tmp_path):
    with pytest.raises(DownloadError, match="does not exist"):
        verify_file(tmp_path / D2_NAME, _checkpoint("http://127.0.0.1/x"))


# ---------------------------------------------------------------------------------------------
# CLI


def test_cli_download_and_verify(server, tmp_path, monkeypatch, capsys):
    checkpoint = _serve(server, folder="/mirror")
    monkeypatch.setattr(catalogue, "CHECKPOINTS", {checkpoint.name: checkpoint})
    args = ["download", checkpoint.name, "--dir", str(tmp_path), "--base-url", server.url("/mirror"),
            "--no-progress"]
    assert weights_cli.main(args) == 0
    assert str(tmp_path / D2_NAME) in capsys.readouterr().out
    assert weights_cli.main(["verify", "--dir", str(tmp_path)]) == 0
    assert "tiny_panoptic: ok" in capsys.readouterr().out

    (tmp_path / D2_NAME).write_bytes(b"tampered")
    assert weights_cli.main(["verify", "--dir", str(tmp_path)]) == 1
    assert "FAILED" in capsys.readouterr().err

    server.routes[f"/mirror/{D2_NAME}"] = ("404", b"")
    assert weights_cli.main([*args, "--force"]) == 2
    err = capsys.readouterr().err
    assert "HTTP 404" in err and server.url(f"/mirror/{D2_NAME}") in err
    assert weights_cli.main(["download", "nope", "--dir", str(tmp_path)]) == 2
    assert "unknown checkpoint 'nope'" in capsys.readouterr().err


def test_unknown_host_is_not_retried(tmp_path, monkeypatch):
    def no_dns(address, *args, **kwargs):
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    waits = []
    monkeypatch.setattr(socket, "create_connection", no_dns)
    monkeypatch.setattr(dl._Stop, "sleep", lambda stop, seconds: waits.append(seconds))
    checkpoint = _checkpoint(f"http://mirror.invalid/zoo/{D2_NAME}")
    with pytest.raises(DownloadError, match=r"could not reach http://mirror\.invalid/.*host not found"):
        download(checkpoint, dest_dir=tmp_path, progress=False, retries=2)
    assert waits == []
    assert _listing(tmp_path) == []


# ---------------------------------------------------------------------------------------------
# Limits: the size of each checkpoint, a deadline for the whole download, cancelling it


def _limited(server, mode, *, limit=len(PAYLOAD) + 1000, folder="/zoo") -> KnownCheckpoint:
    return dataclasses.replace(_serve(server, mode, folder=folder), max_size_bytes=limit)


def test_no_content_length_is_fine_within_the_limit(server, tmp_path):
    checkpoint = _limited(server, "nolength", limit=len(PAYLOAD))
    assert download(checkpoint, dest_dir=tmp_path, progress=False).read_bytes() == PAYLOAD


def test_endless_stream_without_content_length_stops_at_the_limit(server, tmp_path):
    checkpoint = _limited(server, "endless")
    started = time.monotonic()
    with pytest.raises(ChecksumError) as excinfo:
        download(checkpoint, dest_dir=tmp_path, progress=False)
    assert time.monotonic() - started < 10
    message = str(excinfo.value)
    assert f"more than the {len(PAYLOAD) + 1000} bytes" in message and checkpoint.url in message
    assert _listing(tmp_path) == []
    assert server.hits.total() == 1  # too much data is not retried


def test_content_length_above_the_limit_is_refused_before_reading(server, tmp_path):
    checkpoint = _limited(server, "oversize")
    with pytest.raises(ChecksumError, match=f"announces {3 * len(PAYLOAD)} bytes, more than the "
                                            f"{len(PAYLOAD) + 1000}"):
        download(checkpoint, dest_dir=tmp_path, progress=False)
    assert _listing(tmp_path) == []
    assert server.hits.total() == 1


def test_catalogue_limit_is_used_when_nothing_is_set(server, tmp_path, monkeypatch):
    """An entry without max_size_bytes gets the catalogue's limit for unknown sizes."""
    monkeypatch.setattr(catalogue, "UNKNOWN_SIZE_LIMIT_BYTES", len(PAYLOAD) // 2)
    checkpoint = _serve(server, "nolength")
    with pytest.raises(ChecksumError, match=f"more than the {len(PAYLOAD) // 2} bytes"):
        download(checkpoint, dest_dir=tmp_path, progress=False)
    assert _listing(tmp_path) == []


def test_slow_server_is_stopped_by_the_total_deadline(server, tmp_path):
    """One byte every 0.2 s: every read is well within the 5 s timeout, the whole is not."""
    checkpoint = _serve(server, "trickle")
    started = time.monotonic()
    with pytest.raises(DownloadError) as excinfo:
        download(checkpoint, dest_dir=tmp_path, progress=False, timeout=5, retries=2, deadline_s=1.0)
    elapsed = time.monotonic() - started
    assert 0.9 < elapsed < 3, elapsed
    assert "did not finish within 1 s" in str(excinfo.value) and checkpoint.url in str(excinfo.value)
    assert excinfo.value.reason.startswith("deadline")
    assert _listing(tmp_path) == []
    assert server.hits.total() == 1  # a deadline is not retried


def test_deadline_bounds_the_waits_between_retries(server, tmp_path, monkeypatch):
    monkeypatch.setattr(dl, "_RETRY_BACKOFF_S", 30.0)
    checkpoint = _serve(server, "drop")
    started = time.monotonic()
    with pytest.raises(DownloadError, match="did not finish within 1 s.*connection"):
        download(checkpoint, dest_dir=tmp_path, progress=False, retries=3, deadline_s=1.0)
    assert time.monotonic() - started < 3
    assert _listing(tmp_path) == []


def test_deadline_stops_a_server_that_never_sends_its_headers(server, tmp_path):
    checkpoint = _serve(server, "hang")
    started = time.monotonic()
    with pytest.raises(DownloadError, match="did not finish within 0.5 s"):
        download(checkpoint, dest_dir=tmp_path, progress=False, timeout=30, deadline_s=0.5)
    assert time.monotonic() - started < 2.5


def _wait_for(condition, seconds=10.0):
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if condition():
            return True
        time.sleep(0.02)
    return False


def _parts(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.part-*")) if folder.exists() else []


def test_cancel_from_another_thread_stops_a_blocked_read(server, tmp_path):
    server.trickle_s = 3.0  # a read blocks for 3 s: cancelling must not wait for it
    checkpoint = _serve(server, "trickle")
    job = dl.download_in_background(checkpoint, dest_dir=tmp_path, progress=False, timeout=30,
                                    deadline_s=60)
    assert _wait_for(lambda: _parts(tmp_path))
    assert [p for p in dl.partial_files() if p.parent == tmp_path] == _parts(tmp_path)
    assert not job.done()
    started = time.monotonic()
    job.cancel()
    assert job.wait(2.0), "the download did not stop within 2 s of cancel()"
    assert time.monotonic() - started < 2.0
    with pytest.raises(dl.DownloadCancelled, match="cancelled"):
        job.result()
    assert _listing(tmp_path) == []
    assert not [p for p in dl.partial_files() if p.parent == tmp_path]


def test_background_download_result(server, tmp_path):
    job = dl.download_in_background(_serve(server), dest_dir=tmp_path, progress=False, deadline_s=30)
    assert job.result(timeout=10) == tmp_path / D2_NAME
    assert job.done() and job.error is None
    assert (tmp_path / D2_NAME).read_bytes() == PAYLOAD


def test_cancelled_before_it_starts(server, tmp_path):
    cancel = dl.Cancellation()
    cancel.cancel()
    with pytest.raises(dl.DownloadCancelled):
        download(_serve(server), dest_dir=tmp_path, progress=False, cancel=cancel)
    assert server.hits.total() == 0 and _listing(tmp_path) == []


def test_remove_partial_files_deletes_what_is_being_written(server, tmp_path):
    checkpoint = _serve(server, "trickle")
    job = dl.download_in_background(checkpoint, dest_dir=tmp_path, progress=False, deadline_s=60)
    assert _wait_for(lambda: _parts(tmp_path))
    removed = dl.remove_partial_files()
    assert set(_parts(tmp_path)) == set() and {p.parent for p in removed} == {tmp_path}
    job.cancel()
    assert job.wait(5)
    assert _listing(tmp_path) == []


SIGNAL_SCRIPT = """
import sys, threading
from segfpn.checkpoints import download as dl
from segfpn.checkpoints.catalogue import KnownCheckpoint

url, dest, where = sys.argv[1:]
dl.install_cleanup_handlers()
checkpoint = KnownCheckpoint(name="tiny", arch="panoptic_fpn_R_50", format="detectron2", url=url,
                             file_name=url.rsplit("/", 1)[1], categories="coco_panoptic",
                             source_url="http://127.0.0.1/", md5_prefix=url.rsplit("_", 1)[1][:6])
run = lambda: dl.download(checkpoint, dest_dir=dest, progress=False, timeout=60, deadline_s=120)
if where == "main":
    run()
else:  # as the app does it: the download in a thread, the main thread waiting on something else
    threading.Thread(target=run, daemon=True).start()
    threading.Event().wait(120)
"""


@pytest.mark.parametrize("signum, where", [(signal.SIGTERM, "main"), (signal.SIGTERM, "thread"),
                                           (signal.SIGINT, "thread")],
                         ids=["sigterm_main_thread", "sigterm_background_thread", "sigint_background_thread"])
def test_signal_removes_the_partial_file(server, tmp_path, signum, where):
    checkpoint = _serve(server, "trickle")
    script = tmp_path / "fetch.py"
    script.write_text(SIGNAL_SCRIPT)
    dest = tmp_path / "weights"
    process = subprocess.Popen([sys.executable, str(script), checkpoint.url, str(dest), where],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert _wait_for(lambda: _parts(dest) or process.poll() is not None, 60) and _parts(dest), \
            process.stderr.read().decode()[-2000:] if process.poll() is not None else "no partial file after 60 s"
        process.send_signal(signum)
        process.wait(10)
    finally:
        process.kill()
        process.wait()
    assert process.returncode == -signum, process.stderr.read().decode()[-2000:]
    assert _listing(dest) == []


def test_cli_download_deadline_and_limit_are_one_error_line_each(server, tmp_path, monkeypatch, capsys):
    slow = _serve(server, "trickle", folder="/slow")
    big = dataclasses.replace(_serve(server, "oversize", folder="/big"), name="tiny_big",
                              max_size_bytes=len(PAYLOAD))
    monkeypatch.setattr(catalogue, "CHECKPOINTS", {slow.name: slow, big.name: big})
    assert weights_cli.main(["download", slow.name, "--dir", str(tmp_path), "--deadline", "0.5",
                             "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: download of ") and "within 0.5 s" in err
    assert weights_cli.main(["download", big.name, "--dir", str(tmp_path), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"more than the {len(PAYLOAD)} bytes tiny_big can have" in err
    assert _listing(tmp_path) == []


def test_install_cleanup_handlers_chains_and_is_idempotent(monkeypatch):
    """The previous handler still runs after the partial files are removed; a second call does
    not chain the handler to itself; outside the main thread only the atexit hook is set."""
    calls = []
    monkeypatch.setattr(dl, "_PREVIOUS_HANDLERS", {})
    original = signal.getsignal(signal.SIGUSR1)
    try:
        signal.signal(signal.SIGUSR1, lambda signum, frame: calls.append(signum))
        assert dl.install_cleanup_handlers((signal.SIGUSR1,)) is True
        assert dl.install_cleanup_handlers((signal.SIGUSR1,)) is True
        os.kill(os.getpid(), signal.SIGUSR1)
        assert _wait_for(lambda: calls, 2) and calls == [signal.SIGUSR1]
        outcome = []
        thread = threading.Thread(target=lambda: outcome.append(dl.install_cleanup_handlers((signal.SIGUSR2,))))
        thread.start()
        thread.join()
        assert outcome == [False] and signal.SIGUSR2 not in dl._PREVIOUS_HANDLERS
    finally:
        signal.signal(signal.SIGUSR1, original)
