"""What the Gradio app (``app.py``) keeps and computes between its events. No gradio here.

* :class:`ModelSource`: the checkpoints to try, in order. The first one that is available is
  loaded once and shared by every session (:func:`load_shared`); when none is, the
  :class:`Unavailable` records say which file to fetch, from where, and where to put it.
  :meth:`ModelSource.reload` reads the files again; when that fails the model already loaded
  stays in use (:class:`ReloadFailed` says why).
* :func:`prepare_image` and :func:`run_model`: an upload in (downscaled when it is larger than the
  model needs), a :class:`Run` out: one session's last run, with the pyramid features kept so
  that the inspector never runs the model again.
* The views, one function per tab, each drawing with :mod:`segfpn.viz` (numpy in, numpy out):
  :func:`draw_instance_view`, :func:`draw_semantic_view`, :func:`panoptic_view`,
  :func:`activation_view`, :func:`levels_view`, plus the texts and table beside them.
* :func:`write_downloads`: the overlay PNG, COCO results JSON and COCO panoptic PNG + JSON, in a
  scratch folder of the request's own (:func:`request_dir`).
* :class:`RunStore`: the sessions' last runs, within a budget of bytes across all sessions
  (:func:`kept_bytes`), the least recently used dropped first.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import json
import logging
import os
import re
import secrets
import shutil
import sys
import tempfile
import threading
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image

from segfpn import viz
from segfpn.checkpoints import catalogue
from segfpn.checkpoints import download as downloads
from segfpn.checkpoints.errors import CheckpointError
from segfpn.atomic_files import write_atomic
from segfpn.export import instances_to_coco_results, panoptic_to_coco, write_panoptic_png
from segfpn.imageio import ImageError, read_image
from segfpn.predictor import load
from segfpn.structures import Result

logger = logging.getLogger(__name__)

#: Images whose longest side is above this are downscaled before the model sees them; the
#: model works at 800-1333 px, so nothing is lost but memory and time. Results refer to the
#: downscaled image.
MAX_SIDE = 2000
#: segfpn's small Panoptic FPN trained on synthetic shapes (weights/README.md): it ships with the
#: repository, so the app works on a machine that has no COCO checkpoint and no network.
BUNDLED_MODEL = Path(__file__).resolve().parents[1] / "weights" / "synthetic_panoptic_fpn.safetensors"
#: Checkpoints tried after the one asked for, in order.
FALLBACK_CHECKPOINTS: tuple[str, ...] = (str(BUNDLED_MODEL),)
OFFLINE_MODEL = ("segfpn's small model trained on synthetic shapes: circles, squares, triangles and stars "
                 "on sky, grass, water and wall. Try the synthetic examples; on photos it finds nothing useful.")
OFFLINE_BANNER = ("**Offline model in use.** No COCO checkpoint could be loaded (see below), so this is "
                  + OFFLINE_MODEL)
#: The shorter side of an image as segmented is at least this (segfpn.read_image's own minimum).
MIN_SIDE = 2
#: Seconds a startup download may wait for the server (per connection and per read).
DOWNLOAD_TIMEOUT_S = 15.0
#: A candidate ending so is a file path (missing: "does not exist"), not a catalogue name.
CHECKPOINT_SUFFIXES = {".pkl", ".pth", ".pt", ".safetensors", ".bin"}

#: The pyramid levels the inspector offers: bottom-up (ResNet res2..res5) and FPN outputs.
LEVELS = ("c2", "c3", "c4", "c5", "p2", "p3", "p4", "p5", "p6")
#: (label, value) of the inspector's summaries, values as in :data:`segfpn.viz.ACTIVATION_MODES`.
ACTIVATION_MODE_CHOICES = (("mean |activation|", "mean_abs"), ("max", "max"), ("L2 norm", "l2"),
                           ("single channel", "channel"), ("PCA: 3 components as RGB", "pca"))
_MODE_NAMES = {value: label for label, value in ACTIVATION_MODE_CHOICES}
#: Columns of the panoptic segment table.
SEGMENT_COLUMNS = ("id", "class", "kind", "score", "area (px)", "RoI level")
#: The panoptic view is sent to the browser at most this large (one PNG per segment).
PANOPTIC_VIEW_MAX_SIDE = 1024

_FP16_MAX = float(np.finfo(np.float16).max)


# ---------------------------------------------------------------------------------------------
# The model: candidates tried in order, loaded once, shared


class ModelUnavailable(RuntimeError):
    """No candidate checkpoint could be loaded; ``problems`` says why for each."""

    def __init__(self, problems: Sequence["Unavailable"]):
        self.problems = list(problems)
        super().__init__(" ".join(p.message() for p in self.problems) or "no checkpoint given")


class ReloadFailed(RuntimeError):
    """A reload found no checkpoint that loads; the model loaded before stays in use."""


@dataclass(frozen=True)
class Unavailable:
    """Why ``candidate`` could not be loaded. ``url`` and ``dest`` are set for a known
    checkpoint that is missing: fetch ``url`` and save it as ``dest``."""

    candidate: str
    reason: str
    url: str | None = None
    dest: Path | None = None

    def message(self) -> str:
        text = f"{self.candidate}: {self.reason}"
        if self.url and self.dest:
            text += f" Fetch {self.url} and save it as {self.dest}."
        return text

    def markdown(self) -> str:
        text = f"- `{self.candidate}`: {self.reason}"
        if self.url and self.dest:
            text += (f"\n  - **fetch** <{self.url}>\n  - **save it as** `{self.dest}` "
                     f"(`SEGFPN_WEIGHTS_DIR` sets the folder)")
        return text


_SHARED: dict[tuple[str, str], object] = {}
_SHARED_LOCK = threading.Lock()


def load_shared(path: str | os.PathLike, *, device=None, loader: Callable | None = None,
                fresh: bool = False):
    """The predictor for the checkpoint file ``path`` on ``device``, loaded on first use and
    then shared by every caller in this process. ``fresh``: read the file again even when it
    was loaded before (the new predictor is shared from then on; on failure the old one stays)."""
    loader = loader or load
    key = (str(Path(path).resolve()), str(device))
    with _SHARED_LOCK:
        if fresh or key not in _SHARED:
            start = time.perf_counter()
            _SHARED[key] = loader(path, device=device)
            logger.info("loaded %s in %.1f s", path, time.perf_counter() - start)
        return _SHARED[key]


def candidate_checkpoints(weights: str | Sequence[str] | None = None) -> list[str]:
    """The checkpoints the app tries, in order: ``weights`` (a name or path, several separated by
    commas) or the catalogue's default, then :data:`FALLBACK_CHECKPOINTS`."""
    if isinstance(weights, str):
        weights = weights.split(",")
    chosen = [w.strip() for w in (weights or []) if w and w.strip()]
    if not chosen:
        chosen = [catalogue.default_checkpoint().name]
    return chosen + [c for c in FALLBACK_CHECKPOINTS if c not in chosen]


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
                 loader: Callable | None = None):
        self.candidates = [str(c) for c in candidates]
        self.device = device
        self.allow_download = allow_download
        self.download_timeout = download_timeout
        self.loader = loader
        self.problems: list[Unavailable] = []
        self.loaded_from: str | None = None
        self._predictor = None
        self._factory: Callable[[], object] | None = None
        self._fixed = False  # a predictor handed over: no file to reload
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._on_disk_tried = threading.Event()  # the background thread's first step is done
        self._activity: _Activity | None = None  # a download or load under way, for the page

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
                                   f"({_label(self.loaded_from or 'model')}) stays in use.") from e
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
            if not downloads.local_path(known).is_file():
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
        """The local file of ``candidate``, downloading a known checkpoint if allowed."""
        path = Path(candidate).expanduser()
        if path.is_file():
            return path
        if path.exists():
            return Unavailable(candidate, f"{path} is a folder, not a checkpoint file.")
        try:
            known = catalogue.find(candidate)
        except KeyError:
            if os.sep in candidate or path.suffix.lower() in CHECKPOINT_SUFFIXES:
                return Unavailable(candidate, f"{path} does not exist (deleted or moved?).")
            return Unavailable(candidate, f"`{candidate}` is neither a file nor a known checkpoint "
                                          "name (`segfpn weights list` shows the names).")
        dest = downloads.local_path(known)
        url = downloads.resolve_url(known)
        if dest.is_file():
            return dest
        if downloads.offline_from_env():
            try:  # raises OfflineError, whose reason names the file and SEGFPN_OFFLINE
                return downloads.ensure_available(known, progress=False)
            except downloads.DownloadError as e:
                return Unavailable(candidate, _sentence(e.reason), url, dest)
        if not download:
            return Unavailable(candidate, f"{known.file_name} is not in {dest.parent}.", url, dest)
        try:
            return downloads.download(known, timeout=self.download_timeout, retries=1)
        except downloads.DownloadError as e:
            # A network failure: what happened, in the message's first sentence (the page adds
            # where to fetch the file by hand). A local one (a read-only or full disk): the whole
            # message, which says what to change.
            if e.url:
                return Unavailable(candidate, f"could not download it ({str(e).split('. ')[0]}).",
                                   url, dest)
            return Unavailable(candidate, _sentence(f"could not download it: {e}"), url, dest)

    def describe(self) -> str:
        """Markdown: what is loaded, what is being downloaded or loaded for it, or why nothing
        is and what to do about it."""
        activity = self._activity.markdown() if self._activity is not None else None
        if self._predictor is not None:
            text = describe_model(self._predictor, self.loaded_from or "")
            fallback = self.loaded_from in FALLBACK_CHECKPOINTS and self.problems
            if activity:
                meanwhile = (f"the offline model is used meanwhile: {OFFLINE_MODEL}" if fallback
                             else "the model below is used meanwhile.")
                text = f"{activity}; {meanwhile}\n\n{text}"
            elif fallback:
                text = OFFLINE_BANNER + "\n\n" + text
            if self.problems:  # candidates before the loaded one
                text += "\n\nNot used, tried first:\n" + "\n".join(p.markdown() for p in self.problems)
            return text
        if activity:
            return "\n".join([f"{activity}; Segment works once it has arrived (this page says "
                              "so). Tried, in order:", "", *(p.markdown() for p in self.problems)])
        lines = ["**No model is loaded**, so Segment cannot run yet. Tried, in order:", "",
                 *(p.markdown() for p in self.problems), "",
                 "Put the file in place and press Segment again (no restart needed), or start "
                 "the app with `--weights PATH_OR_NAME` (`SEGFPN_WEIGHTS`). "
                 "`weights/README.md` lists every known checkpoint."]
        return "\n".join(lines)


