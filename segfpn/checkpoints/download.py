"""Fetch known checkpoints into ``weights/`` and check them against their published hash.

Where files go: ``SEGFPN_WEIGHTS_DIR`` if set, else ``weights/`` under the current working
directory (:func:`weights_dir`). Every function also takes ``dest_dir=`` which wins over both.

Where files come from: the checkpoint's official URL, or a mirror. A mirror is a base URL that the
file name is appended to: with ``SEGFPN_BASE_URL=https://mirror.example/segfpn`` the detectron2
R101 panoptic model is fetched from ``https://mirror.example/segfpn/model_final_cafdb1.pkl``.
The ``base_url=`` argument wins over the environment variable. ``file://`` mirrors work too.

Offline: ``SEGFPN_OFFLINE=1`` (or ``offline=True``) makes :func:`ensure_available` raise instead of
downloading, saying which URL to fetch and where to save it.

How a download runs: the body is streamed in 1 MiB chunks into ``<file name>.part-<random>`` in the
destination folder while its digest is computed; the byte count is checked against
Content-Length (and the published size when there is one), the digest against the hash prefix in
the file name, and only then is the file renamed into place with :func:`os.replace`. On any
failure the partial file is deleted and a :class:`DownloadError` says what went wrong and what to
do. A file that is already there is never fetched again (:func:`verify_file` checks one by hand).

Retries: transient failures (timeouts, connections reset or dropped mid-body, HTTP 5xx) are
retried ``retries`` times (default 2) after 1 s, then 2 s. A refused connection, an unknown host,
HTTP 4xx, a hash mismatch and local disk errors are not retried: repeating them cannot help.

Limits: a download stops at the checkpoint's size limit
(:attr:`~segfpn.checkpoints.catalogue.KnownCheckpoint.size_limit_bytes`), whether or not the server
sends Content-Length (one above the limit is refused before the body is read), and at a deadline
for the whole download, retries and their waits included (``deadline_s``, default one hour;
``timeout`` is per connection and per read). Another thread can stop it at once with a
:class:`Cancellation` (:func:`download_in_background` gives one).

Signals: the partial files being written are listed (:func:`partial_files`) so that
:func:`install_cleanup_handlers` (SIGTERM, SIGINT and interpreter exit) can remove them when the
process is stopped mid-download, from any thread.
"""

from __future__ import annotations

import atexit
import dataclasses
import hashlib
import http.client
import logging
import os
import secrets
import shutil
import signal
import socket
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import BinaryIO, Callable

from tqdm.auto import tqdm

from segfpn.atomic_files import create_exclusive
from segfpn.net import ReportingHTTPHandler, ReportingHTTPSHandler, SocketWatch
from segfpn.checkpoints import catalogue
from segfpn.checkpoints.catalogue import KnownCheckpoint, find
from segfpn.checkpoints.errors import ChecksumError, DownloadCancelled, DownloadError, OfflineError

logger = logging.getLogger(__name__)

WEIGHTS_DIR_ENV = "SEGFPN_WEIGHTS_DIR"
BASE_URL_ENV = "SEGFPN_BASE_URL"
OFFLINE_ENV = "SEGFPN_OFFLINE"

_CHUNK_BYTES = 1 << 20
_MAX_RETRIES = 5
_RETRY_BACKOFF_S = 1.0  # waits 1 s, 2 s, 4 s, ... between attempts
_USER_AGENT = "segfpn-weights/0.1 (+urllib)"
#: Seconds a whole download may take by default: 250 MB at 70 KB/s.
DEFAULT_DEADLINE_S = 3600.0


class _Transient(Exception):
    """Internal: a failure worth retrying; wraps the :class:`DownloadError` to raise at the end."""

    def __init__(self, error: DownloadError) -> None:
        super().__init__(str(error))
        self.error = error


# ---------------------------------------------------------------------------------------------
# Locations


