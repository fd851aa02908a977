"""The app's model picker: the checkpoints a person can choose, each session's choice, and the models
kept in memory for all sessions together. No gradio here.

* :func:`model_options`: what the picker lists: the app's default, the catalogue's checkpoints
  (those on disk first, the others downloaded when chosen), the checkpoint files in the weights
  folder, and the bundled offline model.
* :class:`SessionModel`: a session's choice (kept in its ``gr.State``): the model it uses, and one
  it chose that is still downloading.
* :class:`ModelPool`: loads a choice through a :class:`~segfpn.app.source.ModelSource` of its own
  (the one resolver, downloads in the background with their progress, the same messages) and keeps
  at most ``capacity`` models in memory: the app's default always, the least recently used of
  the others dropped first.
"""

from __future__ import annotations

import gc
import logging
import os
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from segfpn.app.session import detector_kind
from segfpn.app.source import ModelSource, ModelUnavailable, checkpoint_label, describe_model
from segfpn.checkpoints import catalogue, download, resolve
from segfpn.checkpoints.catalogue import KnownCheckpoint
from segfpn.config import ARCHITECTURES
from segfpn.model.optimize import return_freed_memory

logger = logging.getLogger(__name__)

#: Models kept in memory at most, for every session together (the app's default included).
DEFAULT_CAPACITY = 2
#: Files of the weights folder the picker lists (segfpn's own, torchvision's, detectron2's).
MODEL_SUFFIXES = (".safetensors", ".pth", ".pkl")
BUNDLED_LABEL = "offline model: synthetic shapes (bundled)"


class ModelChoiceFailed(RuntimeError):
    """A chosen model could not be loaded; the message says why. The session's model stays."""


@dataclass(frozen=True)
class SessionModel:
    """One session's model: ``current``, the picker value of the model it uses (None: the app's
    default), and ``pending``, a chosen one still downloading (the session switches to it once
    it has arrived and loaded)."""

    current: str | None = None
    pending: str | None = None


@dataclass(frozen=True)
class ModelOption:
    """One entry of the picker: ``value`` is a catalogue name or a checkpoint file's path."""

    value: str
    label: str


def _metric(checkpoint: KnownCheckpoint) -> str:
    metrics = checkpoint.metrics
    for key, name in (("pq", "PQ"), ("mask_ap", "mask AP"), ("box_ap", "box AP")):
        if key in metrics:
            return f"{name} {metrics[key]:g}"
    return ""


def catalogue_label(checkpoint: KnownCheckpoint, *, on_disk: bool) -> str:
    """"panoptic_fpn_R_50_3x · Panoptic FPN · PQ 41.5 · on disk" (or "· download ~170 MB")."""
    kind = detector_kind(ARCHITECTURES[checkpoint.arch]())
    if on_disk:
        where = "on disk"
    else:
        size = checkpoint.size_bytes / 2**20 if checkpoint.size_bytes else checkpoint.approx_size_mb
        where = f"download ~{size:.0f} MB" if size else "download"
    return " · ".join(filter(None, [checkpoint.name, kind, _metric(checkpoint), where]))


def _on_disk(checkpoint: KnownCheckpoint, weights_dir: Path) -> Path | None:
    """The file of ``checkpoint`` in ``weights_dir`` or torchvision's cache (not hashed here)."""
    for path in (download.local_path(checkpoint, dest_dir=weights_dir), resolve.torchvision_cache_path(checkpoint)):
        if path is not None and path.is_file():
            return path
    return None


def _weights_files(weights_dir: Path) -> list[Path]:
    """The checkpoint files in ``weights_dir`` that are neither a catalogue file nor the bundled model."""
    try:
        entries = sorted(weights_dir.iterdir())
    except OSError:  # no such folder (nothing downloaded yet), or unreadable
        return []
    bundled = resolve.BUNDLED_CHECKPOINT.resolve()
    return [p for p in entries if p.suffix.lower() in MODEL_SUFFIXES and p.is_file()
            and catalogue.find_by_file_name(p.name) is None and p.resolve() != bundled]