@dataclass(frozen=True)
class _Activity:
    """What :class:`ModelSource`'s background thread is doing: "downloading" or "loading"
    the catalogue checkpoint ``candidate``."""

    kind: str
    candidate: str

    def markdown(self) -> str:
        """"**Downloading `name`** (12.0 of 243.0 MB)…" or "**Loading `name`**…"."""
        if self.kind != "downloading":
            return f"**Loading `{self.candidate}`**…"
        known = catalogue.find(self.candidate)
        dest = downloads.local_path(known)
        # download() writes into "<file>.part-<random>" beside its destination: its size is
        # what has arrived.
        received = sum(_file_size(p) for p in dest.parent.glob(f"{known.file_name}.part-*"))
        total = known.size_bytes or (known.approx_size_mb or 0) * 2**20
        of = f" of {_megabytes(total)}" if total else ""
        return f"**Downloading `{self.candidate}`** ({_megabytes(received)}{of})…"


def _file_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:  # renamed or removed meanwhile
        return 0


def _megabytes(num_bytes: float) -> str:
    return f"{num_bytes / 2**20:.1f} MB"


def _sentence(text: str) -> str:
    text = text.strip()
    return text if text.endswith(".") else text + "."


def _label(name: str) -> str:
    """A checkpoint's short name: the file name of a path, a catalogue name as is."""
    return Path(name).name if Path(name).suffix else name