def weights_dir() -> Path:
    """The folder checkpoints are read from and downloaded into.

    ``$SEGFPN_WEIGHTS_DIR`` if set (``~`` expanded), else ``Path.cwd() / "weights"``. The folder is
    not created here; :func:`download` creates it when it writes.
    """
    configured = os.environ.get(WEIGHTS_DIR_ENV, "").strip()
    if configured:
        return Path(configured).expanduser()
    return Path.cwd() / "weights"


def offline_from_env() -> bool:
    """True when ``$SEGFPN_OFFLINE`` is set to 1/true/yes/on (any case)."""
    return os.environ.get(OFFLINE_ENV, "").strip().lower() in {"1", "true", "yes", "on"}


def local_path(checkpoint: KnownCheckpoint, *, dest_dir: str | os.PathLike | None = None) -> Path:
    """Where ``checkpoint`` lives (or would live) on this machine."""
    return Path(dest_dir if dest_dir is not None else weights_dir()) / checkpoint.file_name


def resolve_url(checkpoint: KnownCheckpoint, *, base_url: str | None = None) -> str:
    """The URL to fetch ``checkpoint`` from.

    ``base_url`` (or, when it is ``None``, ``$SEGFPN_BASE_URL``) replaces everything before the
    file name; with neither, the official URL is used.
    """
    if base_url is None:
        base_url = os.environ.get(BASE_URL_ENV, "").strip() or None
    if not base_url:
        return checkpoint.url
    return base_url.rstrip("/") + "/" + checkpoint.file_name


# ---------------------------------------------------------------------------------------------
# Verification


def _format_size(num_bytes: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if num_bytes < 1024 or unit == "GiB":
            return f"{num_bytes:.0f} {unit}" if unit == "B" else f"{num_bytes:.1f} {unit}"
        num_bytes /= 1024
    raise AssertionError("unreachable")


def _check_digest(digest: str, checkpoint: KnownCheckpoint, *, what: str, url: str | None,
                  advice: str) -> None:
    expected = checkpoint.hash_prefix
    if not digest.startswith(expected):
        got = digest[: len(expected)]
        reason = f"{checkpoint.hash_algorithm} of {what} starts with {got}, expected {expected}"
        source = f" (from {url})" if url else ""
        raise ChecksumError(f"{reason} — the file is corrupted or not the official one{source}. "
                            f"{advice}", url=url, reason=reason)


def verify_file(path: str | os.PathLike, checkpoint: KnownCheckpoint) -> None:
    """Check that the file at ``path`` is ``checkpoint``: its size (when published) and hash prefix.

    Raises :class:`ChecksumError` on a mismatch and :class:`DownloadError` when the file is missing
    or unreadable. Reads the whole file (about a second for 180 MB).
    """
    path = Path(path)
    try:
        size = path.stat().st_size
        if checkpoint.size_bytes is not None and size != checkpoint.size_bytes:
            reason = f"{path} has {size} bytes, expected {checkpoint.size_bytes}"
            raise ChecksumError(f"{reason} — the file is incomplete or not the official one. "
                                f"Delete it and download {checkpoint.url} again.", reason=reason)
        hasher = hashlib.new(checkpoint.hash_algorithm)
        with path.open("rb") as f:
            while chunk := f.read(_CHUNK_BYTES):
                hasher.update(chunk)
    except FileNotFoundError:
        raise DownloadError(f"{path} does not exist; download {checkpoint.url} and save it there "
                            f"(or run `segfpn weights download {checkpoint.name}`).",
                            reason=f"{path} does not exist") from None
    except OSError as e:
        raise DownloadError(f"could not read {path}: {e.strerror or e}", reason=str(e)) from e
    _check_digest(hasher.hexdigest(), checkpoint, what=str(path), url=None,
                  advice=f"Delete it and download {checkpoint.url} again.")


# ---------------------------------------------------------------------------------------------
# Download


def _hand_download_hint(checkpoint: KnownCheckpoint, dest: Path) -> str:
    return (f"Download {checkpoint.url} by hand and save it as {dest}, or set {BASE_URL_ENV} "
            f"to a mirror that serves {checkpoint.file_name}.")


def _prepare_dest_dir(dest_dir: Path) -> None:
    try:
        dest_dir.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise DownloadError(f"cannot save checkpoints in {dest_dir}: it exists and is not a "
                            f"folder. Pass another folder (--dir / dest_dir=) or set "
                            f"{WEIGHTS_DIR_ENV}.",
                            reason=f"{dest_dir} is not a folder") from None
    except OSError as e:
        raise DownloadError(f"cannot create {dest_dir}: {e.strerror or e}. Pass a writable folder "
                            f"(--dir / dest_dir=) or set {WEIGHTS_DIR_ENV}.", reason=str(e)) from e
    if not dest_dir.is_dir():
        raise DownloadError(f"cannot save checkpoints in {dest_dir}: it is not a folder. Pass "
                            f"another folder (--dir / dest_dir=) or set {WEIGHTS_DIR_ENV}.",
                            reason=f"{dest_dir} is not a folder")


# ---------------------------------------------------------------------------------------------
# Partial files, and removing them when the process is stopped

# The ``.part-*`` files being written, by any thread. A signal handler or an atexit hook can only
# reach module state, hence this one registry; set.add/discard/copy are atomic under the GIL, so
# a handler running between two bytecodes of the writing thread sees a consistent set.
_PARTIAL_FILES: set[Path] = set()
_PREVIOUS_HANDLERS: dict[int, object] = {}


def partial_files() -> list[Path]:
    """The partial ``.part-*`` files downloads are writing now (in any thread)."""
    return sorted(set(_PARTIAL_FILES))


def remove_partial_files() -> list[Path]:
    """Delete every partial file a download is writing; returns those deleted.

    The downloads writing them fail (their file is gone when they try to rename it); call this
    when the process is about to end, as the handlers of :func:`install_cleanup_handlers` do.
    """
    removed = []
    for path in set(_PARTIAL_FILES):
        try:
            path.unlink()
            removed.append(path)
        except FileNotFoundError:
            pass
        except OSError as e:  # nothing more can be done while exiting; say so
            logger.warning("could not remove the partial download %s: %s", path, e)
        _PARTIAL_FILES.discard(path)
    return removed


def _remove_then_reraise(signum: int, frame) -> None:
    remove_partial_files()
    previous = _PREVIOUS_HANDLERS.get(signum, signal.SIG_DFL)
    if callable(previous):  # e.g. Python's SIGINT handler, which raises KeyboardInterrupt
        previous(signum, frame)
    elif previous != signal.SIG_IGN:
        # The default action, so that the exit status says "killed by signum" (143 for SIGTERM).
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)


