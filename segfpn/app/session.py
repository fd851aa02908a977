"""One session's run and what the app keeps of it: the image as segmented, the result and the
pyramid features (so that every view redraws without running the model), within a budget of
bytes across all sessions. No gradio here.

* :func:`prepare_image` and :func:`run_model`: an upload in (reduced when it is larger than the
  model needs), a :class:`Run` out.
* :class:`RunStore`: the sessions' last runs within a budget of bytes (:func:`kept_bytes`), the
  least recently used dropped first; :class:`IdleTrim` hands freed memory back to the OS once
  the app is idle.
"""

from __future__ import annotations

import contextlib
import logging
import secrets
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import torch

from segfpn.explain import DetectionExplanation, Inspection
from segfpn.imageio import ImageError, decode_image
from segfpn.model.optimize import return_freed_memory
from segfpn.structures import Result

logger = logging.getLogger(__name__)

#: Images whose longest side is above this are reduced before the model sees them; the model
#: works at 800-1333 px, so nothing is lost but memory and time. Results refer to the reduced
#: image.
MAX_SIDE = 2000

_FP16_MAX = float(np.finfo(np.float16).max)

#: The kinds of model the app serves (:func:`detector_kind`).
PANOPTIC_FPN, MASK_RCNN, FASTER_RCNN, RETINANET = "Panoptic FPN", "Mask R-CNN", "Faster R-CNN", "RetinaNet"
#: The kinds that predict boxes only: no masks, so no semantic or panoptic segmentation either.
BOX_ONLY = (FASTER_RCNN, RETINANET)


def detector_kind(config) -> str:
    """What a :class:`~segfpn.config.ModelConfig` builds: :data:`RETINANET` (one stage, no RoIs),
    :data:`FASTER_RCNN` (two stages, no mask head), :data:`PANOPTIC_FPN` or :data:`MASK_RCNN`."""
    if config.detector == "retinanet":
        return RETINANET
    if config.mask_head is None:
        return FASTER_RCNN
    return PANOPTIC_FPN if config.semantic_head is not None else MASK_RCNN


def model_kind(predictor) -> str:
    """:func:`detector_kind` of ``predictor``'s model; for an object without a config (a stand-in
    in tests), Panoptic FPN or Mask R-CNN by its ``has_semantic_head``."""
    config = getattr(predictor, "config", None)
    if config is not None:
        return detector_kind(config)
    return PANOPTIC_FPN if getattr(predictor, "has_semantic_head", False) else MASK_RCNN


@dataclass
class Run:
    """A session's last run.

    image: uint8 [H, W, 3], the image as segmented (after any downscale); every array of
    ``result`` refers to it. original_size: (H, W) of the upload. features: level name ->
    float16 [C, h, w] (half of float32's memory; the inspector normalises anyway): c2-c5 and
    p2-p6, or p3-p7 for a RetinaNet.
    timings: seconds per stage, "drawing" included once the views are drawn.
    inspection: what the RoI heads need to explain a detection or run again with another level
    rule (:class:`~segfpn.explain.Inspection`: the pyramid, the proposals); None for a model
    without RoIs (RetinaNet). explanations: the detections explained so far, by index.
    model_name: the checkpoint that made the run, as the page names it; model_kind: its
    :func:`detector_kind`; model_key: the app's key of that model (None: the app's default),
    predictor: a weak reference to the predictor (the run never keeps a model in memory: once
    the app drops it, explaining the run asks for Segment again).
    Kept between requests by a :class:`RunStore`.
    """

    name: str
    image: np.ndarray
    original_size: tuple[int, int]
    result: Result
    features: dict[str, np.ndarray]
    timings: dict[str, float]
    device: str
    inspection: Inspection | None = None
    explanations: dict[int, DetectionExplanation] = field(default_factory=dict)
    model_name: str = ""
    model_kind: str = MASK_RCNN
    model_key: str | None = None
    predictor: weakref.ref | None = field(default=None, repr=False)

    @property
    def downscaled(self) -> bool:
        return tuple(self.image.shape[:2]) != tuple(self.original_size)

    @property
    def box_only(self) -> bool:
        """True for a model without masks (Faster R-CNN, RetinaNet)."""
        return self.model_kind in BOX_ONLY

    @property
    def anchor_levels(self) -> bool:
        """True when each detection's level is the anchor level that fired (RetinaNet), not an RoI's."""
        return self.model_kind == RETINANET


def _size_text(size: tuple[int, int]) -> str:
    """(H, W) as "WxH", the way :mod:`segfpn.imageio` writes sizes."""
    return f"{size[1]}x{size[0]}"


def prepare_image(source, *, max_side: int = MAX_SIDE) -> tuple[np.ndarray, tuple[int, int]]:
    """``(rgb, original (H, W))``: ``source`` decoded by :func:`segfpn.imageio.decode_image`
    (an :class:`~segfpn.ImageError` with a clear message for anything else) and, when its longest
    side is above ``max_side``, reduced to it (area averaging; a JPEG is decoded at a reduced
    scale directly, so a 24-megapixel upload never exists at full size)."""
    decoded = decode_image(source, max_side=max_side)
    return decoded.rgb, tuple(decoded.original_size)


def _half(feature) -> np.ndarray:
    """float16 copy of a feature map (a torch tensor or an array), clipped to float16's range."""
    if isinstance(feature, torch.Tensor):
        # In torch: one multi-threaded pass, ~5x faster than numpy's clip + astype at 800x800.
        return feature.clamp(-_FP16_MAX, _FP16_MAX).to(torch.float16).contiguous().numpy()
    return np.clip(np.asarray(feature), -_FP16_MAX, _FP16_MAX).astype(np.float16)


def run_model(predictor, source, *, name: str = "image", max_side: int = MAX_SIDE, model_name: str = "",
              model_key: str | None = None) -> Run:
    """Read ``source``, run ``predictor`` on it once (features included) and keep everything;
    ``model_name`` and ``model_key`` say which model made the run (see :class:`Run`).

    An :class:`~segfpn.ImageError` from the predictor about a downscaled image names the
    size uploaded too: the person never saw the downscaled one."""
    start = time.perf_counter()
    image, original_size = prepare_image(source, max_side=max_side)
    read_s = time.perf_counter() - start
    try:
        if has_roi_heads(predictor):
            inspection = predictor.inspect(image, return_features=True)
            result = inspection.result
        else:
            inspection, result = None, predictor.predict(image, return_features=True)
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
               features=features, timings=timings, device=str(result.device), inspection=inspection,
               model_name=model_name, model_kind=model_kind(predictor), model_key=model_key,
               predictor=_weak(predictor))


def _weak(obj) -> weakref.ref | None:
    try:
        return weakref.ref(obj)
    except TypeError:  # not weakly referenceable: the run cannot tell whether it is still loaded
        return None


def has_roi_heads(predictor) -> bool:
    """Whether ``predictor`` pools RoIs (so its detections can be explained level by level):
    a segfpn Predictor of a two-stage model; False for a RetinaNet or another kind of object."""
    config = getattr(predictor, "config", None)
    return getattr(config, "detector", None) == "rcnn" and hasattr(predictor, "inspect")


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
            logger.info("dropped the run of %s (%.1f MB): the runs kept stay within %.0f MB",
                        run.name, size / 2**20, self.budget_bytes / 2**20)
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