def describe_model(predictor, name: str) -> str:
    """"**name** · arch · 80 thing + 53 stuff classes · cpu" in Markdown."""
    categories = predictor.categories
    classes = f"{len(categories.things)} thing classes"
    if predictor.has_semantic_head:
        stuff = sum(1 for c in categories.stuff if c.id != 0)
        classes += f" + {stuff} stuff classes (panoptic)"
    return f"Model **{_label(name)}** · `{predictor.arch}` · {classes} · on **{predictor.device}**"


# ---------------------------------------------------------------------------------------------
# One run: image in, result and features kept


@dataclass
class Run:
    """A session's last run.

    image: uint8 [H, W, 3], the image as segmented (after any downscale); every array of
    ``result`` refers to it. original_size: (H, W) of the upload. features: level name ->
    float16 [C, h, w] (half of float32's memory; the inspector normalises anyway).
    timings: seconds per stage, "drawing" included once the views are drawn.
    Kept between requests by a :class:`RunStore`.
    """

    name: str
    image: np.ndarray
    original_size: tuple[int, int]
    result: Result
    features: dict[str, np.ndarray]
    timings: dict[str, float]
    device: str

    @property
    def downscaled(self) -> bool:
        return tuple(self.image.shape[:2]) != tuple(self.original_size)