def install_cleanup_handlers(signals: tuple[int, ...] = (signal.SIGTERM, signal.SIGINT)) -> bool:
    """Remove partial downloads when the process is stopped: on ``signals`` and at exit.

    Call it once at start (the CLI's ``main``, the app's start-up). Each handler deletes the
    partial files (:func:`remove_partial_files`), then does what was there before: the previous
    Python handler (SIGINT: ``KeyboardInterrupt``), or the default action (SIGTERM: the process
    ends with status 143 / -15). An atexit hook covers a normal exit that leaves a download
    running in a daemon thread. Calling it again changes nothing.

    Python sets signal handlers from the main thread only: called from another thread, only the
    atexit hook is installed and it returns False (True otherwise).
    """
    atexit.unregister(remove_partial_files)
    atexit.register(remove_partial_files)
    if threading.current_thread() is not threading.main_thread():
        logger.debug("install_cleanup_handlers() outside the main thread: no signal handlers")
        return False
    for signum in signals:
        current = signal.getsignal(signum)
        if current is not _remove_then_reraise:
            _PREVIOUS_HANDLERS[signum] = current
            signal.signal(signum, _remove_then_reraise)
    return True


def _open_temp(dest_dir: Path, file_name: str) -> tuple[BinaryIO, Path]:
    """A new ``<file_name>.part-<random>`` file in ``dest_dir``, opened for writing and listed in
    :func:`partial_files` (the caller removes it from there)."""
    temp_name = dest_dir / f"{file_name}.part-{secrets.token_hex(6)}"
    try:
        file = create_exclusive(temp_name)
    except OSError as e:
        raise DownloadError(f"cannot write to {dest_dir}: {e.strerror or e}. Make it writable, or "
                            f"pass another folder (--dir / dest_dir=) or set {WEIGHTS_DIR_ENV}.",
                            reason=str(e)) from e
    _PARTIAL_FILES.add(temp_name)
    return file, temp_name


