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
  fresh temporary folder per request (:func:`new_request_dir`).
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import re
import shutil
import tempfile
import threading
import time
import weakref
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image

from segfpn import viz
from segfpn.checkpoints import catalogue
from segfpn.checkpoints import download as downloads
from segfpn.checkpoints.errors import CheckpointError
from segfpn.export import instances_to_coco_results, panoptic_to_coco, write_atomic, write_panoptic_png
from segfpn.imageio import read_image
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
OFFLINE_BANNER = ("**Offline model in use.** No COCO checkpoint could be loaded (see below), so this is "
                  "segfpn's small model trained on synthetic shapes: circles, squares, triangles and stars "
                  "on sky, grass, water and wall. Try the synthetic examples; on photos it finds nothing useful.")
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

    ``candidates``: checkpoint files or catalogue names. A known name missing from ``weights/``
    is downloaded once, with a short timeout (none with ``allow_download=False`` or
    ``SEGFPN_OFFLINE=1``); later attempts only look on disk again, so a file put in place while
    the app runs is picked up by the next request without a restart.

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
        self._tried_download = False
        self._lock = threading.Lock()

    @classmethod
    def from_predictor(cls, predictor, name: str | None = None) -> "ModelSource":
        """A source that always hands out ``predictor`` (tests, notebooks)."""
        source = cls([name or getattr(predictor, "source", "") or "model"], allow_download=False)
        source._predictor, source._fixed = predictor, True
        source.loaded_from = source.candidates[0]
        return source

    @classmethod
    def from_factory(cls, factory: Callable[[], object], name: str = "model") -> "ModelSource":
        """A source whose predictor comes from calling ``factory()`` (once, on first use)."""
        source = cls([name], allow_download=False)
        source._factory = factory
        return source

    @property
    def available(self) -> bool:
        return self._predictor is not None

    def get(self):
        """The shared predictor; raises :class:`ModelUnavailable` when no candidate loads."""
        with self._lock:
            if self._predictor is None:
                download = self.allow_download and not self._tried_download
                self._tried_download = True
                self._use(*self._load_first(self.candidates, download=download))
            return self._predictor

    def reload(self):
        """Read the checkpoints from disk again (never downloading) and use the first that loads.

        Only the loaded candidate and those before it are tried: a fallback never replaces a
        better model that is already in memory. When none loads, the loaded model stays in use
        and :class:`ReloadFailed` says why for each file; with no model loaded yet this is
        :meth:`get` (raising :class:`ModelUnavailable`). Returns the new predictor.
        """
        with self._lock:
            if self._predictor is None:
                self._use(*self._load_first(self.candidates, download=False))
                return self._predictor
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

    def try_get(self):
        """The predictor, or ``None`` when no candidate loads (see :attr:`problems`)."""
        try:
            return self.get()
        except ModelUnavailable:
            return None

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
        """Markdown: what is loaded, or why nothing is and what to do about it."""
        if self._predictor is not None:
            text = describe_model(self._predictor, self.loaded_from or "")
            if self.loaded_from in FALLBACK_CHECKPOINTS and self.problems:
                text = OFFLINE_BANNER + "\n\n" + text
            if self.problems:  # candidates before the loaded one
                text += "\n\nNot used, tried first:\n" + "\n".join(p.markdown() for p in self.problems)
            return text
        lines = ["**No model is loaded**, so Segment cannot run yet. Tried, in order:", "",
                 *(p.markdown() for p in self.problems), "",
                 "Put the file in place and press Segment again (no restart needed), or start "
                 "the app with `--weights PATH_OR_NAME` (`SEGFPN_WEIGHTS`). "
                 "`weights/README.md` lists every known checkpoint."]
        return "\n".join(lines)


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
    dirs: the request folders holding this session's downloads, removed with the run: by
    :func:`release_dirs`, or when the run is dropped in any other way (a session evicted by
    Gradio's ``state_session_capacity`` gets no delete callback).
    """

    name: str
    image: np.ndarray
    original_size: tuple[int, int]
    result: Result
    features: dict[str, np.ndarray]
    timings: dict[str, float]
    device: str
    dirs: list[Path] = field(default_factory=list)

    def __post_init__(self):
        weakref.finalize(self, _remove_dirs, self.dirs)

    @property
    def downscaled(self) -> bool:
        return tuple(self.image.shape[:2]) != tuple(self.original_size)


def prepare_image(source, *, max_side: int = MAX_SIDE) -> tuple[np.ndarray, tuple[int, int]]:
    """``(rgb, original (H, W))``: ``source`` read by :func:`segfpn.read_image` (raises
    :class:`~segfpn.ImageError` with a clear message) and, when its longest side is above
    ``max_side``, downscaled to it with area averaging."""
    rgb = read_image(source)
    h, w = rgb.shape[:2]
    scale = max_side / max(h, w)
    if scale < 1.0:
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
        rgb = cv2.resize(rgb, size, interpolation=cv2.INTER_AREA)
    return rgb, (h, w)


def _half(feature) -> np.ndarray:
    """float16 copy of a feature map (a torch tensor or an array), clipped to float16's range."""
    if isinstance(feature, torch.Tensor):
        # In torch: one multi-threaded pass, ~5x faster than numpy's clip + astype at 800x800.
        return feature.clamp(-_FP16_MAX, _FP16_MAX).to(torch.float16).contiguous().numpy()
    return np.clip(np.asarray(feature), -_FP16_MAX, _FP16_MAX).astype(np.float16)


def run_model(predictor, source, *, name: str = "image", max_side: int = MAX_SIDE) -> Run:
    """Read ``source``, run ``predictor`` on it once (features included) and keep everything."""
    start = time.perf_counter()
    image, original_size = prepare_image(source, max_side=max_side)
    read_s = time.perf_counter() - start
    result = predictor.predict(image, return_features=True)
    features = {k: _half(v) for k, v in (result.features or {}).items()}
    result.features = None
    timings = dict(result.timings)
    timings["preprocess"] = timings.get("preprocess", 0.0) + read_s
    return Run(name=name, image=image, original_size=original_size, result=result,
               features=features, timings=timings, device=str(result.device))


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
# Downloads: a fresh temporary folder per request


_ROOT: Path | None = None
_ROOT_LOCK = threading.Lock()


def _downloads_root() -> Path:
    global _ROOT
    with _ROOT_LOCK:
        if _ROOT is None or not _ROOT.is_dir():
            _ROOT = Path(tempfile.mkdtemp(prefix="segfpn-app-"))
            atexit.register(shutil.rmtree, _ROOT, True)
        return _ROOT


def new_request_dir(run: Run) -> Path:
    """A new empty temporary folder for this request's files. The run's older folders are
    removed (their files were already handed out), so a session holds one folder at a time."""
    release_dirs(run)
    directory = Path(tempfile.mkdtemp(prefix="request-", dir=_downloads_root()))
    run.dirs.append(directory)
    return directory


def release_dirs(run) -> None:
    """Remove every temporary folder of ``run`` (also used when a session's state expires)."""
    if isinstance(run, Run):
        _remove_dirs(run.dirs)


def _remove_dirs(dirs: list[Path]) -> None:
    while dirs:
        shutil.rmtree(dirs.pop(), ignore_errors=True)


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
    """Write the four downloads into ``directory`` (a :func:`new_request_dir`).

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