def _size_text(size: tuple[int, int]) -> str:
    """(H, W) as "WxH", the way :mod:`segfpn.imageio` writes sizes."""
    return f"{size[1]}x{size[0]}"


def prepare_image(source, *, max_side: int = MAX_SIDE) -> tuple[np.ndarray, tuple[int, int]]:
    """``(rgb, original (H, W))``: ``source`` read by :func:`segfpn.read_image` (raises
    :class:`~segfpn.ImageError` with a clear message) and, when its longest side is above
    ``max_side``, downscaled to it with area averaging.

    An image so elongated that its shorter side would end below :data:`MIN_SIDE` px is refused
    with an :class:`~segfpn.ImageError` naming its size as uploaded, never downscaled to a
    size the person did not upload.
    """
    rgb = read_image(source)
    h, w = rgb.shape[:2]
    scale = max_side / max(h, w)
    if scale < 1.0:
        short = min(h, w) * scale
        if round(short) < MIN_SIDE:
            raise ImageError(
                f"image is {_size_text((h, w))} pixels: too elongated to segment. Downscaled to "
                f"{max_side} px on its longest side, its shorter side would be {short:.2g} px "
                f"(at least {MIN_SIDE} px are needed); crop it to a shape closer to a photo's.")
        size = (max(MIN_SIDE, round(w * scale)), max(MIN_SIDE, round(h * scale)))
        rgb = cv2.resize(rgb, size, interpolation=cv2.INTER_AREA)
    return rgb, (h, w)


def _half(feature) -> np.ndarray:
    """float16 copy of a feature map (a torch tensor or an array), clipped to float16's range."""
    if isinstance(feature, torch.Tensor):
        # In torch: one multi-threaded pass, ~5x faster than numpy's clip + astype at 800x800.
        return feature.clamp(-_FP16_MAX, _FP16_MAX).to(torch.float16).contiguous().numpy()
    return np.clip(np.asarray(feature), -_FP16_MAX, _FP16_MAX).astype(np.float16)


def run_model(predictor, source, *, name: str = "image", max_side: int = MAX_SIDE) -> Run:
    """Read ``source``, run ``predictor`` on it once (features included) and keep everything.

    An :class:`~segfpn.ImageError` from the predictor about a downscaled image names the
    size uploaded too: the person never saw the downscaled one."""
    start = time.perf_counter()
    image, original_size = prepare_image(source, max_side=max_side)
    read_s = time.perf_counter() - start
    try:
        result = predictor.predict(image, return_features=True)
    except ImageError as e:
        if tuple(image.shape[:2]) == tuple(original_size):
            raise
        raise ImageError(f"the uploaded image is {_size_text(original_size)} pixels, downscaled "
                         f"to {_size_text(image.shape[:2])} (--max-side {max_side}) before "
                         f"segmenting, and then: {e}") from e
    features = {k: _half(v) for k, v in (result.features or {}).items()}
    result.features = None
    timings = dict(result.timings)
    timings["preprocess"] = timings.get("preprocess", 0.0) + read_s
    return Run(name=name, image=image, original_size=original_size, result=result,
               features=features, timings=timings, device=str(result.device))


# ---------------------------------------------------------------------------------------------
# The runs kept between requests: a budget of bytes across sessions


def kept_bytes(obj) -> int:
    """Bytes held by the numpy arrays, torch tensors and bytes reachable from ``obj``: through
    dicts, lists, tuples, sets and the attributes of segfpn's own objects (a :class:`Run`, its
    ``Result``, whatever arrays they hold, full or cropped). Every buffer is counted once: a
    view counts as the array it views, whole."""
    seen: set = set()  # ids of the objects walked, ("array" | "storage", id) of the buffers
    total = 0
    stack = [obj]
    while stack:
        item = stack.pop()
        if id(item) in seen:
            continue
        seen.add(id(item))
        if isinstance(item, np.ndarray):
            owner = item
            while isinstance(owner.base, np.ndarray):
                owner = owner.base
            if ("array", id(owner)) not in seen:
                seen.add(("array", id(owner)))
                total += owner.nbytes
        elif isinstance(item, torch.Tensor):
            storage = item.untyped_storage()
            key = ("storage", storage.data_ptr())
            if key not in seen:
                seen.add(key)
                total += storage.nbytes()
        elif isinstance(item, (bytes, bytearray)):
            total += len(item)
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, (list, tuple, set, frozenset)):
            stack.extend(item)
        elif type(item).__module__.startswith("segfpn"):
            stack.extend(getattr(item, "__dict__", {}).values())
            stack.extend(getattr(item, s) for s in getattr(type(item), "__slots__", ())
                         if hasattr(item, s))
    return total