# ---------------------------------------------------------------------------------------------
# Stopping a download: cancelled by another thread, or at its deadline


class Cancellation:
    """Stops downloads from another thread: pass it as ``download(..., cancel=c)``, then call
    ``c.cancel()``. The download raises :class:`DownloadCancelled` at once (its connection is shut,
    so a read blocked on a silent server returns) and leaves nothing behind. One cancellation can
    serve several downloads; it cannot be reset."""

    def __init__(self) -> None:
        self._cancelled = threading.Event()
        self._lock = threading.Lock()
        self._listeners: list[Callable[[str], None]] = []

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()

    def cancel(self) -> None:
        with self._lock:
            self._cancelled.set()
            listeners = list(self._listeners)
        for stop in listeners:
            stop("cancelled")

    def _subscribe(self, listener: Callable[[str], None]) -> None:
        with self._lock:
            self._listeners.append(listener)
            cancelled = self._cancelled.is_set()
        if cancelled:
            listener("cancelled")

    def _unsubscribe(self, listener: Callable[[str], None]) -> None:
        with self._lock:
            self._listeners.remove(listener)


class _Stop:
    """What ends one :func:`download` early: a :class:`Cancellation` or its deadline.

    Either shuts the open connection down (a read blocked in ``recv`` returns at once) and sets
    :attr:`reason`; the download checks it after every read and wait.
    """

    def __init__(self, *, deadline_s: float | None, cancel: Cancellation | None) -> None:
        self.deadline_s = deadline_s
        self.reason: str | None = None  # "cancelled" or "deadline"
        self._deadline_at = None if deadline_s is None else time.monotonic() + deadline_s
        self._stopped = threading.Event()
        self._lock = threading.Lock()
        self._sockets = SocketWatch()
        self._cancel = cancel
        self._timer = None
        if deadline_s is not None:
            self._timer = threading.Timer(deadline_s, self.stop, args=("deadline",))
            self._timer.daemon = True
            self._timer.start()
        if cancel is not None:
            cancel._subscribe(self.stop)

    def __enter__(self) -> "_Stop":
        return self

    def __exit__(self, *exc) -> None:
        if self._timer is not None:
            self._timer.cancel()
        if self._cancel is not None:
            self._cancel._unsubscribe(self.stop)

    def stop(self, reason: str) -> None:
        with self._lock:
            if self.reason is not None:
                return
            self.reason = reason
        self._stopped.set()
        self._sockets.shut_all()

    def attach(self, sock: socket.socket) -> None:
        """Called with each new connection's socket, so that :meth:`stop` can shut it."""
        self._sockets.add(sock)

    def io_timeout(self, timeout: float) -> float:
        """``timeout``, or less when the deadline is nearer (for connecting)."""
        if self._deadline_at is None:
            return timeout
        return max(min(timeout, self._deadline_at - time.monotonic()), 0.001)

    def remaining(self) -> float | None:
        return None if self._deadline_at is None else self._deadline_at - time.monotonic()

    def sleep(self, seconds: float) -> None:
        """Wait ``seconds``, or less if stopped meanwhile."""
        self._stopped.wait(seconds)

    def error(self, url: str, checkpoint: KnownCheckpoint, dest: Path, detail: str) -> DownloadError:
        """The error to raise once :attr:`reason` is set; ``detail``: how far it got."""
        if self.reason == "cancelled":
            return DownloadCancelled(f"download of {url} was cancelled ({detail}); nothing was kept.",
                                     url=url, reason="cancelled")
        reason = f"deadline of {self.deadline_s:g} s passed"
        return DownloadError(f"download of {url} did not finish within {self.deadline_s:g} s ({detail}); "
                             f"nothing was kept. A slow or stalled server? "
                             + _hand_download_hint(checkpoint, dest), url=url, reason=reason)


