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
"""

from __future__ import annotations

import dataclasses
import hashlib
import http.client
import logging
import os
import shutil
import socket
import secrets
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import BinaryIO

from tqdm.auto import tqdm

from segfpn.checkpoints import catalogue
from segfpn.checkpoints.catalogue import KnownCheckpoint, find

logger = logging.getLogger(__name__)

WEIGHTS_DIR_ENV = "SEGFPN_WEIGHTS_DIR"
BASE_URL_ENV = "SEGFPN_BASE_URL"
OFFLINE_ENV = "SEGFPN_OFFLINE"

_CHUNK_BYTES = 1 << 20
_MAX_RETRIES = 5
_RETRY_BACKOFF_S = 1.0  # waits 1 s, 2 s, 4 s, ... between attempts
_USER_AGENT = "segfpn-weights/0.1 (+urllib)"


class DownloadError(RuntimeError):
    """A checkpoint could not be fetched or is not the file it should be.

    ``url``: the address that was tried (``None`` when nothing was fetched).
    ``reason``: the short cause, without the advice that the message adds.
    """

    def __init__(self, message: str, *, url: str | None = None, reason: str = "") -> None:
        super().__init__(message)
        self.url = url
        self.reason = reason or message


class ChecksumError(DownloadError):
    """The file's size or digest does not match the catalogue."""


class OfflineError(DownloadError):
    """The checkpoint is missing and downloads are turned off."""


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


def _open_temp(dest_dir: Path, file_name: str) -> tuple[BinaryIO, Path]:
    """A new ``<file_name>.part-<random>`` file in ``dest_dir``, opened for writing."""
    try:
        # O_EXCL with a random name, like mkstemp, but with the usual permissions (0o666 less the
        # umask) so the finished checkpoint is readable by whoever can read the folder.
        temp_name = dest_dir / f"{file_name}.part-{secrets.token_hex(6)}"
        fd = os.open(temp_name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    except OSError as e:
        raise DownloadError(f"cannot write to {dest_dir}: {e.strerror or e}. Make it writable, or "
                            f"pass another folder (--dir / dest_dir=) or set {WEIGHTS_DIR_ENV}.",
                            reason=str(e)) from e
    return os.fdopen(fd, "wb"), Path(temp_name)


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
              timeout: float) -> None:
    """One attempt: stream ``url`` into a temp file next to ``dest``, verify, rename onto ``dest``.

    Raises :class:`DownloadError` (final) or :class:`_Transient` (worth another attempt); in both
    cases no temp file is left behind.
    """
    request = urllib.request.Request(url, headers={"User-Agent": _USER_AGENT})
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as e:
        reason = f"HTTP {e.code} {e.reason}"
        error = DownloadError(f"could not download {url}: {reason}. "
                              + _hand_download_hint(checkpoint, dest), url=url, reason=reason)
        e.close()
        if e.code >= 500:
            raise _Transient(error) from e
        raise error from e
    except (urllib.error.URLError, OSError, http.client.HTTPException) as e:
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
                            chunk = response.read(_CHUNK_BYTES)
                        except (OSError, http.client.HTTPException) as e:
                            reason, _ = _describe_network_error(e)
                            raise _Transient(DownloadError(
                                f"download of {url} failed after {_format_size(received)}: "
                                f"{reason}. " + _hand_download_hint(checkpoint, dest),
                                url=url, reason=reason)) from e
                        if not chunk:
                            break
                        file.write(chunk)
                        hasher.update(chunk)
                        received += len(chunk)
                        bar.update(len(chunk))
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
    logger.info("downloaded %s (%s) to %s", checkpoint.name, _format_size(received), dest)


def download(checkpoint: KnownCheckpoint, *, dest_dir: str | os.PathLike | None = None,
             base_url: str | None = None, progress: bool = True, timeout: float = 30,
             retries: int = 2, force: bool = False) -> Path:
    """Download ``checkpoint`` into ``dest_dir`` (default :func:`weights_dir`) and return its path.

    The file is verified (byte count, hash prefix) before it appears under its final name. If it
    is already there it is returned without any network access, unless ``force=True``.
    ``base_url``: a mirror (see :func:`resolve_url`). ``timeout``: seconds for the connection and
    for each read. ``retries``: extra attempts after a transient failure (0-5).

    Raises :class:`DownloadError` (:class:`ChecksumError` for a wrong file) naming the URL, the
    reason and what to do; nothing is left behind in ``dest_dir`` on failure.
    """
    if not 0 <= retries <= _MAX_RETRIES:
        raise ValueError(f"retries must be between 0 and {_MAX_RETRIES}, got {retries}")
    dest = local_path(checkpoint, dest_dir=dest_dir)
    if dest.is_file() and not force:
        logger.info("%s is already present at %s; not downloading it again", checkpoint.name, dest)
        return dest
    _prepare_dest_dir(dest.parent)
    url = resolve_url(checkpoint, base_url=base_url)
    logger.info("downloading %s from %s to %s", checkpoint.name, url, dest)
    for attempt in range(retries + 1):
        try:
            _fetch_to(dest, url, checkpoint, progress=progress, timeout=timeout)
            return dest
        except _Transient as e:
            if attempt == retries:
                raise e.error from e.__cause__
            wait = _RETRY_BACKOFF_S * 2**attempt
            logger.warning("%s; retrying in %.0f s (attempt %d of %d)", e.error.reason, wait,
                           attempt + 2, retries + 1)
            time.sleep(wait)
    raise AssertionError("unreachable")


def ensure_available(name_or_checkpoint: str | KnownCheckpoint, *,
                     dest_dir: str | os.PathLike | None = None, base_url: str | None = None,
                     offline: bool = False, progress: bool = True) -> Path:
    """The local path of a known checkpoint, downloading it first if it is missing.

    ``name_or_checkpoint``: a catalogue name (see :func:`segfpn.checkpoints.catalogue.find`) or a
    :class:`KnownCheckpoint`. With ``offline=True`` or ``$SEGFPN_OFFLINE=1`` a missing file raises
    :class:`OfflineError` saying which URL to fetch and where to save it. A present file is
    returned as is (not re-hashed; see :func:`verify_file`).
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
    return download(checkpoint, dest_dir=dest.parent, base_url=base_url, progress=progress)


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
    "BASE_URL_ENV", "OFFLINE_ENV", "WEIGHTS_DIR_ENV", "ChecksumError", "DownloadError",
    "LocalCheckpoint", "OfflineError", "download", "ensure_available", "local_path",
    "local_status", "offline_from_env", "resolve_url", "verify_file", "weights_dir",
]