#: How many dropped runs' keys :class:`RunStore` remembers, to say "dropped" rather than
#: "press Segment first" (32 bytes each).
_DROPPED_KEYS_REMEMBERED = 10_000


class RunStore:
    """The runs that sessions keep between requests, ``budget_bytes`` of them at most in all
    (each run's size is :func:`kept_bytes`, measured when stored and again whenever used, so
    arrays a run builds on demand count too).

    Storing or using a run drops the least recently used others until the total fits; the run
    just stored or used is never dropped for its own sake, so one run larger than the whole
    budget is kept, alone. A dropped run's key answers ``None`` from :meth:`get`
    (:meth:`was_dropped` tells it from a key never stored). Its memory is freed once no request
    draws from it any more; handing it back to the OS is :class:`IdleTrim`'s job. Thread-safe.
    """

    def __init__(self, *, budget_bytes: int):
        if budget_bytes <= 0:
            raise ValueError(f"budget_bytes must be positive, got {budget_bytes}")
        self.budget_bytes = int(budget_bytes)
        self._runs: OrderedDict[str, tuple[Run, int]] = OrderedDict()  # oldest use first
        self._dropped: OrderedDict[str, None] = OrderedDict()  # keys dropped for room, bounded
        self._total = 0
        self._lock = threading.Lock()

    @property
    def total_bytes(self) -> int:
        return self._total

    def __len__(self) -> int:
        return len(self._runs)

    def put(self, run: Run) -> str:
        """Keep ``run``; returns its key (for the session's ``gr.State``)."""
        key = secrets.token_hex(12)
        with self._lock:
            self._set(key, run)
            self._make_room(keep=key)
        return key

    def get(self, key: str | None) -> Run | None:
        """The run stored under ``key``, marked as just used; ``None`` when there is none."""
        with self._lock:
            entry = self._runs.get(key) if key is not None else None
            if entry is None:
                return None
            self._runs.move_to_end(key)
            self._set(key, entry[0])  # measured again: what it built since counts
            self._make_room(keep=key)
        return entry[0]

    def was_dropped(self, key: str | None) -> bool:
        """True when ``key``'s run was dropped to free memory (the most recent keys only)."""
        return key in self._dropped

    def discard(self, key: str | None) -> None:
        """Forget ``key``'s run (a newer run replaced it, or its session ended)."""
        with self._lock:
            entry = self._runs.pop(key, None) if key is not None else None
            if entry is not None:
                self._total -= entry[1]

    def _set(self, key: str, run: Run) -> None:
        size = kept_bytes(run)
        previous = self._runs.get(key)
        self._total += size - (previous[1] if previous else 0)
        self._runs[key] = (run, size)

    def _make_room(self, *, keep: str) -> None:
        while self._total > self.budget_bytes and len(self._runs) > 1:
            key = next(iter(self._runs))
            if key == keep:  # the newest use is oldest only when alone; guarded above
                break
            run, size = self._runs.pop(key)
            self._total -= size
            self._dropped[key] = None
            logger.info("dropped the run of %s (%s): the runs kept stay within %s",
                        run.name, _megabytes(size), _megabytes(self.budget_bytes))
        while len(self._dropped) > _DROPPED_KEYS_REMEMBERED:
            self._dropped.popitem(last=False)


class IdleTrim:
    """Hands the memory freed inside the process back to the OS (:func:`return_freed_memory`)
    once no model run has started or ended for ``idle_s`` seconds.

    On CPU the predictor makes glibc keep freed blocks for reuse
    (:func:`segfpn.model.optimize.keep_freed_memory`): back-to-back runs reuse the working
    memory of the one before instead of page-faulting it in again, but a server would stay at
    its peak forever. Trimming only when idle keeps the first and not the second.
    """

    def __init__(self, *, idle_s: float = 2.0):
        self.idle_s = idle_s
        self._lock = threading.Lock()
        self._running = 0
        self._generation = 0  # bumped by every start and end: a timer of an older one skips

    @contextlib.contextmanager
    def running(self) -> Iterator[None]:
        """Around a model run (and what it stores or drops)."""
        with self._lock:
            self._running += 1
            self._generation += 1
        try:
            yield
        finally:
            with self._lock:
                self._running -= 1
            self.soon()

    def soon(self) -> None:
        """Trim ``idle_s`` from now unless a run starts or ends meanwhile (memory was freed:
        runs dropped, a session ended)."""
        with self._lock:
            self._generation += 1
            generation = self._generation
        timer = threading.Timer(self.idle_s, self._trim_if_idle, args=(generation,))
        timer.daemon = True
        timer.start()

    def _trim_if_idle(self, generation: int) -> None:
        with self._lock:
            idle = self._running == 0 and self._generation == generation
        if idle:
            return_freed_memory()