def _urlopen(request: urllib.request.Request, *, timeout: float, stop: _Stop):
    """``urllib.request.urlopen`` (proxies from the environment, file:// too) that hands each
    connection's socket to ``stop``."""
    opener = urllib.request.build_opener(ReportingHTTPHandler(stop.attach), ReportingHTTPSHandler(stop.attach))
    return opener.open(request, timeout=timeout)


# ---------------------------------------------------------------------------------------------
# Download


def _describe_network_error(error: BaseException) -> tuple[str, bool]:
    """(short reason, worth retrying) for an exception raised while connecting or reading."""
    reason = getattr(error, "reason", None) if isinstance(error, urllib.error.URLError) else error
    if isinstance(reason, ConnectionRefusedError):
        return "connection refused", False
    if isinstance(reason, socket.gaierror):
        return f"host not found ({reason.strerror or reason})", False
    if isinstance(reason, (TimeoutError, socket.timeout)):
        return "timed out", True
    if isinstance(reason, ConnectionResetError):
        return "connection reset by the server", True
    if isinstance(reason, (http.client.IncompleteRead, http.client.RemoteDisconnected,
                           ConnectionAbortedError, BrokenPipeError)):
        return "connection dropped by the server", True
    if isinstance(reason, OSError):
        return reason.strerror or str(reason), True
    return str(reason), True


