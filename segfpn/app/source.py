"""Where the app's model comes from: the checkpoints to try, loaded once and shared, downloads
in the background while the app serves, and reloading on request. No gradio here.

:class:`ModelSource` tries its candidates in order (:func:`segfpn.checkpoints.resolve.candidates`:
the one asked for or the catalogue's default, then the bundled model) through the one checkpoint
resolver (:mod:`segfpn.checkpoints.resolve`). The first that loads is shared by every session
(:func:`load_shared`); a known checkpoint that is missing is downloaded in a background thread and
replaces the model in use once it has arrived. :meth:`ModelSource.describe` says in Markdown what
is loaded, what is coming, or why nothing is and what to fetch. The models sessions choose in the
picker, and how many stay in memory, are :mod:`segfpn.app.models`'s job.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from segfpn.checkpoints import catalogue, resolve
from segfpn.checkpoints import download as downloads
from segfpn.checkpoints.errors import CheckpointError
from segfpn.app.session import BOX_ONLY, model_kind
from segfpn.checkpoints.resolve import Unavailable
from segfpn.predictor import load

logger = logging.getLogger(__name__)

#: Seconds a startup download may wait for the server (per connection and per read).
DOWNLOAD_TIMEOUT_S = 15.0
#: Seconds a background download may take in all, retries included.
DOWNLOAD_DEADLINE_S = 3600.0
OFFLINE_MODEL = ("segfpn's small model trained on synthetic shapes: circles, squares, triangles and stars "
                 "on sky, grass, water and wall. Try the synthetic examples first; on photos it finds "
                 "shapes, not objects.")
OFFLINE_BANNER = ("**Offline model in use.** No COCO checkpoint could be loaded (see below), so this is "
                  + OFFLINE_MODEL)


class ModelUnavailable(RuntimeError):
    """No candidate checkpoint could be loaded; ``problems`` says why for each."""

    def __init__(self, problems: Sequence["Unavailable"]):
        self.problems = list(problems)
        super().__init__(" ".join(p.message() for p in self.problems) or "no checkpoint given")


class ReloadFailed(RuntimeError):
    """A reload found no checkpoint that loads; the model loaded before stays in use."""


#: The predictors loaded, by (file, device), for as long as something else holds them (a
#: :class:`ModelSource`): sharing never keeps a model in memory by itself, so dropping a source
#: frees its model (:class:`segfpn.app.models.ModelPool` keeps at most two).
_SHARED: "weakref.WeakValueDictionary[tuple[str, str], object]" = weakref.WeakValueDictionary()
_SHARED_LOCK = threading.Lock()


def load_shared(path: str | os.PathLike, *, device=None, loader: Callable | None = None,
                fresh: bool = False):
    """The predictor for the checkpoint file ``path`` on ``device``: the one already loaded while
    someone holds it, else loaded now. ``fresh``: read the file again even when it is loaded
    (the new predictor is shared from then on; on failure the old one stays)."""
    loader = loader or load
    key = (str(Path(path).resolve()), str(device))
    with _SHARED_LOCK:
        predictor = None if fresh else _SHARED.get(key)
        if predictor is None:
            start = time.perf_counter()
            predictor = loader(path, device=device)
            logger.info("loaded %s in %.1f s", path, time.perf_counter() - start)
            with contextlib.suppress(TypeError):  # an object without weak references is not shared
                _SHARED[key] = predictor
        return predictor


class ModelSource:
    """The checkpoints to try, in order, and the predictor of the first that loads.

    ``candidates``: checkpoint files or catalogue names. :meth:`start` loads in a background
    thread, so that a server can answer at once: first the best candidate already on disk,
    then, one at a time and in order, the known checkpoints before it that are missing are
    downloaded (none with ``allow_download=False`` or ``SEGFPN_OFFLINE=1``); the first that
    arrives and loads replaces the model in use. :meth:`describe` says what is happening
    ("Downloading `name` (12.0 of 243.0 MB)…; the model below is used meanwhile"). A download
    is tried once per start; later attempts only look on disk again, so a file put in place
    while the app runs is picked up by the next request without a restart.

    Once loaded, the model is never read from disk again unless :meth:`reload` is called: a
    checkpoint file deleted, corrupted or replaced while the app runs changes nothing until then,
    and a reload that fails keeps the model already loaded.
    """

    def __init__(self, candidates: Sequence[str | os.PathLike], *, device=None,
                 allow_download: bool = True, download_timeout: float = DOWNLOAD_TIMEOUT_S,
                 download_deadline: float = DOWNLOAD_DEADLINE_S, loader: Callable | None = None,
                 on_arrival: Callable[[], None] | None = None):
        self.candidates = [str(c) for c in candidates]
        self.device = device
        self.allow_download = allow_download
        self.download_timeout = download_timeout
        self.download_deadline = download_deadline
        self._cancel = downloads.Cancellation()
        self.loader = loader
        self.on_arrival = on_arrival  # called once a downloaded checkpoint is loaded and in use
        self.problems: list[Unavailable] = []
        self.loaded_from: str | None = None
        self._predictor = None
        self._factory: Callable[[], object] | None = None
        self._fixed = False  # a predictor handed over: no file to reload
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._on_disk_tried = threading.Event()  # the background thread's first step is done
        self._activity: _Activity | None = None  # a download or load under way, for the page

    @property
    def uses_bundled_model(self) -> bool:
        """Whether the model in use is the bundled offline one, however its path was written."""
        if self.loaded_from is None:
            return False
        try:
            return Path(self.loaded_from).expanduser().resolve() == Path(resolve.BUNDLED_CHECKPOINT).resolve()
        except (OSError, ValueError):
            return False

    @classmethod
    def from_predictor(cls, predictor, name: str | None = None) -> "ModelSource":
        """A source that always hands out ``predictor`` (tests, notebooks)."""
        source = cls([name or getattr(predictor, "source", "") or "model"], allow_download=False)
        source._predictor, source._fixed = predictor, True
        source.loaded_from = source.candidates[0]
        source._on_disk_tried.set()
        return source

    @classmethod
    def from_factory(cls, factory: Callable[[], object], name: str = "model") -> "ModelSource":
        """A source whose predictor comes from calling ``factory()`` (once, on first use)."""
        source = cls([name], allow_download=False)
        source._factory = factory
        source._on_disk_tried.set()
        return source

    @property
    def available(self) -> bool:
        return self._predictor is not None

    @property
    def busy(self) -> bool:
        """True while the background thread downloads or loads a checkpoint."""
        return self._activity is not None

    @property
    def predictor(self):
        """The predictor in use, or None; never loads anything (see :meth:`get`)."""
        return self._predictor

    @property
    def underway(self) -> str | None:
        """The candidate the background thread is downloading or loading now, or None."""
        activity = self._activity
        return activity.candidate if activity is not None else None

    def activity_markdown(self) -> str | None:
        """"**Downloading `name`** (12.0 of 243.0 MB)…" while the background thread downloads or
        loads a checkpoint; None otherwise."""
        activity = self._activity
        return activity.markdown() if activity is not None else None

    def start(self) -> "ModelSource":
        """Start loading in a background thread (once; a daemon: it never delays the exit).
        :meth:`get` waits for its first step, the candidates already on disk, never for a
        download."""
        with self._lock:
            if self._thread is None and not self._on_disk_tried.is_set():
                self._thread = threading.Thread(target=self._load_in_background, daemon=True,
                                                name="segfpn-model-source")
                self._thread.start()
        return self

    def first_step(self) -> "ModelSource":
        """:meth:`start`, and wait for its first step: the candidates on disk loaded (or their
        problems known). A download may go on after it (:attr:`busy`)."""
        self.start()
        self._on_disk_tried.wait()
        return self

    def wait(self, timeout: float | None = None) -> bool:
        """Wait until the background loading, downloads included, has ended; False on timeout."""
        thread = self._thread
        if thread is not None:
            thread.join(timeout)
            return not thread.is_alive()
        return True

    def get(self):
        """The shared predictor; raises :class:`ModelUnavailable` when no candidate loads (or
        none has arrived yet: its problem then says it is being downloaded)."""
        self.start()
        self._on_disk_tried.wait()
        with self._lock:
            if self._predictor is None:
                if self.busy:  # nothing on disk, the download under way: it says so
                    raise ModelUnavailable(self.problems)
                # The files may have been put in place since the last look.
                self._use(*self._load_first(self.candidates, download=False))
            return self._predictor

    def try_get(self):
        """The predictor, or ``None`` when no candidate loads (see :attr:`problems`)."""
        try:
            return self.get()
        except ModelUnavailable:
            return None

    def reload(self):
        """Read the checkpoints from disk again (never downloading) and use the first that loads.

        Only the loaded candidate and those before it are tried: a fallback never replaces a
        better model that is already in memory. When none loads, the loaded model stays in use
        and :class:`ReloadFailed` says why for each file; with no model loaded yet this is
        :meth:`get` (raising :class:`ModelUnavailable`). Returns the new predictor.
        """
        if self._predictor is None:
            return self.get()
        with self._lock:
            if self._fixed:
                raise ReloadFailed("this app was given a model object, not a checkpoint file: "
                                   "there is nothing to reload.")
            last = self.candidates.index(self.loaded_from) if self._factory is None else 0
            try:
                loaded = self._load_first(self.candidates[:last + 1], download=False, fresh=True)
            except ModelUnavailable as e:
                reasons = " ".join(p.message() for p in e.problems)
                raise ReloadFailed(f"{reasons} The model loaded before "
                                   f"({checkpoint_label(self.loaded_from or 'model')}) stays in use.") from e
            self._use(*loaded)
            logger.info("reloaded the model from %s", self.loaded_from)
            return self._predictor

    def _use(self, predictor, candidate: str, problems: list[Unavailable]) -> None:
        self._predictor, self.loaded_from, self.problems = predictor, candidate, problems

    def _load_in_background(self) -> None:
        """What :meth:`start` runs: the candidates on disk, then the downloads before them."""
        missing: list[str] = []
        try:
            with self._lock:
                try:
                    self._use(*self._load_first(self.candidates, download=False))
                except ModelUnavailable:
                    pass  # self.problems says why; the downloads below may still bring one
                if self.uses_bundled_model and self.problems:
                    logger.warning("using the bundled offline model (synthetic shapes, no COCO classes) for now: %s",
                                   " ".join(p.message() for p in self.problems))
                missing = self._downloadable(self._better_than_loaded())
                if missing:  # before anyone reads the page: it says what comes next
                    self._activity = _Activity("downloading", missing[0])
                    self._mark(missing, "not on disk yet: downloading it in the background.")
        finally:
            self._on_disk_tried.set()
        try:
            for candidate in missing:
                if self._download_and_use(candidate):
                    break
        except Exception:  # a bug: logged, and the model in use stays
            logger.exception("loading the checkpoints in the background failed")
        finally:
            self._activity = None

    def _better_than_loaded(self) -> list[str]:
        """The candidates before the one loaded (all of them when none is)."""
        if self.loaded_from is None:
            return list(self.candidates)
        return self.candidates[:self.candidates.index(self.loaded_from)]

    def _downloadable(self, candidates: Sequence[str]) -> list[str]:
        """Those of ``candidates`` that are known checkpoints missing from disk, when this
        source may download."""
        if not self.allow_download or downloads.offline_from_env():
            return []
        missing = []
        for candidate in candidates:
            if Path(candidate).expanduser().exists():
                continue
            try:
                known = catalogue.find(candidate)
            except KeyError:
                continue
            cached = resolve.torchvision_cache_path(known)
            if not downloads.local_path(known).is_file() and not (cached is not None and cached.is_file()):
                missing.append(candidate)
        return missing

    def _mark(self, candidates: Sequence[str], reason: str) -> None:
        """Give each of ``candidates`` the problem ``reason`` (with where to fetch it)."""
        for candidate in candidates:
            known = catalogue.find(candidate)
            self._set_problem(Unavailable(candidate, reason, downloads.resolve_url(known),
                                          downloads.local_path(known)))

    def _set_problem(self, problem: "Unavailable") -> None:
        """Replace the problem of ``problem.candidate`` (or add it, in candidate order)."""
        others = [p for p in self.problems if p.candidate != problem.candidate]
        order = {c: i for i, c in enumerate(self.candidates)}
        self.problems = sorted([*others, problem], key=lambda p: order.get(p.candidate, len(order)))

    def _download_and_use(self, candidate: str) -> bool:
        """Download ``candidate`` (no lock held: requests go on with the model in use), load it
        and use it if it still comes before the loaded one. True when it is in use."""
        self._activity = _Activity("downloading", candidate)
        found = self._locate(candidate, download=True)
        if isinstance(found, Unavailable):
            logger.warning("%s The app goes on with %s.", found.message(),
                           checkpoint_label(self.loaded_from or "no model"))
            with self._lock:
                self._set_problem(found)
            return False
        self._activity = _Activity("loading", candidate)
        try:
            predictor = load_shared(found, device=self.device, loader=self.loader)
        except Exception as e:  # a corrupt or foreign file: say so, keep the model in use
            logger.warning("could not load %s: %s", found, e, exc_info=not isinstance(e, CheckpointError))
            with self._lock:
                self._set_problem(Unavailable(candidate, f"{found} could not be loaded: {_sentence(str(e))}"))
            return False
        with self._lock:
            if candidate not in self._better_than_loaded():
                return False  # a reload found something at least as good meanwhile
            before = self.candidates[:self.candidates.index(candidate)]
            self._use(predictor, candidate, [p for p in self.problems if p.candidate in before])
        logger.info("now using %s (downloaded while the app was serving)", candidate)
        if self.on_arrival is not None:
            self.on_arrival()
        return True

    def _load_first(self, candidates: Sequence[str], *, download: bool, fresh: bool = False
                    ) -> tuple[object, str, list[Unavailable]]:
        """``(predictor, candidate, problems of the candidates before it)`` for the first of
        ``candidates`` that loads; :class:`ModelUnavailable` when none does (setting
        :attr:`problems` while no model is loaded: a failed reload leaves the page as it is)."""
        if self._factory is not None:
            try:
                return self._factory(), self.candidates[0], []
            except Exception as e:
                logger.exception("the model factory failed")
                problems = [Unavailable(self.candidates[0], f"could not be loaded: {e}")]
                if self._predictor is None:
                    self.problems = problems
                raise ModelUnavailable(problems) from e
        problems = []
        for candidate in candidates:
            found = self._locate(candidate, download=download)
            if isinstance(found, Unavailable):
                problems.append(found)
                continue
            try:
                predictor = load_shared(found, device=self.device, loader=self.loader, fresh=fresh)
            except Exception as e:  # a corrupt or foreign file: say so and try the next one
                logger.warning("could not load %s: %s", found, e,
                               exc_info=not isinstance(e, CheckpointError))  # a bug: its traceback
                problems.append(Unavailable(candidate, f"{found} could not be loaded: {_sentence(str(e))}"))
                continue
            return predictor, candidate, problems
        if self._predictor is None:
            self.problems = problems
        raise ModelUnavailable(problems)

    def _locate(self, candidate: str, *, download: bool) -> Path | Unavailable:
        """The local file of ``candidate`` (:func:`segfpn.checkpoints.resolve.locate`),
        downloading a known checkpoint if allowed; the download reports its progress to the
        page and stops at the source's deadline or when :meth:`close` cancels it."""
        def progress(received: int, expected: int | None) -> None:
            self._activity = _Activity("downloading", candidate, received, expected)

        return resolve.locate(candidate, download_missing=download and self.allow_download, progress=False,
                              timeout=self.download_timeout, retries=1, deadline_s=self.download_deadline,
                              cancel=self._cancel, on_progress=progress)

    def close(self) -> None:
        """Stop a download under way (the model in use stays)."""
        self._cancel.cancel()

    def describe(self) -> str:
        """Markdown: what is loaded, what is being downloaded or loaded for it, or why nothing
        is and what to do about it."""
        activity = self._activity.markdown() if self._activity is not None else None
        if self._predictor is not None:
            text = describe_model(self._predictor, self.loaded_from or "")
            fallback = self.uses_bundled_model and self.problems
            if activity:
                meanwhile = (f"the offline model is used meanwhile: {OFFLINE_MODEL}" if fallback
                             else "the model below is used meanwhile.")
                text = f"{activity}; {meanwhile}\n\n{text}"
            elif fallback:
                text = OFFLINE_BANNER + "\n\n" + text
            if self.problems:  # candidates before the loaded one
                text += "\n\nNot used, tried first:\n" + "\n".join(_problem_markdown(p) for p in self.problems)
            return text
        if activity:
            return "\n".join([f"{activity}; Segment works once it has arrived (this page says "
                              "so). Tried, in order:", "", *(_problem_markdown(p) for p in self.problems)])
        lines = ["**No model is loaded**, so Segment cannot run yet. Tried, in order:", "",
                 *(_problem_markdown(p) for p in self.problems), "",
                 "Put the file in place and press Segment again (no restart needed), or start "
                 "the app with `--weights PATH_OR_NAME` (`SEGFPN_WEIGHTS`). "
                 "`weights/README.md` lists every known checkpoint."]
        return "\n".join(lines)


