"""A checkpoint's name or path -> its file: the one resolver of :func:`segfpn.load`, ``segfpn
predict`` and the app.

A candidate is the path of a checkpoint file, or the name of a known checkpoint (``segfpn weights
list``). A known checkpoint is looked for, in order:

1. in the weights folder (``SEGFPN_WEIGHTS_DIR``, else ``./weights``: :func:`download.weights_dir`);
2. for torchvision's files, in torchvision's own download cache (``$TORCH_HOME/hub/checkpoints``,
   where ``torchvision.models.detection.maskrcnn_resnet50_fpn(weights=...)`` saved it), checked
   against its published hash;
3. downloaded into the weights folder, unless downloads are off (``download=False`` or
   ``SEGFPN_OFFLINE=1``).

When the checkpoints asked for cannot be had, the app and ``segfpn predict`` fall back to
:data:`BUNDLED_CHECKPOINT`, segfpn's small model trained on synthetic shapes, which ships with the
repository (:func:`candidates`). Each failure is an :class:`Unavailable` saying why, and for a
known checkpoint which URL to fetch and where to save it.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from segfpn.checkpoints import catalogue, download
from segfpn.checkpoints.catalogue import KnownCheckpoint
from segfpn.checkpoints.errors import CheckpointError, DownloadError

logger = logging.getLogger(__name__)

#: segfpn's Panoptic FPN trained on synthetic shapes (weights/README.md): part of the repository,
#: so that the app and the CLI work with no COCO checkpoint and no network.
BUNDLED_CHECKPOINT = Path(__file__).resolve().parents[2] / "weights" / "synthetic_panoptic_fpn.safetensors"
#: Its SHA-256 (``segfpn weights verify`` checks it); update it with the file.
BUNDLED_SHA256 = "a4ce78cf07a1d2e3ebf79c7fbbbed25b41f5b63e1acc0885986938afe1ba2bf8"
#: What it scores, on 100 held-out images of its synthetic data set (weights/README.md), not COCO.
BUNDLED_METRICS = {"pq": 89.5, "mask_ap": 77.9}
#: A candidate ending so is a file path (missing: "does not exist"), not a catalogue name.
CHECKPOINT_SUFFIXES = (".pkl", ".pth", ".pt", ".safetensors", ".bin")


@dataclass(frozen=True)
class Unavailable:
    """Why ``candidate`` could not be had. ``url`` and ``dest`` are set for a known checkpoint
    that is missing: fetch ``url`` and save it as ``dest``; ``reason`` says so itself when
    ``reason_has_fix``."""

    candidate: str
    reason: str
    url: str | None = None
    dest: Path | None = None
    reason_has_fix: bool = False

    def message(self) -> str:
        text = f"checkpoint {self.candidate!r} is not available: {self.reason}"
        if self.url and self.dest and not self.reason_has_fix:
            text += f" Fetch {self.url} and save it as {self.dest}."
        return text


class CheckpointUnavailable(CheckpointError):
    """None of the candidates could be had; ``problems`` says why for each."""

    def __init__(self, problems: Sequence[Unavailable]):
        self.problems = list(problems)
        super().__init__(" ".join(p.message() for p in self.problems) or "no checkpoint given")


def candidates(weights: str | Sequence[str] | None = None, *, fallback: bool = True) -> list[str]:
    """The checkpoints to try, in order: ``weights`` (a name or path, several separated by commas)
    or the catalogue's default, then (``fallback``) :data:`BUNDLED_CHECKPOINT`."""
    if isinstance(weights, (str, os.PathLike)):
        weights = str(weights).split(",")
    chosen = [str(w).strip() for w in (weights or []) if w and str(w).strip()]
    if not chosen:
        chosen = [catalogue.default_checkpoint().name]
    bundled = str(BUNDLED_CHECKPOINT)
    return chosen + ([bundled] if fallback and bundled not in chosen else [])


def torchvision_cache_path(checkpoint: KnownCheckpoint) -> Path | None:
    """Where torchvision keeps ``checkpoint`` once it has downloaded it; None for other formats."""
    if checkpoint.format != "torchvision":
        return None
    import torch.hub

    return Path(torch.hub.get_dir()) / "checkpoints" / checkpoint.file_name


def locate(candidate: str | os.PathLike, *, download_missing: bool = True, progress: bool = True,
           timeout: float = 30, retries: int = 2, deadline_s: float | None = download.DEFAULT_DEADLINE_S,
           cancel: download.Cancellation | None = None,
           on_progress: Callable[[int, int | None], None] | None = None) -> Path | Unavailable:
    """The local file of ``candidate`` (see the module docstring), or why there is none.

    ``download_missing=False`` never touches the network; ``timeout``, ``retries``,
    ``deadline_s``, ``cancel`` and ``on_progress`` are :func:`download.download`'s. Never raises for a missing or
    undownloadable checkpoint (a :class:`DownloadCancelled` is re-raised: the caller stopped it).
    """
    candidate = str(candidate)
    path = Path(candidate).expanduser()
    if path.is_dir():
        return Unavailable(candidate, f"{path} is a folder, not a checkpoint file.")
    if path.exists():
        return path  # a file, or something else the loader refuses with its own message (a FIFO)
    try:
        known = catalogue.find(candidate)
    except KeyError as exc:
        if os.sep in candidate or path.suffix.lower() in CHECKPOINT_SUFFIXES:
            return Unavailable(candidate, f"{path} does not exist.")
        return Unavailable(candidate, f"it is neither a file nor a known checkpoint name ({exc.args[0]}; "
                                      "`segfpn weights list` shows the names).")
    dest = download.local_path(known)
    url = download.resolve_url(known)
    if dest.is_file():
        return dest
    cached = torchvision_cache_path(known)
    if cached is not None and cached.is_file():
        try:
            download.verify_file(cached, known)
            logger.info("using torchvision's downloaded copy of %s: %s", known.name, cached)
            return cached
        except DownloadError as exc:
            logger.warning("ignoring %s: %s", cached, exc)
    if not download_missing or download.offline_from_env():
        why = f"{download.OFFLINE_ENV}=1" if download.offline_from_env() else "downloads are off"
        return Unavailable(candidate, f"{known.file_name} is not in {dest.parent} ({why}).", url, dest)
    try:
        return download.download(known, progress=progress, timeout=timeout, retries=retries, deadline_s=deadline_s,
                                 cancel=cancel, on_progress=on_progress)
    except download.DownloadCancelled:
        raise
    except DownloadError as exc:  # its message says what happened and what to do
        return Unavailable(candidate, _sentence(f"could not download it: {exc}"), url, dest, reason_has_fix=True)


def resolve(candidate: str | os.PathLike, **options) -> Path:
    """The local file of ``candidate``; :class:`CheckpointUnavailable` saying why there is none
    (``options``: :func:`locate`'s)."""
    found = locate(candidate, **options)
    if isinstance(found, Unavailable):
        raise CheckpointUnavailable([found])
    return found


def resolve_first(names: Sequence[str], **options) -> tuple[Path, str, list[Unavailable]]:
    """``(file, candidate, problems of the candidates before it)`` for the first of ``names``
    that can be had; :class:`CheckpointUnavailable` with every problem when none can."""
    problems = []
    for name in names:
        found = locate(name, **options)
        if isinstance(found, Path):
            return found, name, problems
        problems.append(found)
    raise CheckpointUnavailable(problems)


def _sentence(text: str) -> str:
    text = text.strip()
    return text if text.endswith(".") else text + "."