def _fetch_to(dest: Path, url: str, checkpoint: KnownCheckpoint, *, progress: bool,
              timeout: float, stop: _Stop, on_progress: Callable[[int, int | None], None] | None = None) -> None:
    """One attempt: stream ``url`` into a temp file next to ``dest``, verify, rename onto ``dest``.

    Raises :class:`DownloadError` (final) or :class:`_Transient` (worth another attempt); in both
    cases no temp file is left behind.
    """
    limit = checkpoint.size_limit_bytes
    request = urllib.request.Request(url, headers={"User-Agent": _USER_AGENT})
    try:
        response = _urlopen(request, timeout=stop.io_timeout(timeout), stop=stop)
    except urllib.error.HTTPError as e:
        e.close()
        if stop.reason:
            raise stop.error(url, checkpoint, dest, "no answer yet") from e
        reason = f"HTTP {e.code} {e.reason}"
        error = DownloadError(f"could not download {url}: {reason}. "
                              + _hand_download_hint(checkpoint, dest), url=url, reason=reason)
        if e.code >= 500:
            raise _Transient(error) from e
        raise error from e
    except (urllib.error.URLError, OSError, http.client.HTTPException) as e:
        if stop.reason:
            raise stop.error(url, checkpoint, dest, "no answer yet") from e
        reason, transient = _describe_network_error(e)
        error = DownloadError(f"could not reach {url}: {reason}. "
                              + _hand_download_hint(checkpoint, dest), url=url, reason=reason)
        if transient:
            raise _Transient(error) from e
        raise error from e

    with response:
        header = response.headers.get("Content-Length")
        expected = int(header) if header is not None and header.isdigit() else None
        if (checkpoint.size_bytes is not None and expected is not None
                and expected != checkpoint.size_bytes):
            reason = f"the server announces {expected} bytes, expected {checkpoint.size_bytes}"
            raise ChecksumError(f"{url} is not the official file: {reason}. "
                                + _hand_download_hint(checkpoint, dest), url=url, reason=reason)
        if expected is not None and expected > limit:
            reason = (f"the server announces {expected} bytes, more than the {limit} bytes "
                      f"{checkpoint.name} can have")
            raise ChecksumError(f"{url} is not the official file: {reason}. "
                                + _hand_download_hint(checkpoint, dest), url=url, reason=reason)
        if expected is None:
            expected = checkpoint.size_bytes
        if expected is not None:
            free = shutil.disk_usage(dest.parent).free
            if free < expected:
                reason = f"{_format_size(expected)} needed, {_format_size(free)} free"
                raise DownloadError(f"not enough disk space in {dest.parent} for {url}: "
                                    f"{reason}. Free some space or set {WEIGHTS_DIR_ENV} to "
                                    f"another disk.",
                                    url=url, reason=reason)

        # read1: whatever one receive brings (at most a chunk), so that the stop reason and the
        # limit are checked between receives, not after a whole chunk of a trickling server.
        read = getattr(response, "read1", response.read)
        file, temp_path = _open_temp(dest.parent, checkpoint.file_name)
        hasher = hashlib.new(checkpoint.hash_algorithm)
        received = 0
        try:
            try:
                with file, tqdm(total=expected, unit="B", unit_scale=True, unit_divisor=1024,
                                desc=checkpoint.file_name, disable=not progress,
                                leave=False) as bar:
                    while True:
                        try:
                            chunk = read(_CHUNK_BYTES)
                        except (OSError, http.client.HTTPException) as e:
                            if stop.reason:
                                raise stop.error(url, checkpoint, dest, f"{_format_size(received)} "
                                                 f"received") from e
                            reason, _ = _describe_network_error(e)
                            raise _Transient(DownloadError(
                                f"download of {url} failed after {_format_size(received)}: "
                                f"{reason}. " + _hand_download_hint(checkpoint, dest),
                                url=url, reason=reason)) from e
                        if stop.reason:  # also when the shut connection read as the end
                            raise stop.error(url, checkpoint, dest, f"{_format_size(received)} received")
                        if not chunk:
                            break
                        received += len(chunk)
                        if received > limit:
                            reason = f"the server sent more than the {limit} bytes {checkpoint.name} can have"
                            raise ChecksumError(f"{url} is not the official file: {reason}; stopped "
                                                f"there. " + _hand_download_hint(checkpoint, dest),
                                                url=url, reason=reason)
                        file.write(chunk)
                        hasher.update(chunk)
                        bar.update(len(chunk))
                        if on_progress is not None:
                            on_progress(received, expected)
            except OSError as e:  # writing or closing the temp file (reads are handled above)
                raise DownloadError(
                    f"could not write {temp_path}: {e.strerror or e}. Free some space or make "
                    f"{dest.parent} writable, or set {WEIGHTS_DIR_ENV} to another folder.",
                    url=url, reason=str(e)) from e
            if expected is not None and received != expected:
                reason = f"received {received} of {expected} bytes"
                raise _Transient(DownloadError(
                    f"download of {url} was cut short: {reason}. "
                    + _hand_download_hint(checkpoint, dest), url=url, reason=reason))
            _check_digest(hasher.hexdigest(), checkpoint, what="the downloaded file", url=url,
                          advice="It was not kept. " + _hand_download_hint(checkpoint, dest))
            try:
                os.replace(temp_path, dest)
            except OSError as e:
                raise DownloadError(f"could not move {temp_path} to {dest}: {e.strerror or e}. "
                                    f"Make {dest.parent} writable.", url=url, reason=str(e)) from e
        except BaseException:
            temp_path.unlink(missing_ok=True)
            raise
        finally:
            _PARTIAL_FILES.discard(temp_path)
    logger.info("downloaded %s (%s) to %s", checkpoint.name, _format_size(received), dest)


