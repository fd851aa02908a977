"""The app served from a process of its own for the robustness tests, the bad inputs, and
`segfpn predict` run on each of them."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

import input_cases
from app_process import QUEUE_SIZE, ROOT, AppProcess, free_port

from testdata import LocalHTTPServer

HERE = Path(__file__).resolve().parent

MINI = ROOT / "tests" / "data" / "d2_mini" / "panoptic_fpn_mini.pkl"


@pytest.fixture(scope="session")
def bad_inputs(tmp_path_factory) -> dict[str, Path]:
    """Every case of :data:`input_cases.CASES` written to a file: name -> path."""
    return input_cases.write_all(tmp_path_factory.mktemp("bad_inputs"))


@pytest.fixture(scope="session")
def app_server(tmp_path_factory):
    """The app (mini checkpoint, 128 px network input, queue of :data:`QUEUE_SIZE`) in its own
    process on 127.0.0.1, with its own temp folders (see :class:`AppProcess`)."""
    server = AppProcess.serve(tmp_path_factory.mktemp("app_server"), "--small-input",
                              "--queue-size", str(QUEUE_SIZE))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def client(app_server):
    """A gradio_client session (its own gr.State) for the tests of one module."""
    from gradio_client import Client

    session = Client(app_server.url, verbose=False)
    yield session
    session.close()


@pytest.fixture(scope="session")
def cli_job(bad_inputs, tmp_path_factory):
    """`segfpn predict FILE --weights MINI --out OUT --device cpu` on every bad input, started in
    the background (each run a process of its own, see cli_runner.py); :func:`cli_runs` waits."""
    root = tmp_path_factory.mktemp("cli")
    argvs = [["predict", str(bad_inputs[case.name]), "--weights", str(MINI),
              "--out", str(root / case.name), "--device", "cpu"] for case in input_cases.CASES]
    (root / "argv.json").write_text(json.dumps(argvs))
    with open(root / "argv.json") as stdin, open(root / "runs.jsonl", "w") as stdout, \
            open(root / "runner.log", "w") as stderr:
        job = subprocess.Popen([sys.executable, str(HERE / "cli_runner.py"), str(root / "logs")],
                               stdin=stdin, stdout=stdout, stderr=stderr, cwd=ROOT)
    # One file also through the command itself, to compare with the runner's run of it.
    literal_argv = [*argvs[[c.name for c in input_cases.CASES].index(input_cases.LITERAL_CASE)]]
    literal_argv[literal_argv.index("--out") + 1] = str(root / "literal")
    job.literal = subprocess.Popen([sys.executable, "-m", "segfpn.cli", *literal_argv], cwd=ROOT,
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    job.root = root
    yield job
    for process in (job, job.literal):
        if process.poll() is None:
            process.kill()
            process.wait()


@pytest.fixture(scope="session")
def cli_runs(cli_job) -> dict[str, dict]:
    """name -> {"returncode", "stdout", "stderr", "out": the --out folder} of each bad input."""
    root = cli_job.root
    assert cli_job.wait(timeout=600) == 0, (root / "runner.log").read_text()
    runs = [json.loads(line) for line in (root / "runs.jsonl").read_text().splitlines()]
    assert len(runs) == len(input_cases.CASES), (root / "runner.log").read_text()
    return {case.name: {**run, "out": root / case.name} for case, run in zip(input_cases.CASES, runs)}


@pytest.fixture(scope="session")
def cli_literal_run(cli_job) -> dict:
    """:data:`input_cases.LITERAL_CASE` run as `python -m segfpn.cli predict ...` itself:
    {"returncode", "stdout", "stderr", "out"}."""
    stdout, stderr = cli_job.literal.communicate(timeout=600)
    return {"returncode": cli_job.literal.returncode, "stdout": stdout, "stderr": stderr,
            "out": cli_job.root / "literal"}


class CutDownloads(LocalHTTPServer):
    """An HTTP server on 127.0.0.1 that announces ``total`` bytes, sends ``sent`` and hangs up:
    a download interrupted halfway. ``hits``: the paths asked for."""

    def __init__(self, total: int = 4 << 20, sent: int = 1 << 20):
        import http.server

        self.hits: list[str] = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                outer.hits.append(self.path)
                self.send_response(200)
                self.send_header("Content-Length", str(total))
                self.end_headers()
                self.wfile.write(bytes(sent))
                self.wfile.flush()
                self.close_connection = True

            def log_message(self, *args):
                pass

        super().__init__(Handler)


class TrickleDownloads(LocalHTTPServer):
    """An HTTP server on 127.0.0.1 that answers every checkpoint with its true size (the
    catalogue's) and then one zero byte every ``every_s`` seconds, until closed: a mirror too
    slow to ever finish, never slow enough for a read to time out."""

    def __init__(self, every_s: float = 2.0):
        import http.server
        import threading

        from segfpn.checkpoints import catalogue

        self.hits: list[str] = []
        self.closed = threading.Event()
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                outer.hits.append(self.path)
                known = catalogue.find_by_file_name(self.path.rsplit("/", 1)[-1])
                self.send_response(200)
                self.send_header("Content-Length", str(known.size_bytes if known else 1 << 30))
                self.end_headers()
                try:
                    while not outer.closed.wait(every_s):
                        self.wfile.write(b"\0")
                        self.wfile.flush()
                except OSError:  # the client went away
                    pass
                self.close_connection = True

            def log_message(self, *args):
                pass

        super().__init__(Handler)

    def close(self) -> None:
        self.closed.set()
        super().close()


@pytest.fixture
def trickle_downloads():
    server = TrickleDownloads()
    yield server
    server.close()


@pytest.fixture(scope="session")
def cut_downloads():
    server = CutDownloads()
    yield server
    server.close()


def _can_mount_read_only(folder: Path) -> bool:
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(["unshare", "-m", "sh", "-c",
                            'mount --bind "$1" "$1" && mount -o remount,ro,bind "$1" "$1" && '
                            '! touch "$1/.probe" 2>/dev/null', "sh", str(folder)],
                           capture_output=True)
    return probe.returncode == 0


@pytest.fixture(scope="session")
def readonly_app(cut_downloads):
    """`python app.py` as a person starts it (no --host), its weights folder read-only and
    holding the mini checkpoint only: ``--weights panoptic_fpn_R_101_3x,<folder>/<mini>``, the
    first one to be downloaded (from :class:`CutDownloads`) into that folder.

    Read-only: a read-only bind mount in a mount namespace of the app's own (``unshare -m``, as
    root); else the folder made read-only (chmod), the app run as an unprivileged user."""
    from segfpn.checkpoints import catalogue

    # Not under pytest's tmp folder (mode 0700): the unprivileged user must reach it.
    root = Path(tempfile.mkdtemp(prefix="segfpn-readonly-app-"))
    root.chmod(0o755)
    weights = root / "weights"
    weights.mkdir()
    shutil.copy(MINI, weights / MINI.name)
    port = free_port()
    app_command = [sys.executable, str(ROOT / "app.py"), "--port", str(port), "--device", "cpu",
                   "--weights", f"{catalogue.default_checkpoint().name},{weights / MINI.name}"]
    env = {"SEGFPN_WEIGHTS_DIR": str(weights), "SEGFPN_BASE_URL": cut_downloads.url,
           "SEGFPN_OFFLINE": "0"}
    if _can_mount_read_only(weights):
        how = "read-only mount"
        command = ["unshare", "-m", "sh", "-c",
                   'mount --bind "$1" "$1" && mount -o remount,ro,bind "$1" "$1" && shift && '
                   'exec "$@"', "sh", str(weights), *app_command]
    else:
        how = "chmod a-w"
        (weights / ".probe").unlink(missing_ok=True)
        weights.chmod(0o555)
        command = app_command
        if os.geteuid() == 0:  # root writes anywhere: serve as nobody
            command = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", *app_command]
            for folder in ("cwd", "tmp", "gradio"):
                (root / folder).mkdir(mode=0o777)
                (root / folder).chmod(0o777)
            env["HOME"] = str(root / "tmp")
    server = AppProcess(command, port=port, root=root, env=env).wait_ready()
    server.weights, server.read_only_by = weights, how
    yield server
    server.stop()
    weights.chmod(0o755)
    shutil.rmtree(root, ignore_errors=True)