@dataclass(frozen=True)
class _Activity:
    """What :class:`ModelSource`'s background thread is doing: "downloading" (``received`` of
    ``expected`` bytes so far) or "loading" the catalogue checkpoint ``candidate``."""

    kind: str
    candidate: str
    received: int = 0
    expected: int | None = None

    def markdown(self) -> str:
        """"**Downloading `name`** (12.0 of 243.0 MB)…" or "**Loading `name`**…"."""
        if self.kind != "downloading":
            return f"**Loading `{self.candidate}`**…"
        total = self.expected
        if total is None:
            known = catalogue.find(self.candidate)
            total = known.size_bytes or (known.approx_size_mb or 0) * 2**20
        of = f" of {_megabytes(total)}" if total else ""
        return f"**Downloading `{self.candidate}`** ({_megabytes(self.received)}{of})…"


def _problem_markdown(problem: Unavailable) -> str:
    """One tried checkpoint as a Markdown list item: why it is not used, and for a known one
    where to fetch it by hand."""
    text = f"- `{problem.candidate}`: {problem.reason}"
    if problem.url and problem.dest:
        text += (f"\n  - **fetch** <{problem.url}>\n  - **save it as** `{problem.dest}` "
                 f"(`SEGFPN_WEIGHTS_DIR` sets the folder)")
    return text


def _megabytes(num_bytes: float) -> str:
    return f"{num_bytes / 2**20:.1f} MB"


def _sentence(text: str) -> str:
    text = text.strip()
    return text if text.endswith(".") else text + "."


def checkpoint_label(name: str) -> str:
    """A checkpoint's short name: the file name of a path, a catalogue name as is."""
    return Path(name).name if Path(name).suffix else name


def describe_model(predictor, name: str) -> str:
    """"Model **name** · arch (kind) · 80 thing + 53 stuff classes · on cpu" in Markdown; a
    box-only model says so."""
    categories = predictor.categories
    classes = f"{len(categories.things)} thing classes"
    if predictor.has_semantic_head:
        stuff = sum(1 for c in categories.stuff if c.id != 0)
        classes += f" + {stuff} stuff classes (panoptic)"
    kind = model_kind(predictor)
    if kind in BOX_ONLY:
        classes += ", boxes only"
    return (f"Model **{checkpoint_label(name)}** · `{predictor.arch}` ({kind}) · {classes} · "
            f"on **{predictor.device}**")