def download(checkpoint: KnownCheckpoint, *, dest_dir: str | os.PathLike | None = None,
             base_url: str | None = None, progress: bool = True, timeout: float = 30,
             retries: int = 2, force: bool = False, deadline_s: float | None = DEFAULT_DEADLINE_S,
             cancel: Cancellation | None = None,
             on_progress: Callable[[int, int | None], None] | None = None) -> Path:
    """Download ``checkpoint`` into ``dest_dir`` (default :func:`weights_dir`) and return its path.

    The file is verified (byte count, hash prefix) before it appears under its final name. If it
    is already there it is returned without any network access, unless ``force=True``.
    ``base_url``: a mirror (see :func:`resolve_url`). ``timeout``: seconds for the connection and
    for each read. ``retries``: extra attempts after a transient failure (0-5).
    ``deadline_s``: seconds for the whole download, every attempt and wait included (``None``:
    no limit). ``cancel``: a :class:`Cancellation` another thread can use to stop it.
    ``on_progress(bytes received, bytes expected or None)``: called after every chunk (an app's
    progress display; it runs in the downloading thread). The body
    may not exceed :attr:`KnownCheckpoint.size_limit_bytes`. Safe to run in a background thread.

    Raises :class:`DownloadError` (:class:`ChecksumError` for a wrong file,
    :class:`DownloadCancelled` when cancelled) naming the URL, the reason and what to do; nothing
    is left behind in ``dest_dir`` on failure.
    """
    if not 0 <= retries <= _MAX_RETRIES:
        raise ValueError(f"retries must be between 0 and {_MAX_RETRIES}, got {retries}")
    if deadline_s is not None and not 0 < deadline_s < float("inf"):
        raise ValueError(f"deadline_s must be a number of seconds above 0, or None; got {deadline_s}")
    dest = local_path(checkpoint, dest_dir=dest_dir)
    if dest.is_file() and not force:
        logger.info("%s is already present at %s; not downloading it again", checkpoint.name, dest)
        return dest
    url = resolve_url(checkpoint, base_url=base_url)
    with _Stop(deadline_s=deadline_s, cancel=cancel) as stop:
        if stop.reason:
            raise stop.error(url, checkpoint, dest, "not started")
        _prepare_dest_dir(dest.parent)
        logger.info("downloading %s from %s to %s", checkpoint.name, url, dest)
        for attempt in range(retries + 1):
            try:
                _fetch_to(dest, url, checkpoint, progress=progress, timeout=timeout, stop=stop,
                          on_progress=on_progress)
                return dest
            except _Transient as e:
                if attempt == retries:
                    raise e.error from e.__cause__
                wait = _RETRY_BACKOFF_S * 2**attempt
                remaining = stop.remaining()
                if remaining is not None and remaining <= wait:
                    stop.stop("deadline")  # no time for another attempt: say so now
                if not stop.reason:
                    logger.warning("%s; retrying in %.0f s (attempt %d of %d)", e.error.reason,
                                   wait, attempt + 2, retries + 1)
                    stop.sleep(wait)
                if stop.reason:
                    raise stop.error(url, checkpoint, dest, f"last attempt: {e.error.reason}") from e.error
    raise AssertionError("unreachable")


@dataclasses.dataclass(eq=False)
class BackgroundDownload:
    """A :func:`download` running in a daemon thread (see :func:`download_in_background`).

    ``done()`` / ``wait(timeout)`` say whether it has finished, ``result(timeout)`` returns the
    path or raises its error, ``cancel()`` stops it at once (:class:`DownloadCancelled`).
    ``path`` and ``error`` hold the outcome once done.
    """

    checkpoint: KnownCheckpoint
    cancellation: Cancellation = dataclasses.field(default_factory=Cancellation)
    path: Path | None = None
    error: BaseException | None = None
    _finished: threading.Event = dataclasses.field(default_factory=threading.Event, repr=False)

    def cancel(self) -> None:
        self.cancellation.cancel()

    def done(self) -> bool:
        return self._finished.is_set()

    def wait(self, timeout: float | None = None) -> bool:
        """Wait until it finishes (at most ``timeout`` s); True when it has."""
        return self._finished.wait(timeout)

    def result(self, timeout: float | None = None) -> Path:
        """The downloaded file's path; raises the download's error, or TimeoutError when it is
        still running after ``timeout`` s."""
        if not self._finished.wait(timeout):
            raise TimeoutError(f"the download of {self.checkpoint.name} is still running")
        if self.error is not None:
            raise self.error
        return self.path