def return_freed_memory() -> bool:
    """Hand memory that is free inside the process back to the OS (glibc's ``malloc_trim``:
    the top of the heap, and the free pages inside every arena). Some tens of ms. A no-op
    returning False where glibc is absent."""
    global _LIBC
    if _LIBC is None:
        try:
            _LIBC = ctypes.CDLL("libc.so.6") if sys.platform.startswith("linux") else False
        except OSError:
            _LIBC = False
    if not _LIBC:
        return False
    return bool(_LIBC.malloc_trim(0))


_LIBC = None


# ---------------------------------------------------------------------------------------------
# Views: one function per tab


def class_choices(run: Run) -> list[tuple[str, str]]:
    """(label, class name) of every class detected, most frequent first: ("person (12)", "person")."""
    counts = Counter(run.result.instances.names)
    return [(f"{name} ({n})", name) for name, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))]


def _classes(classes: Iterable[str] | None) -> list[str] | None:
    """The class filter: None (every class) when nothing is selected."""
    chosen = [c for c in (classes or []) if c]
    return chosen or None


def draw_instance_view(run: Run, *, score_threshold: float = 0.5, alpha: float = 0.5,
                       classes: Iterable[str] | None = None, show_boxes: bool = True,
                       show_labels: bool = True) -> np.ndarray:
    """uint8 [H, W, 3]: masks, boxes and "class score" labels of the kept detections."""
    return viz.draw_instances(run.image, run.result.instances, score_threshold=score_threshold,
                              classes=_classes(classes), alpha=alpha, show_boxes=show_boxes,
                              show_labels=show_labels)


def instance_summary(run: Run, *, score_threshold: float, classes: Iterable[str] | None) -> str:
    shown = len(viz.visible_indices(run.result.instances, score_threshold=score_threshold,
                                    classes=_classes(classes)))
    return f"{shown} of {len(run.result.instances)} detections shown (score ≥ {score_threshold:.2f})"


def draw_semantic_view(run: Run, *, alpha: float = 0.5) -> np.ndarray | None:
    """uint8 [H, W, 3] of the semantic segmentation, or None without a semantic branch."""
    if run.result.semantic is None:
        return None
    return viz.draw_semantic(run.image, run.result.semantic, alpha=alpha)


def _hex(color) -> str:
    return "#{:02x}{:02x}{:02x}".format(*(int(v) for v in color))


def segment_label(segment) -> str:
    """The label of a panoptic segment in the view's legend: "#3 person 0.93", "#7 sky"."""
    text = f"#{segment.id} {segment.class_name}"
    return f"{text} {segment.score:.2f}" if segment.isthing and segment.score is not None else text


def panoptic_view(run: Run, *, highlight: int | None = None,
                  max_side: int = PANOPTIC_VIEW_MAX_SIDE):
    """The panoptic view as ``(base image, [(mask, label), ...], {label: "#rrggbb"})`` for an
    annotated image, or None without a panoptic result.

    The base image carries each segment's outline and class label (readable on any
    background); each annotation is one segment's mask, bool [h, w] at the base's size.
    ``highlight``: a segment id to single out (the rest dimmed, only its mask annotated).
    Sent at most ``max_side`` px large: the view is for looking, the downloads are full size.
    """
    panoptic = run.result.panoptic
    if panoptic is None:
        return None
    base = viz.draw_panoptic(run.image, panoptic, alpha=0.0, highlight_segment_id=highlight)
    ids = panoptic.segment_ids
    h, w = ids.shape
    scale = min(1.0, max_side / max(h, w))
    if scale < 1.0:
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
        base = cv2.resize(base, size, interpolation=cv2.INTER_AREA)
        ids = cv2.resize(ids.astype(np.int32), size, interpolation=cv2.INTER_NEAREST)
    colors = viz.segment_colors(panoptic)
    segments = [s for s in panoptic.segments if highlight is None or s.id == highlight]
    annotations = [(ids == s.id, segment_label(s)) for s in segments]
    color_map = {segment_label(s): _hex(colors[s.id]) for s in panoptic.segments}
    return base, annotations, color_map


