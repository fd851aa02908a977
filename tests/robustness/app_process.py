"""The app in a process of its own, on 127.0.0.1: started, waited for, measured, stopped.

Memory is the server process's own, read from ``/proc/<pid>/status``: VmRSS (resident now) and
VmHWM (the peak since start, or since :meth:`AppProcess.reset_peak`).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SERVE_APP = Path(__file__).resolve().parent / "serve_app.py"
#: Starting the server imports torch and gradio: seconds on two busy cores.
START_TIMEOUT_S = 120.0
#: Requests that may wait in the queue of the tests' shared server: 16 clients at once overflow it.
QUEUE_SIZE = 6


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def memory_mb(pid: int) -> dict[str, float]:
    """``{"rss": MB resident now, "peak": MB resident at most}`` of process ``pid``."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = int(value.split()[0]) / 1024.0  # kB
    return {"rss": fields["VmRSS"], "peak": fields["VmHWM"]}


def listening_addresses(pid: int, port: int) -> set[str]:
    """The IPv4/IPv6 addresses on which process ``pid`` listens on ``port`` ("127.0.0.1", ...)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    addresses = set()
    for table, width in (("tcp", 8), ("tcp6", 32)):
        path = Path(f"/proc/{pid}/net/{table}")
        if not path.exists():
            continue
        for line in path.read_text().splitlines()[1:]:
            parts = line.split()
            local, state, inode = parts[1], parts[3], parts[9]
            address, _, port_hex = local.partition(":")
            if state != "0A" or inode not in inodes or int(port_hex, 16) != port:  # 0A: LISTEN
                continue
            raw = bytes.fromhex(address)
            if width == 8:
                addresses.add(socket.inet_ntop(socket.AF_INET, raw[::-1]))
            else:
                words = b"".join(raw[i:i + 4][::-1] for i in range(0, 16, 4))
                addresses.add(socket.inet_ntop(socket.AF_INET6, words))
    return addresses


class AppProcess:
    """``command`` (a list; its port given as ``port``) run with its temp folders under ``root``:
    ``root/cwd`` (working directory), ``root/tmp`` (TMPDIR: the app's download folders) and
    ``root/gradio`` (GRADIO_TEMP_DIR: uploads and Gradio's cache). Output goes to ``root/log``."""

    def __init__(self, command: list[str], *, port: int, root: Path, env: dict | None = None):
        self.port = port
        self.url = f"http://127.0.0.1:{port}/"
        self.root = root
        self.cwd, self.tmp, self.gradio_tmp = root / "cwd", root / "tmp", root / "gradio"
        for folder in (self.cwd, self.tmp, self.gradio_tmp):
            folder.mkdir(parents=True, exist_ok=True)
        self.log_path = root / "log"
        environment = {k: v for k, v in os.environ.items()
                       if k not in ("SEGFPN_HOST", "GRADIO_SERVER_NAME", "GRADIO_SERVER_PORT")}
        environment.update(TMPDIR=str(self.tmp), GRADIO_TEMP_DIR=str(self.gradio_tmp),
                           GRADIO_ANALYTICS_ENABLED="False", PYTHONUNBUFFERED="1",
                           PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
                           OMP_NUM_THREADS="2", **(env or {}))
        self._log = open(self.log_path, "wb")
        self.process = subprocess.Popen(command, cwd=self.cwd, env=environment, stdout=self._log,
                                        stderr=subprocess.STDOUT, start_new_session=True)

    @classmethod
    def serve(cls, root: Path, *args: str, env: dict | None = None) -> "AppProcess":
        """``tests/robustness/serve_app.py`` with ``args`` on a free port, started and ready."""
        port = free_port()
        command = [sys.executable, str(SERVE_APP), "--port", str(port), *args]
        return cls(command, port=port, root=root, env=env).wait_ready()

    @classmethod
    def app_py(cls, root: Path, *args: str, env: dict | None = None) -> "AppProcess":
        """`python app.py --port <free> --device cpu ARGS`, as a person starts it; not waited
        for (:meth:`wait_ready`)."""
        port = free_port()
        command = [sys.executable, str(ROOT / "app.py"), "--port", str(port), "--device", "cpu", *args]
        return cls(command, port=port, root=root, env=env)

    @property
    def pid(self) -> int:
        return self.process.pid

    def log(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(errors="replace")

    def alive(self) -> bool:
        return self.process.poll() is None

    def wait_ready(self, timeout: float = START_TIMEOUT_S) -> "AppProcess":
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.alive():
                raise RuntimeError(f"the app exited with {self.process.returncode}:\n{self.log()}")
            try:
                with urllib.request.urlopen(self.url + "config", timeout=5) as response:
                    if response.status == 200:
                        return self
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.3)
        self.stop()
        raise RuntimeError(f"the app did not answer within {timeout:.0f} s:\n{self.log()}")

    def memory(self) -> dict[str, float]:
        """The server's memory in MB: ``rss`` now and ``peak`` (see :meth:`reset_peak`)."""
        return memory_mb(self.serving_pid())

    def reset_peak(self) -> None:
        """Start the peak (VmHWM) again from the current resident size (Linux ``clear_refs``)."""
        Path(f"/proc/{self.serving_pid()}/clear_refs").write_text("5")

    def serving_pid(self) -> int:
        """The pid of the Python that serves (the command may be a wrapper that execs it)."""
        return self.pid

    def stop(self) -> None:
        if self.alive():
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=15)
        self._log.close()


def segment(client, path, score: float = 1.0):
    """/segment (gradio_client) on the upload ``path``. Score 1.0 draws no detection: the
    overlay is then the image exactly as the app read it."""
    from gradio_client import handle_file

    return client.predict(handle_file(path), score, 0.5, True, True, api_name="/segment")


class ConcurrencyCountingPredictor:
    """Wraps a predictor: each full run (``predict`` or ``inspect``) lasts at least ``hold_s``
    seconds, and the most runs ever going at once is recorded (``most_at_once``), with the
    number of runs (``calls``)."""

    def __init__(self, predictor, *, hold_s: float = 0.3):
        import threading

        self._predictor = predictor
        self._lock = threading.Lock()
        self.hold_s = hold_s
        self.calls = self.running = self.most_at_once = 0

    def _held(self, run, image, kwargs):
        with self._lock:
            self.calls += 1
            self.running += 1
            self.most_at_once = max(self.most_at_once, self.running)
        try:
            time.sleep(self.hold_s)
            return run(image, **kwargs)
        finally:
            with self._lock:
                self.running -= 1

    def predict(self, image, **kwargs):
        return self._held(self._predictor.predict, image, kwargs)

    def inspect(self, image, **kwargs):
        return self._held(self._predictor.inspect, image, kwargs)

    def __getattr__(self, name):
        return getattr(self._predictor, name)


def serve_in_process(source, **build_options):
    """The app around ``source`` (a ModelSource) served from this process (a thread) on
    127.0.0.1 and a free port: ``(url, demo)``; close it with ``demo.close()``."""
    import app

    demo = app.build_demo(source, **build_options)
    _, url, _ = app.launch(demo, host="127.0.0.1", port=free_port(), prevent_thread_lock=True,
                           quiet=True)
    return url, demo


def page_status(url: str, *, settled: bool = True, timeout: float = 120.0) -> str:
    """The model status at the top of the page (Markdown), as the page shows it when it loads
    (the app's ``/model_status`` event). ``settled``: wait until no checkpoint is being
    downloaded or loaded (the page's refresh timer is off)."""
    from gradio_client import Client

    client = Client(url, verbose=False)
    deadline = time.monotonic() + timeout
    try:
        while True:
            status, timer = client.predict(api_name="/model_status")
            if not (settled and timer.get("active")) or time.monotonic() > deadline:
                return status["value"]
            time.sleep(0.5)
    finally:
        client.close()