def local_file(value: str, *, weights_dir: Path) -> Path | None:
    """The file on this machine that picker value ``value`` names (a path, or a catalogue name
    whose file is in ``weights_dir``), resolved; None when there is none (not downloaded)."""
    try:
        known = catalogue.find(value)
    except KeyError:
        path = Path(value).expanduser()
        return path.resolve() if path.is_file() else None
    found = _on_disk(known, weights_dir)
    return found.resolve() if found is not None else None


def model_options(*, weights_dir: Path, default: str | None = None) -> list[ModelOption]:
    """What the picker lists, in order: ``default`` (the app's model, marked), the catalogue's
    checkpoints on disk, the other checkpoint files in ``weights_dir``, the bundled offline model,
    then the catalogue's checkpoints that a choice downloads. Only looks at the file system."""
    on_disk, to_download = [], []
    for checkpoint in catalogue.CHECKPOINTS.values():
        present = _on_disk(checkpoint, weights_dir) is not None
        option = ModelOption(checkpoint.name, catalogue_label(checkpoint, on_disk=present))
        (on_disk if present else to_download).append(option)
    files = [ModelOption(str(p), f"{p.name} · file in {weights_dir.name}/") for p in _weights_files(weights_dir)]
    options = [*on_disk, *files, ModelOption(str(resolve.BUNDLED_CHECKPOINT), BUNDLED_LABEL), *to_download]
    if default is None:
        return options
    default_file = local_file(default, weights_dir=weights_dir)
    for i, option in enumerate(options):
        if option.value == default or (default_file is not None
                                        and local_file(option.value, weights_dir=weights_dir) == default_file):
            # Listed under the default's own value: the picker shows the entry whose value it is given.
            return [ModelOption(default, option.label + " · default"), *options[:i], *options[i + 1:]]
    return [ModelOption(default, f"{checkpoint_label(default)} · default"), *options]