def segment_rows(run: Run) -> list[list]:
    """One row per panoptic segment, columns :data:`SEGMENT_COLUMNS`."""
    panoptic = run.result.panoptic
    if panoptic is None:
        return []
    return [[s.id, s.class_name, "thing" if s.isthing else "stuff",
             round(float(s.score), 3) if s.score is not None else None, int(s.area),
             f"p{s.level}" if s.level is not None else "—"] for s in panoptic.segments]


def segment_details(run: Run, segment_id: int) -> str:
    """Markdown about one panoptic segment: class, kind, area, and for a thing score and level."""
    segment = next(s for s in run.result.panoptic.segments if s.id == segment_id)
    share = 100.0 * segment.area / run.result.panoptic.segment_ids.size
    kind = "thing" if segment.isthing else "stuff"
    text = (f"**#{segment.id} {segment.class_name}** ({kind}), {segment.area} px "
            f"({share:.1f} % of the image)")
    if segment.isthing:
        text += f", score {segment.score:.2f}, mask RoI pooled from **p{segment.level}**"
    return text


def level_stride(level: str) -> int:
    """The stride (in network-input pixels) of a level: 2**l for c_l and p_l."""
    return 2 ** int(level[1:])


def level_channels(run: Run, level: str) -> int:
    return int(run.features[level].shape[0])


def activation_view(run: Run, level: str, mode: str = "mean_abs", channel: int = 0,
                    *, alpha: float = 0.65) -> tuple[np.ndarray, str, int]:
    """``(overlay uint8 [H, W, 3], Markdown about the level, channel actually shown)``.

    The level's map (float16 [C, h, w] from the run) is summarised by ``mode`` (see
    :func:`segfpn.viz.activation_map`; ``channel`` is clamped to the level's channels) and laid
    over the image, cell by cell. Raises ValueError for a level the model did not produce.
    """
    if level not in run.features:
        raise ValueError(f"this model has no level {level!r}; it has {', '.join(run.features)}")
    feature = run.features[level]
    num_channels, rows, cols = feature.shape
    channel = int(min(max(int(channel or 0), 0), num_channels - 1))
    stride = level_stride(level)
    activation = viz.activation_map(feature, mode=mode, channel=channel, clip_percentile=1.0)
    overlay = viz.overlay_activation(run.image, activation, input_size=run.result.input_size,
                                     stride=stride, alpha=alpha)
    in_h, in_w = run.result.input_size
    valid_rows, valid_cols = viz.valid_cells((in_h, in_w), stride)
    image_px = stride * run.image.shape[0] / in_h
    kind = "bottom-up ResNet stage" if level.startswith("c") else "FPN output"
    shown = _MODE_NAMES.get(mode, mode) + (f" {channel}" if mode == "channel" else "")
    cells = f"{rows} × {cols} cells"
    if (valid_rows, valid_cols) != (rows, cols):
        cells += f" ({valid_rows} × {valid_cols} over the image, the rest over padding)"
    info = (f"**{level}** · {kind} · {num_channels} channels · {cells} · "
            f"stride **{stride} px** of the {in_w} × {in_h} network input "
            f"(one cell ≈ {image_px:.1f} px of this image) · showing {shown}")
    return overlay, info, channel


def levels_view(run: Run, *, score_threshold: float = 0.5, classes: Iterable[str] | None = None,
                source: str = "mask") -> tuple[np.ndarray, str]:
    """``(drawing, Markdown)``: every kept detection's box in the colour of the pyramid level its
    RoI was pooled from (``source`` "mask": the mask head's RoI, "box": the box head's), the
    count per level, and the rule."""
    instances = run.result.instances
    drawing = viz.draw_levels(run.image, instances, score_threshold=score_threshold,
                              classes=_classes(classes), source=source)
    keep = viz.visible_indices(instances, score_threshold=score_threshold, classes=_classes(classes))
    levels = (instances.levels if source == "mask" else instances.box_levels)[keep]
    counts = viz.level_counts(levels)
    per_level = " · ".join(f"**p{k}** (stride {2 ** k}): {n}" for k, n in counts.items())
    scale = run.result.input_size[0] / run.image.shape[0]
    text = (f"{per_level} — {len(keep)} detections with score ≥ {score_threshold:.2f}.\n\n"
            f"{viz.level_rule_text()} (Here the network input is this image scaled by {scale:.2f}.)")
    return drawing, text