def download_in_background(checkpoint: KnownCheckpoint, **options) -> BackgroundDownload:
    """Start ``download(checkpoint, **options)`` in a daemon thread and return at once.

    ``options``: those of :func:`download` but ``cancel`` (the returned object has its own);
    give a ``deadline_s`` and ``progress=False`` for a server. Partial files are removed on
    SIGTERM and at exit once :func:`install_cleanup_handlers` has been called.
    """
    job = BackgroundDownload(checkpoint=checkpoint)

    def run() -> None:
        try:
            job.path = download(checkpoint, cancel=job.cancellation, **options)
        except Exception as e:  # handed to whoever asks for the result
            job.error = e
            if not isinstance(e, DownloadError):
                logger.exception("the download of %s failed", checkpoint.name)
        finally:
            job._finished.set()

    threading.Thread(target=run, name=f"download {checkpoint.name}", daemon=True).start()
    return job


def ensure_available(name_or_checkpoint: str | KnownCheckpoint, *,
                     dest_dir: str | os.PathLike | None = None, base_url: str | None = None,
                     offline: bool = False, progress: bool = True,
                     deadline_s: float | None = DEFAULT_DEADLINE_S,
                     cancel: Cancellation | None = None) -> Path:
    """The local path of a known checkpoint, downloading it first if it is missing.

    ``name_or_checkpoint``: a catalogue name (see :func:`segfpn.checkpoints.catalogue.find`) or a
    :class:`KnownCheckpoint`. With ``offline=True`` or ``$SEGFPN_OFFLINE=1`` a missing file raises
    :class:`OfflineError` saying which URL to fetch and where to save it. A present file is
    returned as is (not re-hashed; see :func:`verify_file`). ``deadline_s``, ``cancel``: as for
    :func:`download`.
    """
    checkpoint = (name_or_checkpoint if isinstance(name_or_checkpoint, KnownCheckpoint)
                  else find(name_or_checkpoint))
    dest = local_path(checkpoint, dest_dir=dest_dir)
    if dest.is_file():
        return dest
    if offline or offline_from_env():
        why = "offline=True" if offline else f"{OFFLINE_ENV}=1"
        reason = f"{dest} is missing and downloads are off ({why})"
        raise OfflineError(f"checkpoint {checkpoint.name!r} is not available: {reason}. Fetch "
                           f"{resolve_url(checkpoint, base_url=base_url)} and put it in "
                           f"{dest.parent} as {checkpoint.file_name}, or unset {OFFLINE_ENV} to "
                           f"let segfpn download it.", url=None, reason=reason)
    return download(checkpoint, dest_dir=dest.parent, base_url=base_url, progress=progress,
                    deadline_s=deadline_s, cancel=cancel)


@dataclasses.dataclass(frozen=True, kw_only=True)
class LocalCheckpoint:
    """What :func:`local_status` reports for one known checkpoint."""

    checkpoint: KnownCheckpoint
    path: Path
    present: bool
    size_bytes: int | None  # the local file's size; None when it is absent


def local_status(*, dest_dir: str | os.PathLike | None = None) -> list[LocalCheckpoint]:
    """Every known checkpoint, in catalogue order, with whether it is in ``dest_dir`` and its size.

    Only looks at the file system (no hashing, no network).
    """
    status = []
    for checkpoint in catalogue.CHECKPOINTS.values():
        path = local_path(checkpoint, dest_dir=dest_dir)
        try:
            size = path.stat().st_size if path.is_file() else None
        except OSError:
            size = None
        status.append(LocalCheckpoint(checkpoint=checkpoint, path=path, present=size is not None,
                                      size_bytes=size))
    return status


__all__ = [
    "BASE_URL_ENV", "DEFAULT_DEADLINE_S", "OFFLINE_ENV", "WEIGHTS_DIR_ENV", "BackgroundDownload",
    "Cancellation", "ChecksumError", "DownloadCancelled", "DownloadError", "LocalCheckpoint",
    "OfflineError", "download", "download_in_background", "ensure_available",
    "install_cleanup_handlers", "local_path", "local_status", "offline_from_env", "partial_files",
    "remove_partial_files", "resolve_url", "verify_file", "weights_dir",
]