class ModelPool:
    """The models of every session: the app's ``default`` source (``--weights``), and the models
    sessions chose in the picker, each through a :class:`~segfpn.app.source.ModelSource` of its own.

    At most ``capacity`` predictors are kept in memory, counted across all of them (two choices of
    one file share one predictor): beyond it the least recently used choice is dropped, and the
    memory it held handed back to the OS. The default model is never dropped (every new session
    uses it; it is read from disk only once, see :class:`~segfpn.app.source.ModelSource`). A
    session whose model was dropped has it read from disk again by its next Segment; its runs made
    with the dropped model can no longer be explained (:meth:`in_use`).

    ``weights_dir``: where the picker looks for checkpoint files (default: the weights folder,
    ``SEGFPN_WEIGHTS_DIR``, looked up on each call). ``loader``, ``device``: those of the default
    source unless given. ``allow_download``: whether choosing a catalogue checkpoint that is not on
    disk downloads it (never with ``SEGFPN_OFFLINE=1``). Thread-safe.
    """

    def __init__(self, default: ModelSource, *, capacity: int = DEFAULT_CAPACITY,
                 weights_dir: str | os.PathLike | None = None, loader: Callable | None = None, device=None,
                 allow_download: bool = True):
        if capacity < 1:
            raise ValueError(f"capacity must be at least 1, got {capacity}")
        self.default = default
        self.capacity = capacity
        self._weights_dir = Path(weights_dir) if weights_dir is not None else None
        self.loader = loader if loader is not None else default.loader
        self.device = device if device is not None else default.device
        self.allow_download = allow_download
        self._chosen: OrderedDict[str, ModelSource] = OrderedDict()  # least recently used first
        self._lock = threading.RLock()
        if default.on_arrival is None:  # a better default arriving from its download counts too
            default.on_arrival = lambda: self._make_room(keep=None)

    @property
    def weights_dir(self) -> Path:
        return self._weights_dir if self._weights_dir is not None else download.weights_dir()

    # --- what the picker shows -------------------------------------------------------------------

    def default_value(self) -> str | None:
        """The picker value of the app's default model: the checkpoint in use, or the first tried."""
        source = self.default
        return source.loaded_from or (source.candidates[0] if source.candidates else None)

    def options(self) -> list[ModelOption]:
        return model_options(weights_dir=self.weights_dir, default=self.default_value())

    def value_of(self, session: SessionModel) -> str | None:
        """The picker value showing ``session``'s model (the one it waits for while it downloads)."""
        return session.pending or session.current or self.default_value()

    def label(self, value: str | None) -> str:
        """A model's short name on the page: the file name of a path, a catalogue name as is."""
        return checkpoint_label(value or self.default_value() or "model")

    # --- choosing --------------------------------------------------------------------------------

    def is_default(self, value: str) -> bool:
        """Whether picker value ``value`` is the app's default model (the same file counts, and the
        checkpoint the default source is downloading)."""
        source = self.default
        if value in (source.loaded_from, self.default_value()):
            return True
        if source.underway == value:
            return True
        if source.loaded_from is None:
            return False
        mine = local_file(value, weights_dir=self.weights_dir)
        return mine is not None and mine == local_file(source.loaded_from, weights_dir=self.weights_dir)

    def choose(self, value: str, session: SessionModel) -> SessionModel:
        """``session`` switched to picker value ``value``: the new :class:`SessionModel`.

        A checkpoint on disk is loaded now (seconds: call it where the model runs, one request
        at a time); a catalogue checkpoint that is missing starts downloading in the background
        and comes back as ``pending`` (:meth:`settle` switches the session once it has arrived);
        one download at a time. Raises :class:`ModelChoiceFailed` saying why for a value the
        picker does not offer, a file that does not load, or a download that cannot start; the
        session's model is then unchanged."""
        if not value or value not in {o.value for o in self.options()}:
            raise ModelChoiceFailed(f"{value!r} is not one of the models this app offers; choose one in the list.")
        if self.is_default(value):
            return SessionModel()
        with self._lock:
            source = self._chosen.get(value)
            if source is None or not (source.available or source.busy):  # new, or failed before: try again
                underway = self._downloading()
                if underway is not None and local_file(value, weights_dir=self.weights_dir) is None:
                    # One download at a time: a page cannot make the server fetch the whole catalogue at once.
                    raise ModelChoiceFailed(f"{self.label(underway)} is being downloaded, and the app downloads one "
                                            f"checkpoint at a time: choose {self.label(value)} again once it has "
                                            "arrived.")
                source = self._source(value, allow_download=self.allow_download)
                self._chosen[value] = source
            self._chosen.move_to_end(value)
        source.first_step()
        if source.available:
            self._make_room(keep=value)
            return SessionModel(current=value)
        if source.busy:  # downloading in the background: the session keeps its model meanwhile
            return SessionModel(current=session.current, pending=value)
        # Not loadable, or its download already failed: the reason the source found.
        raise ModelChoiceFailed(" ".join(p.message() for p in source.problems) or f"{value} could not be loaded.")

    def settle(self, session: SessionModel) -> tuple[SessionModel, str | None, bool]:
        """``(session, message, ok)`` once ``session``'s pending download has ended: switched to the
        model that arrived (``ok``), or left as it was with the reason (not ``ok``). While it is
        still under way, or with nothing pending: ``(session, None, True)``."""
        value = session.pending
        if value is None:
            return session, None, True
        with self._lock:
            source = self._chosen.get(value)
        if source is not None and source.busy:
            return session, None, True
        if source is None or source.available:  # arrived (and maybe dropped since: Segment reads it again)
            self._make_room(keep=value)
            return SessionModel(current=value), f"Now using {self.label(value)}.", True
        reasons = " ".join(p.message() for p in source.problems) or "it could not be loaded."
        return (SessionModel(current=session.current),
                f"{reasons} {self.label(session.current)} stays in use.", False)

    def predictor(self, session: SessionModel):
        """``(predictor, picker value)`` of ``session``'s model, read from disk again when it was
        dropped (never downloaded here). Raises :class:`~segfpn.app.source.ModelUnavailable` when
        the app's default has none, :class:`ModelChoiceFailed` when a chosen one cannot be read."""
        value = session.current
        if value is None:
            return self.default.get(), self.default_value()
        with self._lock:
            source = self._chosen.get(value)
            if source is None or source.predictor is None:
                source = self._source(value, allow_download=False)
                self._chosen[value] = source
            self._chosen.move_to_end(value)
        try:
            predictor = source.get()
        except ModelUnavailable as e:
            raise ModelChoiceFailed(f"{e} Choose a model in the list.") from e
        self._make_room(keep=value)
        return predictor, value

    def _downloading(self) -> str | None:
        """The checkpoint being downloaded (or loaded after its download) now, if any."""
        if self.default.busy:
            return self.default.underway
        return next((value for value, source in self._chosen.items() if source.busy), None)

    def _source(self, value: str, *, allow_download: bool) -> ModelSource:
        return ModelSource([value], device=self.device, loader=self.loader, allow_download=allow_download,
                           on_arrival=lambda: self._make_room(keep=value))

    # --- memory ----------------------------------------------------------------------------------

    def _held(self) -> list:
        """The distinct predictors in memory: the default's, then the chosen ones', oldest use first."""
        held = []
        for predictor in (self.default.predictor, *(s.predictor for s in self._chosen.values())):
            if predictor is not None and all(predictor is not p for p in held):
                held.append(predictor)
        return held

    def _make_room(self, *, keep: str | None) -> None:
        """Drop the least recently used chosen models (never ``keep``, never the default's) until
        at most :attr:`capacity` predictors are held; then hand the freed memory back to the OS."""
        dropped = []
        with self._lock:
            while len(self._held()) > self.capacity:
                default = self.default.predictor
                victim = next((value for value, source in self._chosen.items()
                               if value != keep and source.predictor is not None and source.predictor is not default),
                              None)
                if victim is None:
                    break
                self._chosen.pop(victim).close()
                dropped.append(victim)
        if dropped:
            gc.collect()  # the models' memory goes now, not at the next collection
            return_freed_memory()
            if torch.cuda.is_available() and torch.cuda.is_initialized():
                torch.cuda.empty_cache()  # the GPU memory the allocator kept for them, too
            logger.info("dropped %s: at most %d models are kept in memory", ", ".join(map(self.label, dropped)),
                        self.capacity)

    def loaded(self) -> list[str]:
        """The picker values of the models in memory now (the default first)."""
        with self._lock:
            values = [self.default_value()] if self.default.predictor is not None else []
            return values + [v for v, s in self._chosen.items() if s.predictor is not None]

    def loaded_predictor(self, value: str | None):
        """The predictor of picker value ``value`` (None: the app's default) if it is in memory now,
        else None; never loads anything."""
        if value is None:
            return self.default.predictor
        with self._lock:
            source = self._chosen.get(value)
            return source.predictor if source is not None else None

    def in_use(self, predictor) -> bool:
        """Whether ``predictor`` is one the app still serves (a run made with a model dropped or
        replaced since cannot be explained: its person presses Segment again)."""
        with self._lock:
            return predictor is not None and any(predictor is p for p in self._held())

    # --- the status row --------------------------------------------------------------------------

    def busy(self, session: SessionModel) -> bool:
        """True while something ``session`` waits for is downloading or loading (the page refreshes)."""
        return self.default.busy or session.pending is not None

    def ready(self, session: SessionModel) -> bool:
        """True when ``session``'s model is in memory and nothing is under way for it."""
        if self.busy(session):
            return False
        if session.current is None:
            return self.default.available
        with self._lock:
            source = self._chosen.get(session.current)
            return source is not None and source.predictor is not None

    def describe(self, session: SessionModel) -> str:
        """Markdown for ``session``'s status row: its model (and the download it waits for)."""
        lines = []
        if session.pending is not None:
            with self._lock:
                source = self._chosen.get(session.pending)
            activity = source.activity_markdown() if source is not None else None
            if activity:
                lines.append(f"{activity}; **{self.label(session.current)}** is used meanwhile.")
        if session.current is None:
            lines.append(self.default.describe())
        else:
            with self._lock:
                source = self._chosen.get(session.current)
            predictor = source.predictor if source is not None else None
            if predictor is not None:
                lines.append(describe_model(predictor, session.current))
            else:
                lines.append(f"Model **{self.label(session.current)}** · unloaded to free memory (at most "
                             f"{self.capacity} models are kept); Segment reads it again.")
        return "\n\n".join(lines)