def run_summary(run: Run) -> str:
    """Markdown: the image, its sizes, what was found, the time per stage and the device."""
    r = run.result
    h, w = run.image.shape[:2]
    in_h, in_w = r.input_size
    size = f"{w} × {h} px"
    if run.downscaled:
        oh, ow = run.original_size
        size = f"{ow} × {oh} px, downscaled to {size}"
    found = f"{len(r.instances)} detections"
    if r.panoptic is not None:
        found += f", {len(r.panoptic.segments)} panoptic segments"
    t = run.timings
    heads = t.get("heads", 0.0) + t.get("semantic_head", 0.0)
    stages = [("preprocess", t.get("preprocess", 0.0)), ("backbone + FPN", t.get("backbone_fpn", 0.0)),
              ("heads", heads), ("postprocess", t.get("postprocess", 0.0))]
    if "drawing" in t:
        stages.append(("drawing", t["drawing"]))
    total = sum(v for _, v in stages)
    timing = " · ".join(f"{name} {seconds:.2f} s" for name, seconds in stages)
    return (f"**{run.name}** · {size} (network input {in_w} × {in_h}) · {found}  \n"
            f"{timing} · **total {total:.2f} s** on **{run.device}**")


# ---------------------------------------------------------------------------------------------
# Downloads: written in a scratch folder per request


_ROOT: Path | None = None
_ROOT_LOCK = threading.Lock()


def _downloads_root() -> Path:
    """This process's folder for request folders (``segfpn-app-*`` in the temp folder),
    removed at exit; app.py turns SIGTERM into a normal exit so that this runs then too."""
    global _ROOT
    with _ROOT_LOCK:
        if _ROOT is None or not _ROOT.is_dir():
            _ROOT = Path(tempfile.mkdtemp(prefix="segfpn-app-"))
            atexit.register(shutil.rmtree, _ROOT, True)
        return _ROOT


@contextlib.contextmanager
def request_dir() -> Iterator[Path]:
    """A new empty folder for one request's files, removed with everything in it when the
    block ends. Files meant to outlive the request must be copied out before (app.py hands
    them to Gradio's cache, which serves them). No request ever touches another's folder, so
    two requests of one session can run at once."""
    directory = Path(tempfile.mkdtemp(prefix="request-", dir=_downloads_root()))
    try:
        yield directory
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def file_stem(name: str) -> str:
    """A safe file-name stem from the upload's name: letters, digits, "._-" only."""
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(str(name)).stem).strip("._-")[:60]
    return stem or "image"


def write_png(path: Path, image: np.ndarray) -> Path:
    write_atomic(path, lambda f: Image.fromarray(image).save(f, format="PNG", compress_level=3))
    return path


def _write_json(path: Path, data) -> Path:
    write_atomic(path, lambda f: f.write(json.dumps(data).encode("utf-8")))
    return path


def write_overlay(run: Run, overlay: np.ndarray, directory: Path) -> Path:
    return write_png(directory / f"{file_stem(run.name)}_overlay.png", overlay)


def write_downloads(run: Run, overlay: np.ndarray, directory: Path, *,
                    categories=None) -> dict[str, Path | None]:
    """Write the four downloads into ``directory`` (a :func:`request_dir`).

    Returns ``{"overlay": PNG, "instances": COCO results JSON (RLE masks), "panoptic_png":
    COCO panoptic PNG, "panoptic_json": its annotation}``; the panoptic ones are None without a
    panoptic result. Image id 1; coordinates refer to ``run.image``. ``categories``: the
    model's :class:`~segfpn.categories.CategorySet`, listed in the panoptic JSON when given.
    """
    stem = file_stem(run.name)
    h, w = run.image.shape[:2]
    out: dict[str, Path | None] = {"overlay": write_overlay(run, overlay, directory)}
    out["instances"] = _write_json(directory / f"{stem}_instances_coco.json",
                                   instances_to_coco_results(run.result.instances, image_id=1))
    out["panoptic_png"] = out["panoptic_json"] = None
    if run.result.panoptic is not None:
        png_name = f"{stem}_panoptic.png"
        rgb, annotation = panoptic_to_coco(run.result.panoptic, image_id=1, file_name=png_name)
        write_panoptic_png(directory / png_name, rgb)
        document = {"images": [{"id": 1, "file_name": run.name, "height": h, "width": w}],
                    "annotations": [annotation]}
        if categories is not None:
            document["categories"] = [{"id": c.id, "name": c.name, "isthing": int(c.isthing)}
                                      for c in (*categories.things, *categories.stuff) if c.id != 0]
        out["panoptic_png"] = directory / png_name
        out["panoptic_json"] = _write_json(directory / f"{stem}_panoptic.json", document)
    return out
