"""segfpn's web app: upload a photo, press Segment, look at the result one view per tab.

    python app.py                                # http://127.0.0.1:7860
    python app.py --host 0.0.0.0 --port 8080 --weights weights/model_final_cafdb1.pkl

Flags and their environment variables: --host / SEGFPN_HOST (default 127.0.0.1, or
GRADIO_SERVER_NAME as set on Hugging Face Spaces), --port / SEGFPN_PORT (default 7860, or
GRADIO_SERVER_PORT), --weights / SEGFPN_WEIGHTS (a file or a known name, several separated by
commas, tried in order; default: the catalogue's default checkpoint), --device / SEGFPN_DEVICE
(default CUDA when present), --queue-size / SEGFPN_QUEUE_SIZE (requests that may wait; beyond
it a request is answered "busy, try again" at once), --session-memory-mb /
SEGFPN_SESSION_MEMORY_MB (memory for the last runs of all sessions together, default 1024),
--allow-reload / SEGFPN_ALLOW_RELOAD=1 (offer "Reload weights" to every visitor; default off).
SEGFPN_OFFLINE=1 never downloads.

Robustness (docs/robustness.md, tests/robustness/): a bad upload gets a message and the server
goes on; uploads are read from Gradio's temp folder or memory only; every event goes through
the queue (no direct /run or /api call), the model runs for one request at a time; the server
answers at once while a missing checkpoint downloads in the background; the model is loaded
once, and "Reload weights" (when allowed) reads the checkpoint again, keeping the loaded model
when that fails; SIGTERM stops the app as Ctrl+C does, removing its temporary files. The Model
list switches a session to another checkpoint (loaded in the queue like Segment, downloaded in
the background when missing); at most two models stay in memory for all sessions
(:mod:`segfpn.app.models`), and a choice that fails leaves the session's model in place.

This file is the UI only: the layout, the events and the queue. The model source, the sessions'
runs, the views and the download files live in :mod:`segfpn.app` (drawing itself in
:mod:`segfpn.viz`, the files in :mod:`segfpn.outputs`).
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import logging
import os
import signal
import threading
import time
from pathlib import Path

import gradio as gr
import numpy as np
import pandas as pd
from gradio import processing_utils
from gradio.components.annotated_image import AnnotatedImageData, Annotation
from gradio.data_classes import FileData
from gradio.utils import get_upload_folder
from PIL import Image

from segfpn import video as videos
from segfpn.app import files, session, views
from segfpn.app.models import ModelChoiceFailed, ModelPool, SessionModel
from segfpn.app.session import Run, RunStore
from segfpn.app.source import ModelSource, ModelUnavailable, ReloadFailed
from segfpn.app.views import ACTIVATION_MODE_CHOICES, INSPECTOR_LEVELS, SEGMENT_COLUMNS
from segfpn.atomic_files import write_png
from segfpn.checkpoints import catalogue, resolve
from segfpn.checkpoints.download import install_cleanup_handlers
from segfpn.imageio import ImageError
from segfpn.outputs import draw_overlay

logger = logging.getLogger("segfpn.app")

HERE = Path(__file__).resolve().parent
EXAMPLES_DIR = HERE / "examples" / "images"
#: The photos shown first in the gallery of real photos; any other photo in the folder follows.
EXAMPLE_ORDER = ("cyclists_33823288584.jpg", "dogs_people_16004479832.jpg", "street_wide_17790319373.jpg",
                 "voc2007_000001_portrait.jpg", "astronaut.png", "coffee.png", "chelsea_cat.png")
#: The examples of the bundled model's world: synthetic shapes (their ground truth in
#: examples/images/synthetic_shapes.instances.json).
SYNTHETIC_EXAMPLES = "synthetic_shapes_*.png"
SYNTHETIC_GROUND_TRUTH = EXAMPLES_DIR / "synthetic_shapes.instances.json"
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif"}

DEFAULT_HOST, DEFAULT_PORT = "127.0.0.1", 7860
#: One model, one request at a time; at most this many requests wait in the queue.
QUEUE_SIZE = 16
#: Largest upload accepted (the server refuses bigger ones before reading them).
MAX_FILE_SIZE = "25mb"
#: Memory for the runs kept across all sessions (image, detections, masks, float16 pyramid
#: features; :func:`segfpn.app.session.kept_bytes`): beyond it the least recently used session's
#: run is dropped, and that session is asked to press Segment again.
SESSION_MEMORY_MB = 1024
#: A session's run is also dropped an hour after its last use.
SESSION_TTL_S = 3600
#: Gradio's per-session records (the run's key, the page's component states) kept at most.
MAX_SESSIONS = 1000
RUN_DROPPED = ("This run was dropped to free memory (the server keeps the last runs of all "
               "sessions within a memory budget); press Segment again.")
#: Checkpoints kept in memory at most, for all sessions together (the model picker's choices).
MODELS_IN_MEMORY = 2
#: Seconds between refreshes of the model status while a checkpoint downloads or loads.
STATUS_REFRESH_S = 3.0
#: Frames a video may have segmented in the app (with "every n-th frame"); longer videos are for
#: `segfpn predict clip.mp4`, which resumes where it stopped.
MAX_VIDEO_FRAMES = 900
#: Seconds between webcam frames sent to the model (frames arriving while it runs are dropped).
WEBCAM_EVERY_S = 0.25
#: Views larger than this many pixels go to the browser as JPEGs of this quality.
JPEG_VIEW_PIXELS = 512 * 512
VIEW_JPEG_QUALITY = 92
#: Height of the result views in CSS px: portrait photos fit on a screen.
VIEW_HEIGHT = 560

TITLE = "segfpn · FPN detectors, level by level"
INTRO = ("Upload a photo (or pick an example) and press **Segment**: instance masks, semantic and "
         "panoptic segmentation, the feature pyramid the heads read from, and which pyramid level "
         "each detection came from. Pick another model (Panoptic FPN, Mask R-CNN, Faster R-CNN, "
         "RetinaNet) in the list beside the status. Every control redraws from the last run; only "
         "Segment runs the model.")
THEME = gr.themes.Soft(primary_hue="indigo", secondary_hue="sky")
CSS = """
.status-warning { border-left: 4px solid #d97706; padding: 0.5em 1em; background: #fffbeb; color: #1f2937; }
.status-ok { opacity: 0.85; }
.run-info { min-height: 3em; }
#reload-button { align-self: flex-start; }
@media (max-width: 640px) { #status-row { flex-direction: column; } }
.legend-swatch { display: inline-block; width: 0.9em; height: 0.9em; border-radius: 2px; margin: 0 0.3em 0 0.8em;
                 vertical-align: middle; }
"""


@contextlib.contextmanager
def _without_pyi_stub():
    """gradio writes a ``.pyi`` stub (a copy of the defining module) beside any module that
    subclasses a component, for editors' hints on new events. The two subclasses below add no
    event, so the stub is skipped rather than left as a stale copy of this file."""
    from gradio import component_meta

    original = getattr(component_meta, "create_or_modify_pyi", None)
    if original is not None:
        component_meta.create_or_modify_pyi = lambda *args, **kwargs: None
    try:
        yield
    finally:
        if original is not None:
            component_meta.create_or_modify_pyi = original


with _without_pyi_stub():

    class ImageUpload(gr.Image):
        """``gr.Image`` whose upload reaches the event undecoded, as a file path (or bytes for a
        pasted image): :func:`segfpn.read_image` decodes it, so a damaged or non-image file gets
        its clear message as a ``gr.Error`` instead of failing inside gradio."""

        is_template = True  # rendered by the frontend as a plain gr.Image

        def preprocess(self, payload):
            if payload is None:
                return None
            if payload.path:
                return payload.path
            if payload.url and payload.url.startswith("data:"):
                return base64.b64decode(payload.url.split(",", 1)[-1])
            raise gr.Error("The upload did not arrive; please try again.")


    class ViewImage(gr.Image):
        """``gr.Image`` for the views: an array value goes to Gradio's cache whole
        (:func:`_image_to_gradio_cache`), never rewritten in place while it is being served; a
        large one as a JPEG (quality :data:`VIEW_JPEG_QUALITY`: 15 ms for 1800x1200 where a PNG
        takes 150-300 ms; the views are for looking, the downloads are the exact PNGs)."""

        is_template = True  # rendered by the frontend as a plain gr.Image

        def postprocess(self, value):
            if isinstance(value, np.ndarray):
                value = _image_to_gradio_cache(value, jpeg=value.shape[0] * value.shape[1] > JPEG_VIEW_PIXELS)
            return super().postprocess(value)


    class SegmentsImage(gr.AnnotatedImage):
        """``gr.AnnotatedImage`` for many segments: each mask goes to the browser as a two-colour
        palette PNG (transparent, or the segment's colour at :attr:`MASK_OPACITY`), which is about
        four times faster to make than gradio's float RGBA masks. Same frontend, same events."""

        is_template = True  # rendered by the frontend as a plain gr.AnnotatedImage
        MASK_OPACITY = 0.6

        def postprocess(self, value):
            """``value``: ``(base uint8 [H, W, 3], [(mask bool [H, W], label), ...])`` or None."""
            if value is None:
                return None
            base, annotations = value
            base_path = _image_to_gradio_cache(base)
            colors = self.color_map or {}
            alpha = round(255 * self.MASK_OPACITY)
            sections = []
            for mask, label in annotations:
                mask = np.asarray(mask) > 0
                rgb = colors.get(label, "#ff0000").lstrip("#")
                image = Image.fromarray(mask.astype(np.uint8), mode="L").convert("P")
                image.putpalette([0, 0, 0, *(int(rgb[i:i + 2], 16) for i in (0, 2, 4))])
                image.info["transparency"] = bytes([0, alpha])
                path = _image_to_gradio_cache(image, name="mask")
                sections.append(Annotation(image=FileData(path=str(path)), label=label))
            return AnnotatedImageData(image=FileData(path=str(base_path)), annotations=sections)


def example_images(folder: Path = EXAMPLES_DIR) -> tuple[list[str], list[str]]:
    """(real photos, :data:`EXAMPLE_ORDER` first; synthetic examples) in ``folder``."""
    if not folder.is_dir():
        return [], []
    files = [p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES]
    synthetic = sorted(str(p) for p in files if p.match(SYNTHETIC_EXAMPLES))
    rank = {name: i for i, name in enumerate(EXAMPLE_ORDER)}
    photos = [str(p) for p in sorted(files, key=lambda p: (rank.get(p.name, len(rank)), p.name))
              if str(p) not in synthetic]
    return photos, synthetic


@contextlib.contextmanager
def user_errors(what: str):
    """Turn any failure into a ``gr.Error`` with its message: the server keeps serving."""
    try:
        yield
    except gr.Error:
        raise
    except ImageError as e:
        logger.info("%s: unreadable input: %s", what, e)
        raise gr.Error(str(e), title="Cannot read this image", print_exception=False) from e
    except videos.VideoError as e:
        logger.info("%s: unreadable video: %s", what, e)
        raise gr.Error(str(e), title="Cannot read this video", print_exception=False) from e
    except ModelUnavailable as e:
        logger.warning("%s: no model: %s", what, e)
        raise gr.Error(f"No model is loaded. {e}", title="No model", duration=None,
                       print_exception=False) from e
    except ReloadFailed as e:
        logger.warning("%s failed: %s", what, e)
        raise gr.Error(f"The weights were not reloaded: {e}", title="Reload failed",
                       duration=None, print_exception=False) from e
    except ModelChoiceFailed as e:
        logger.warning("%s: the chosen model is not available: %s", what, e)
        raise gr.Error(str(e), title="Model not available", duration=None, print_exception=False) from e
    except Exception as e:
        logger.exception("%s failed", what)
        raise gr.Error(f"{what} failed: {e}") from e


class Events:
    """The event functions: each one reads, runs or draws through :mod:`segfpn.app`.

    A session's ``gr.State`` holds the key of its last run in :attr:`runs` (a
    :class:`~segfpn.app.session.RunStore` with a budget of bytes across sessions), not the run, and
    its model (a :class:`~segfpn.app.models.SessionModel`: which one, loaded by :attr:`models`)."""

    def __init__(self, source: ModelSource, *, runs: RunStore, max_side: int = session.MAX_SIDE,
                 models: ModelPool | None = None):
        self.source = source
        self.models = models if models is not None else ModelPool(source, capacity=MODELS_IN_MEMORY)
        self.runs = runs
        self.max_side = max_side
        self.trim = session.IdleTrim()

    def run_of(self, key) -> Run | None:
        """The session's last run; None (after a notice) when it has none yet. A run dropped
        to free memory is a ``gr.Error`` saying so: the person has to press Segment again."""
        run = self.runs.get(key)
        if run is not None:
            return run
        if self.runs.was_dropped(key):
            raise gr.Error(RUN_DROPPED, title="Run dropped", print_exception=False)
        gr.Warning("Press Segment first: the views are drawn from the last run of this session.")
        return None

    def forget(self, key) -> None:
        """A session's state expired: its run goes."""
        self.runs.discard(key)
        self.trim.soon()

    def segment(self, image, score, opacity, show_boxes, show_labels, previous, model):
        """Run the session's model once; keep the run for the session; return the instance
        overlay, the downloads and the run's summary."""
        if image is None:
            raise gr.Error("Upload an image or pick an example first.")
        model = model or SessionModel()
        with user_errors("Segmentation"), self.trim.running():
            predictor, model_name = self.models.predictor(model)
            name = Path(image).name if isinstance(image, str) else "pasted image"
            run = session.run_model(predictor, image, name=name, max_side=self.max_side,
                                    model_name=model_name or "", model_key=model.current)
            start = time.perf_counter()
            overlay = views.draw_instance_view(run, score_threshold=score, alpha=opacity,
                                                   show_boxes=show_boxes, show_labels=show_labels)
            with files.request_dir() as folder:
                written = files.write_downloads(run, overlay, folder)
                paths = [_to_gradio_cache(p) for p in (written.overlay, written.instances, written.panoptic_png,
                                                      written.panoptic_json)]
            run.timings["drawing"] = time.perf_counter() - start
            self.runs.discard(previous)
            key = self.runs.put(run)
        return (key, overlay, *paths, views.run_summary(run, views_drawn=False))

    def model_status(self, model):
        """The session's model status (what is loaded, or downloading), the timer that refreshes
        it on the page while something is under way, and the session's model: switched to the
        model it chose once that has arrived, or left as it was (with a warning) when it failed."""
        model, message, ok = self.models.settle(model or SessionModel())
        if message:
            (gr.Info if ok else gr.Warning)(message)
        return (*self._status(model, message if not ok else None), model)

    def _status(self, model: SessionModel, problem: str | None = None):
        status = self.models.describe(model)
        if problem:
            status = f"**The model was not changed.** {problem}\n\n{status}"
        ok = self.models.ready(model) and problem is None
        return (gr.Markdown(status, elem_classes=["status-ok" if ok else "status-warning"]),
                gr.Timer(active=self.models.busy(model)))

    def model_picker(self, model):
        """The picker, listing what is there now (files put in the weights folder since), showing
        the session's model."""
        model = model or SessionModel()
        return gr.Dropdown(choices=[(o.label, o.value) for o in self.models.options()],
                           value=self.models.value_of(model))

    def choose_model(self, value, model):
        """The session picked ``value``: load it (a checkpoint on disk), or start downloading it
        (the status row shows its progress; the session switches once it has arrived). A failure
        leaves the session's model in place and says why."""
        model = model or SessionModel()
        try:
            with self.trim.running():
                chosen = self.models.choose(value, model)
        except ModelChoiceFailed as e:
            logger.warning("the chosen model %s is not available: %s", value, e)
            message = f"{e} {self.models.label(model.current)} stays in use."
            gr.Warning(message, title="Model not changed")
            return (model, *self._status(model, message), gr.Dropdown(value=self.models.value_of(model)))
        if chosen.pending is None and chosen != model:
            gr.Info(f"Now using {self.models.label(chosen.current)}: press Segment to run it.")
        return (chosen, *self._status(chosen), gr.Dropdown(value=self.models.value_of(chosen)))

    def reload_model(self):
        """Read the checkpoint again (a file replaced while the app runs); on failure the page
        says why and the loaded model stays in use."""
        with user_errors("Reloading the weights"):
            self.source.reload()
        gr.Info("Weights reloaded.")
        return gr.Markdown(self.source.describe(), elem_classes=["status-ok"])

    def draw_views(self, key, score, level, mode, channel, roi_source):
        """After Segment: every other tab, drawn from the run, with a notice on each view its
        model leaves empty; the inspector offers the run's own levels."""
        run = self.run_of(key)
        if run is None:
            return [gr.skip()] * 20
        with user_errors("Drawing"):
            start = time.perf_counter()
            semantic = views.draw_semantic_view(run)
            legend = views.semantic_legend(run)
            panoptic = self._panoptic(run)
            rows = views.segment_rows(run)
            level = views.nearest_level(run, level)
            activation, info, channel = views.activation_view(run, level, mode, channel)
            levels, levels_text = views.levels_view(run, score_threshold=score, source=roi_source)
            detections = views.detection_rows(run, score_threshold=score)
            summary = views.instance_summary(run, score_threshold=score, classes=None)
            notes = views.notices(run)
            run.timings["drawing"] = run.timings.get("drawing", 0.0) + time.perf_counter() - start
        run_levels = views.run_levels(run)
        return (gr.Dropdown(choices=views.class_choices(run), value=[]), summary, semantic, legend,
                panoptic, rows, "", gr.Radio(choices=run_levels, value=level, info=views.levels_info(run_levels)),
                activation, info, self._channel_slider(run, level, channel),
                gr.Radio(interactive=not run.anchor_levels), levels, levels_text, detections,
                notes["semantic"], notes["panoptic"], notes["downloads"], notes["roi"], views.run_summary(run))

    def caption(self, key, score):
        """The Instances view's caption for the new run, at once (the other views take longer)."""
        run = self.runs.get(key)
        return views.instance_summary(run, score_threshold=score, classes=None) if run is not None else gr.skip()

    def redraw_instances(self, key, score, opacity, classes, show_boxes, show_labels):
        """The instance overlay again, with new display settings (the model does not run)."""
        run = self.run_of(key)
        if run is None:
            return gr.skip(), gr.skip()
        with user_errors("Drawing"):
            overlay = views.draw_instance_view(run, score_threshold=score, alpha=opacity, classes=classes,
                                               show_boxes=show_boxes, show_labels=show_labels)
            summary = views.instance_summary(run, score_threshold=score, classes=classes)
        return overlay, summary

    def overlay_download(self, key, score, opacity, classes, show_boxes, show_labels):
        """The overlay PNG of the Downloads tab, for the Instances view's settings: drawn beside
        the view's own redraw (a PNG takes longer than the view's JPEG; the view does not wait)."""
        run = self.run_of(key)
        if run is None:
            return gr.skip()
        with user_errors("Drawing"):
            overlay = views.draw_instance_view(run, score_threshold=score, alpha=opacity, classes=classes,
                                               show_boxes=show_boxes, show_labels=show_labels)
            with files.request_dir() as folder:
                return _to_gradio_cache(files.write_overlay(run, overlay, folder))

    def inspect(self, key, level, mode, channel):
        """One pyramid level of the last run, summarised by ``mode``, over the image."""
        run = self.run_of(key)
        if run is None:
            return gr.skip(), gr.skip(), gr.skip()
        with user_errors("Inspector"):
            activation, info, channel = views.activation_view(run, level, mode, channel)
        return activation, info, self._channel_slider(run, level, channel)

    def roi_levels(self, key, score, classes, roi_source):
        """The detections' boxes coloured by the pyramid level their RoI was pooled from, and the
        detection table beside them."""
        run = self.run_of(key)
        if run is None:
            return gr.skip(), gr.skip(), gr.skip()
        with user_errors("Drawing"):
            drawing, text = views.levels_view(run, score_threshold=score, classes=classes, source=roi_source)
            return drawing, text, views.detection_rows(run, score_threshold=score, classes=classes)

    def pick_from_table(self, key, grid_mode, evt: gr.SelectData):
        """A row of the detection table selected: that detection, level by level."""
        row = evt.row_value
        return self.explain(key, int(row[0]) if row else None, grid_mode)

    def pick_from_image(self, key, score, classes, grid_mode, evt: gr.SelectData):
        """A click on the levels view: the detection under it, level by level."""
        run = self.run_of(key)
        if run is None:
            return [gr.skip()] * 6
        x, y = evt.index
        index = views.detection_at(run, x, y, score_threshold=score, classes=classes)
        if index is None:
            gr.Info("No detection there: click inside a box.")
            return [gr.skip()] * 6
        return self.explain(key, index, grid_mode)

    def explain(self, key, index, grid_mode):
        """Detection ``index`` of the session's run, level by level: the rule, the RoIAlign grids
        of its levels and the neighbours, its activation on every level, its 28x28 mask."""
        run = self.run_of(key)
        if run is None or index is None:
            return [gr.skip()] * 6
        if run.inspection is None:  # RetinaNet: the notice instead of an explanation
            return index, views.notices(run)["roi"], None, None, None, pd.DataFrame()
        index = int(index)
        if not 0 <= index < len(run.result.instances):
            raise gr.Error(f"This run has no detection #{index}: it has {len(run.result.instances)}.",
                           title="No such detection", print_exception=False)
        with user_errors("Explaining"):
            explanation = run.explanations.get(index)
            if explanation is None:
                explanation = self._predictor_of(run).explain(run.inspection, index)
                run.explanations[index] = explanation
            text, box_grids, mask_grids, mask_probs, bars = views.explanation_view(explanation, grid_mode=grid_mode)
        return index, text, box_grids, mask_grids, mask_probs, pd.DataFrame(bars)

    def what_if(self, key, force_level, canonical_level, canonical_size, score=0.0):
        """The RoI heads again on the kept pyramid, every RoI on one level or with another k0 / s0,
        against the original run: the diff drawn, counted and listed."""
        run = self.run_of(key)
        if run is None:
            return gr.skip(), gr.skip(), gr.skip()
        if run.inspection is None:  # RetinaNet: the notice instead of a diff
            return None, views.notices(run)["roi"], []
        level = None if force_level in (None, "", "rule") else int(str(force_level).lstrip("p"))
        with user_errors("What if"), self.trim.running():
            rule = {"level": level} if level is not None else {"canonical_level": int(canonical_level),
                                                                 "canonical_size": float(canonical_size)}
            whatif = self._predictor_of(run).what_if(run.inspection, **rule)
            return views.what_if_view(run, whatif, score_threshold=score)

    def scale_sweep(self, key, progress=gr.Progress()):
        """The image at several input sizes: how its objects move between levels as it grows."""
        run = self.run_of(key)
        if run is None:
            return [gr.skip()] * 5
        with user_errors("Scale sweep"), self.trim.running():
            predictor = self._predictor_of(run)
            sweep = predictor.scale_sweep(run.image, progress=lambda done, total: progress(
                done / total, desc=f"{done} of {total} input sizes"))
            objects, shares, counts, text = views.sweep_tables(sweep)
        objects = pd.DataFrame(objects)
        return objects, objects, pd.DataFrame(shares), pd.DataFrame(counts), text

    def level_metrics(self, key, ground_truth):
        """Recall and precision per level against the image's ground truth (an uploaded COCO
        instances JSON, or the bundled synthetic examples' own)."""
        run = self.run_of(key)
        if run is None:
            return gr.skip(), gr.skip()
        if ground_truth is None:
            if not (SYNTHETIC_GROUND_TRUTH.is_file() and Path(run.name).match(SYNTHETIC_EXAMPLES)):
                raise gr.Error("Upload the COCO instances JSON of this image (the synthetic examples bring their "
                               "own).", title="No ground truth", print_exception=False)
            ground_truth = SYNTHETIC_GROUND_TRUTH
        with user_errors("Per-level metrics"):
            try:
                metrics = self._predictor_of(run).level_metrics(run.result, str(ground_truth), image=run.name)
            except (KeyError, ValueError) as e:
                raise gr.Error(str(e), title="Cannot score this image", print_exception=False) from e
            return views.level_metric_rows(metrics, anchor_levels=run.anchor_levels)

    def _predictor_of(self, run: Run):
        """The predictor that made ``run``, while the app still serves it: one dropped to free
        memory (another model chosen), reloaded, or replaced by a download that arrived makes
        the person press Segment again."""
        if run.predictor is not None:
            predictor = run.predictor()
        else:  # a predictor without weak references: the run's model if it is still in memory
            predictor = self.models.loaded_predictor(run.model_key)
        name = Path(run.model_name).name or "its model"
        if not self.models.in_use(predictor):
            raise gr.Error(f"The model of this run ({name}) is no longer loaded: at most {self.models.capacity} "
                           "models are kept in memory, and a reload or a download replaces one. Press Segment "
                           "again.", title="Model changed", print_exception=False)
        if run.inspection is not None and run.inspection.model() is not getattr(predictor, "model", None):
            raise gr.Error(f"The model changed since this run ({name} was reloaded): press Segment again.",
                           title="Model changed", print_exception=False)
        return predictor

    def select_segment(self, key, evt: gr.SelectData):
        """A row of the segment table selected: single out its segment in the panoptic view."""
        run = self.run_of(key)
        if run is None or run.result.panoptic is None:
            return gr.skip(), gr.skip()
        with user_errors("Drawing"):
            row = evt.row_value or views.segment_rows(run)[evt.index[0]]
            segment_id = int(row[0])
            return self._panoptic(run, highlight=segment_id), views.segment_details(run, segment_id)

    def show_all_segments(self, key):
        run = self.run_of(key)
        if run is None:
            return gr.skip(), gr.skip()
        with user_errors("Drawing"):
            return self._panoptic(run), ""

    def export(self, key, formats, score, classes):
        """The last run in the chosen formats, for the detections the Instances view shows."""
        run = self.run_of(key)
        if run is None:
            return gr.skip()
        if not formats:
            raise gr.Error("Choose at least one format.", print_exception=False)
        with user_errors("Export"):
            try:
                with files.request_dir() as folder:
                    written, skipped = files.write_exports(run, folder, formats=formats, score_threshold=score,
                                                           classes=classes)
                    written = [_to_gradio_cache(p) for p in written]
            except ValueError as e:  # a class the model lacks
                raise gr.Error(str(e), title="Cannot export", print_exception=False) from e
        if skipped:  # a box-only model: what boxes cannot make
            gr.Warning(f"{run.model_kind} predicts boxes only; not exported: {'; '.join(skipped)}",
                       title="Boxes only")
        return written

    def segment_video(self, video, every, overlay_kind, model, progress=gr.Progress()):
        """Segment every ``every``-th frame of an uploaded video: the overlaid MP4 (H.264, which
        browsers play), the per-frame COCO results JSON and a summary."""
        if video is None:
            raise gr.Error("Upload a video first.", print_exception=False)
        every = int(every)
        with user_errors("Video"), self.trim.running():
            info = videos.probe_video(video)
            expected = info.expected_frames()
            if expected is not None and -(-expected // every) > MAX_VIDEO_FRAMES:
                raise gr.Error(f"This video has {expected} frames: every {every}th is {-(-expected // every)}, more "
                               f"than the {MAX_VIDEO_FRAMES} the app segments. Segment fewer (every "
                               f"{-(-expected // MAX_VIDEO_FRAMES)}th frame or more), or run `segfpn predict` on it.",
                               title="Video too long", print_exception=False)
            predictor, _ = self.models.predictor(model or SessionModel())

            def report(p: videos.VideoProgress) -> None:
                left = f", about {p.seconds_left:.0f} s left" if p.seconds_left is not None else ""
                total = p.frames_total or "?"
                progress(p.frames_done / p.frames_total if p.frames_total else None,
                         desc=f"{p.frames_done} of {total} frames{left}")

            with files.request_dir() as folder:
                result = videos.predict_video(predictor, video, folder, every=every, overlay=overlay_kind,
                                              progress=report)
                clip, results = _to_gradio_cache(result.files.video), _to_gradio_cache(result.files.results)
        summary = (f"**{Path(video).name}** · {info.width} × {info.height} px · {result.frames_done} frames segmented "
                   f"(every {every}th)" + (f" · stopped early: {result.problem}" if result.problem else ""))
        return clip, results, summary

    def webcam_frame(self, frame, overlay_kind, model):
        """One webcam frame: segmented by the session's model, drawn, with the time it took."""
        if frame is None:
            return gr.skip(), gr.skip()
        with user_errors("Webcam"):
            predictor, _ = self.models.predictor(model or SessionModel())
            start = time.perf_counter()
            result = predictor.predict(frame)
            seconds = time.perf_counter() - start
            drawn = draw_overlay(frame, result, overlay=overlay_kind)
        return drawn, (f"{len(result.instances)} detections · {seconds * 1000:.0f} ms a frame "
                       f"(up to {1 / max(seconds, 1e-3):.1f} frames/s; frames arriving meanwhile are dropped)")

    @staticmethod
    def _panoptic(run: Run, highlight: int | None = None):
        view = views.panoptic_view(run, highlight=highlight)
        if view is None:
            return None
        base, annotations, color_map = view
        return gr.update(value=(base, annotations), color_map=color_map)

    @staticmethod
    def _channel_slider(run: Run, level: str, channel: int):
        last = views.level_channels(run, level) - 1
        return gr.Slider(maximum=last, value=channel, label=f"Channel (0–{last}, for “single channel”)")


def _to_gradio_cache(path: Path | None) -> str | None:
    """A copy of ``path`` in Gradio's cache, which serves it (and deletes it after
    ``delete_cache``'s hour, or at shutdown): the request's own folder can then go at once.
    The copy is named by the file's hash and written whole before it appears."""
    if path is None:
        return None
    return processing_utils.save_file_to_cache(path, cache_dir=get_upload_folder())


def _image_to_gradio_cache(image: np.ndarray | Image.Image, name: str = "image", *, jpeg: bool = False) -> str:
    """``image`` (uint8 [H, W, 3] or a PIL image) as a PNG (or a JPEG) in Gradio's cache
    (:func:`_to_gradio_cache`). Gradio's own writer rewrites a cached picture in place, so a
    request serving it while another request draws the same picture could send an empty file."""
    with files.request_dir() as folder:
        if jpeg:
            path = folder / f"{name}.jpg"
            Image.fromarray(np.asarray(image)).save(path, format="JPEG", quality=VIEW_JPEG_QUALITY)
        elif isinstance(image, Image.Image):
            path = folder / f"{name}.png"
            image.save(path, format="PNG", compress_level=3)
        else:
            path = write_png(folder / f"{name}.png", image)
        return _to_gradio_cache(path)


def _as_source(model) -> ModelSource:
    """A :class:`ModelSource` from a source, a predictor, a loader callable, or checkpoint names."""
    if isinstance(model, ModelSource):
        return model
    if hasattr(model, "predict"):
        return ModelSource.from_predictor(model)
    if callable(model):
        return ModelSource.from_factory(model)
    return ModelSource(resolve.candidates(model))


def build_demo(model, *, examples_dir: Path = EXAMPLES_DIR, max_side: int = session.MAX_SIDE,
               queue_size: int = QUEUE_SIZE, allow_reload: bool = False,
               runs: RunStore | None = None, models: ModelPool | None = None) -> gr.Blocks:
    """The app's Blocks, queue configured.

    ``model``: a :class:`~segfpn.predictor.Predictor` (or anything with its ``predict``), a
    :class:`~segfpn.app.source.ModelSource`, or checkpoint names/paths to try in order. The
    checkpoints already on disk are loaded here, once; a missing one is downloaded in the
    background while the app serves (the page says so and uses it once it has arrived). When
    no model is available the page says what to fetch, and Segment answers with a clear error
    (and tries the disk again).

    Every event goes through the queue (direct HTTP calls to ``/run/…`` and ``/api/…`` are
    refused), so the model runs for one request at a time whoever calls. ``allow_reload``:
    offer "Reload weights" (``/reload_model``); without it there is no such button or endpoint
    at all. ``runs``: where the sessions' last runs are kept (default: a
    :class:`~segfpn.app.session.RunStore` of :data:`SESSION_MEMORY_MB`).

    The model picker lists :meth:`ModelPool.options` (the catalogue, the weights folder, the
    bundled model); each session uses the model it chose (``model`` until it chooses), and
    ``models`` keeps :data:`MODELS_IN_MEMORY` of them in memory at most (default: a
    :class:`~segfpn.app.models.ModelPool` around ``model``).
    """
    source = _as_source(model)
    predictor = source.start().try_get()
    runs = runs if runs is not None else RunStore(budget_bytes=SESSION_MEMORY_MB << 20)
    models = models if models is not None else ModelPool(source, capacity=MODELS_IN_MEMORY)
    if models.default is not source:
        raise ValueError("models must be a ModelPool around the app's model source")
    events = Events(source, runs=runs, max_side=max_side, models=models)
    kind = session.model_kind(predictor) if predictor is not None else session.PANOPTIC_FPN
    offline = source.uses_bundled_model
    # Every class of the model, until a run narrows the list to the classes it found.
    all_classes = sorted(set(predictor.categories.thing_names) - {"N/A"}) if predictor else []
    view = dict(format="png", show_label=False, height=VIEW_HEIGHT, interactive=False,
                buttons=["download", "fullscreen"])

    with gr.Blocks(title="segfpn", analytics_enabled=False, delete_cache=(1800, 3600)) as demo:
        # The key of the session's last run in events.runs (the run itself is kept there). The
        # callback is a plain function: Gradio deep-copies a State's settings for every page it
        # serves, and a bound method would take Events with it (the model and every run).
        def forget(key):
            events.forget(key)

        run_state = gr.State(None, time_to_live=SESSION_TTL_S, delete_callback=forget)
        # The session's model (a SessionModel; the app's default until it picks another).
        model_state = gr.State(SessionModel(), time_to_live=SESSION_TTL_S)
        gr.Markdown(f"# {TITLE}\n{INTRO}")
        with gr.Row(equal_height=False, elem_id="status-row"):
            model_status = gr.Markdown(source.describe(), elem_id="model-status",
                                       elem_classes=["status-ok" if predictor else "status-warning"])
            status_timer = gr.Timer(STATUS_REFRESH_S, active=source.busy)
            picker = gr.Dropdown([(o.label, o.value) for o in models.options()], value=models.default_value(),
                                 label="Model", scale=0, min_width=320, elem_id="model-picker",
                                 info=f"on disk, or downloaded when chosen; {MODELS_IN_MEMORY} kept in memory")
            if allow_reload:
                reload_btn = gr.Button("Reload weights", size="sm", scale=0, variant="secondary",
                                       elem_id="reload-button")
        with gr.Row(equal_height=False):
            with gr.Column(scale=2, min_width=320):
                image_in = ImageUpload(label="Image", type="filepath", height=340,
                                       sources=["upload", "clipboard"], elem_id="input-image")
                segment_btn = gr.Button("Segment", variant="primary", elem_id="segment-button")
                run_info = gr.Markdown("Upload an image or pick an example, then press **Segment**.",
                                       label="Run summary", elem_id="run-info",
                                       elem_classes=["run-info"])
                photos, synthetic = example_images(examples_dir)
                galleries = [(photos, "Examples: real photos (sources and licences in "
                                      "examples/images/PROVENANCE.md)"),
                             (synthetic, "Examples: synthetic shapes (what the offline model was trained on)")]
                if offline:  # the offline model knows shapes, not COCO's objects: its world first
                    galleries.reverse()
                for images, label in galleries:
                    if images:
                        gr.Examples([[p] for p in images], inputs=[image_in], label=label, examples_per_page=9)
            with gr.Column(scale=5, min_width=480):
                with gr.Tabs():
                    with gr.Tab("Instances", id="instances"):
                        overlay = ViewImage(label="Instances", elem_id="instances-image", **view)
                        instance_info = gr.Markdown(label="Detections shown", elem_id="instance-info")
                        with gr.Row():
                            score = gr.Slider(0.0, 1.0, 0.5, step=0.01, label="Score threshold",
                                              elem_id="score-slider")
                            opacity = gr.Slider(0.0, 1.0, 0.5, step=0.05,
                                                label="Fill opacity (masks; boxes of box-only models)")
                        with gr.Row():
                            classes = gr.Dropdown(all_classes, value=[], multiselect=True, scale=3,
                                                  label="Classes", info="Empty: every class")
                            show_boxes = gr.Checkbox(True, label="Boxes", scale=1)
                            show_labels = gr.Checkbox(True, label="Labels", scale=1)
                    with gr.Tab("Semantic", id="semantic"):
                        semantic_note = gr.Markdown(elem_id="semantic-note")
                        semantic = ViewImage(label="Semantic segmentation", **view)
                        semantic_legend = gr.HTML(elem_id="semantic-legend")
                    with gr.Tab("Panoptic", id="panoptic"):
                        panoptic_note = gr.Markdown(elem_id="panoptic-note")
                        panoptic = SegmentsImage(label="Panoptic segmentation", format="png",
                                                 show_label=False, height=VIEW_HEIGHT,
                                                 elem_id="panoptic-image")
                        with gr.Row():
                            selection = gr.Markdown(label="Selected segment",
                                                    elem_id="selected-segment")
                            show_all = gr.Button("Show all segments", size="sm", scale=0)
                        table = gr.Dataframe(headers=list(SEGMENT_COLUMNS), interactive=False,
                                             datatype=["number", "str", "str", "number", "number", "str"],
                                             label="Segments: hover the legend above, or select a "
                                                   "row to single its segment out",
                                             max_height=320, elem_id="segment-table")
                    with gr.Tab("Pyramid inspector", id="pyramid"):
                        level = gr.Radio(list(INSPECTOR_LEVELS), value="p3", label="Level",
                                         info=views.levels_info(INSPECTOR_LEVELS) + " (after Segment: the model's)",
                                         elem_id="level-radio")
                        with gr.Row():
                            mode = gr.Radio(list(ACTIVATION_MODE_CHOICES), value="mean_abs",
                                            label="Show", scale=3, elem_id="mode-radio")
                            channel = gr.Slider(0, 255, 0, step=1, scale=2,
                                                label="Channel (for “single channel”)")
                        pyramid = ViewImage(label="Activation over the image",
                                            elem_id="pyramid-image", **view)
                        pyramid_info = gr.Markdown(label="Level", elem_id="pyramid-info")
                    with gr.Tab("Levels", id="levels"):
                        with gr.Row():
                            with gr.Column(scale=3):
                                roi_source = gr.Radio([("final box (the mask head's RoI)", "mask"),
                                                       ("proposal (the box head's RoI)", "box")],
                                                      value="mask", label="RoI (two-stage models)",
                                                      elem_id="roi-source")
                                levels = ViewImage(label="Boxes coloured by pyramid level: click one to explain it",
                                                   elem_id="levels-image", **view)
                            with gr.Column(scale=2):
                                detection_table = gr.Dataframe(
                                    headers=list(views.DETECTION_COLUMNS), interactive=False,
                                    datatype=["number", "str", "number", "number", "str", "str"], max_height=480,
                                    label="Detections: select one to explain it", elem_id="detection-table")
                        levels_info = gr.Markdown(views.rule_line(kind=kind), label="Counts per level",
                                                  elem_id="levels-info")
                        roi_note = gr.Markdown(elem_id="roi-note")
                        with gr.Accordion("One detection, level by level", open=True):
                            explained = gr.Number(visible=False)
                            rule_text = gr.Markdown("Select a detection in the table or click it in the picture.",
                                                    elem_id="rule-text")
                            grid_mode = gr.Radio([("mean |activation|", "mean_abs"), ("PCA, one basis", "pca")],
                                                 value="mean_abs", label="RoIAlign grids")
                            with gr.Row():
                                box_grids = ViewImage(label="Box RoI 7 × 7: level below · its level · above",
                                                      elem_id="box-grids", format="png", show_label=True,
                                                      interactive=False, height=180)
                                mask_grids = ViewImage(label="Mask RoI 14 × 14: level below · its level · above",
                                                       elem_id="mask-grids", format="png", show_label=True,
                                                       interactive=False, height=180)
                                mask_probs = ViewImage(label="28 × 28 mask probabilities", elem_id="mask-probs",
                                                       format="png", show_label=True, interactive=False, height=180)
                            activation_bars = gr.BarPlot(x="level", y="mean |activation|", color="pooled from",
                                                         label="Mean |activation| inside its box, every level",
                                                         elem_id="activation-bars", height=220)
                        with gr.Accordion("What if it read another level", open=False):
                            with gr.Row():
                                force_level = gr.Radio(["rule", "p2", "p3", "p4", "p5"], value="rule",
                                                       label="Every RoI on (\"rule\": the rule with k0 and s0)",
                                                       elem_id="force-level")
                                canonical_level = gr.Slider(2, 6, value=4, step=1, label="k0 (canonical level)")
                                canonical_size = gr.Slider(56, 896, value=224, step=8,
                                                           label="s0 (canonical size, px)")
                            what_if_btn = gr.Button("Run the RoI heads again (no backbone)", elem_id="what-if-button")
                            what_if_info = gr.Markdown(elem_id="what-if-info")
                            what_if_view = ViewImage(label="kept (green) · moved (amber) · lost (red) · new (blue)",
                                                     elem_id="what-if-image", **view)
                            what_if_table = gr.Dataframe(headers=list(views.WHAT_IF_COLUMNS), interactive=False,
                                                         max_height=320, elem_id="what-if-table")
                        with gr.Accordion("Scale sweep: how objects move between levels", open=False):
                            sweep_btn = gr.Button("Run the image at nine input sizes", elem_id="sweep-button")
                            sweep_info = gr.Markdown(elem_id="sweep-info")
                            with gr.Row():
                                sweep_levels = gr.LinePlot(x="input size", y="level", color="object",
                                                           label="Level of each object", elem_id="sweep-levels")
                                sweep_scores = gr.LinePlot(x="input size", y="score", color="object",
                                                           label="Score of each object", elem_id="sweep-scores")
                            with gr.Row():
                                sweep_shares = gr.BarPlot(x="input size", y="share", color="level",
                                                          label="Levels' share of the detections",
                                                          elem_id="sweep-shares")
                                sweep_counts = gr.LinePlot(x="input size", y="detections", label="Detections",
                                                           elem_id="sweep-counts")
                        with gr.Accordion("Recall and precision per level", open=False):
                            ground_truth = gr.File(label="COCO instances JSON of this image (the synthetic "
                                                         "examples bring their own)", file_types=[".json"])
                            metrics_btn = gr.Button("Score per level", elem_id="metrics-button")
                            metrics_info = gr.Markdown()
                            metrics_table = gr.Dataframe(headers=list(views.LEVEL_METRIC_COLUMNS), interactive=False,
                                                         elem_id="level-metrics")
                    with gr.Tab("Downloads", id="downloads"):
                        gr.Markdown("Files of the last run. Coordinates refer to the image as "
                                    "segmented (downscaled when its longest side is above "
                                    f"{max_side} px). The COCO results hold every detection; "
                                    "the overlay follows the Instances controls.")
                        downloads_note = gr.Markdown(elem_id="downloads-note")
                        with gr.Row():
                            file_overlay = gr.File(label="Overlay (PNG)")
                            file_coco = gr.File(label="Instances: COCO results JSON (RLE masks; boxes only for "
                                                      "Faster R-CNN and RetinaNet)")
                        with gr.Row():
                            file_panoptic_png = gr.File(label="Panoptic: COCO panoptic PNG")
                            file_panoptic_json = gr.File(label="Panoptic: segments JSON")
                        export_formats = gr.CheckboxGroup(list(files.EXPORT_CHOICES), value=["labelme"],
                                                          label="More formats: the detections the Instances "
                                                                "view shows (its score threshold and classes)",
                                                          elem_id="export-formats")
                        export_btn = gr.Button("Export", size="sm", elem_id="export-button")
                        exported = gr.File(label="Exported files", file_count="multiple", elem_id="exported")
                    with gr.Tab("Video", id="video"):
                        video_in = gr.Video(label="Video", sources=["upload"], elem_id="video-input")
                        with gr.Row():
                            video_every = gr.Slider(1, 30, 1, step=1, label="Segment every n-th frame",
                                                    elem_id="video-every")
                            video_overlay = gr.Radio([("panoptic segments", "panoptic"), ("instances", "instances")],
                                                     value="panoptic", label="Overlay")
                        video_btn = gr.Button("Segment video", variant="primary", elem_id="video-button")
                        video_out = gr.Video(label="Segmented video", interactive=False, elem_id="video-output")
                        video_results = gr.File(label="Per-frame COCO results (JSON, frame indices)")
                        video_info = gr.Markdown(elem_id="video-info")
                    with gr.Tab("Webcam", id="webcam"):
                        gr.Markdown("Frames from your camera, segmented as fast as the model allows (frames that "
                                    "arrive while it runs are dropped, never queued). Without a camera, or "
                                    "when the browser is not allowed to use it, the box below says so.")
                        with gr.Row():
                            webcam = gr.Image(sources=["webcam"], streaming=True, type="numpy", label="Camera",
                                              elem_id="webcam-input")
                            webcam_out = gr.Image(label="Segmented", interactive=False, elem_id="webcam-output")
                        webcam_overlay = gr.Radio([("instances", "instances"), ("panoptic segments", "panoptic")],
                                                  value="instances", label="Overlay")
                        webcam_info = gr.Markdown(elem_id="webcam-info")

        # Segment runs the model (one at a time); every other event draws from the session's run.
        downloads = [file_overlay, file_coco, file_panoptic_png, file_panoptic_json]
        draw = dict(concurrency_id="draw", concurrency_limit=2)
        control = dict(trigger_mode="always_last", show_progress="minimal", **draw)
        segmented = segment_btn.click(
            events.segment, [image_in, score, opacity, show_boxes, show_labels, run_state, model_state],
            [run_state, overlay, *downloads, run_info], api_name="segment", concurrency_id="model",
        )
        segmented.success(events.caption, [run_state, score], [instance_info], api_visibility="private",
                          show_progress="hidden", concurrency_id="caption")
        segmented.success(
            events.draw_views, [run_state, score, level, mode, channel, roi_source],
            [classes, instance_info, semantic, semantic_legend, panoptic, table, selection, level, pyramid,
             pyramid_info, channel, roi_source, levels, levels_info, detection_table, semantic_note, panoptic_note,
             downloads_note, roi_note, run_info],
            api_visibility="private", show_progress_on=[semantic, panoptic, pyramid, levels], **draw,
        )
        instance_controls = [score.input, opacity.input, classes.input, show_boxes.input, show_labels.input]
        instance_settings = [run_state, score, opacity, classes, show_boxes, show_labels]
        gr.on(instance_controls, events.redraw_instances, instance_settings, [overlay, instance_info],
              api_name="redraw_instances", **control)
        gr.on(instance_controls, events.overlay_download, instance_settings, [file_overlay],
              api_name="overlay_download", trigger_mode="always_last", show_progress="hidden",
              concurrency_id="downloads", concurrency_limit=1)
        gr.on([score.input, classes.input, roi_source.input], events.roi_levels,
              [run_state, score, classes, roi_source], [levels, levels_info, detection_table], api_name="roi_levels",
              **control)
        explanation = [explained, rule_text, box_grids, mask_grids, mask_probs, activation_bars]
        detection_table.select(events.pick_from_table, [run_state, grid_mode], explanation, api_visibility="private",
                               **draw)
        levels.select(events.pick_from_image, [run_state, score, classes, grid_mode], explanation,
                      api_visibility="private", **draw)
        grid_mode.input(events.explain, [run_state, explained, grid_mode], explanation, api_name="explain", **draw)
        what_if_btn.click(events.what_if, [run_state, force_level, canonical_level, canonical_size, score],
                          [what_if_view, what_if_info, what_if_table], api_name="what_if", concurrency_id="model")
        sweep_btn.click(events.scale_sweep, [run_state], [sweep_levels, sweep_scores, sweep_shares, sweep_counts,
                                                          sweep_info], api_name="scale_sweep", concurrency_id="model")
        metrics_btn.click(events.level_metrics, [run_state, ground_truth], [metrics_table, metrics_info],
                          api_name="level_metrics", **draw)
        gr.on([level.input, mode.input, channel.input], events.inspect,
              [run_state, level, mode, channel], [pyramid, pyramid_info, channel],
              api_name="inspect", **control)
        # The model status: on page load, after each Segment (a download may have arrived), and
        # every few seconds while a download or load is under way; the picker follows the
        # session's model (switched once a chosen download has arrived, or back when it failed).
        status = dict(fn=events.model_status, inputs=[model_state], outputs=[model_status, status_timer, model_state],
                      concurrency_id="status", show_progress="hidden")
        follow = dict(fn=events.model_picker, inputs=[model_state], outputs=[picker], api_visibility="private",
                      concurrency_id="status", show_progress="hidden")
        demo.load(api_name="model_status", **status).then(**follow)
        segmented.then(api_visibility="private", **status)
        status_timer.tick(api_visibility="private", **status).then(**follow)
        # A model is loaded where the model runs: one request at a time, like Segment.
        picker.input(events.choose_model, [picker, model_state], [model_state, model_status, status_timer, picker],
                     api_name="choose_model", concurrency_id="model", show_progress="minimal")
        if allow_reload:
            # One model: a reload waits for the runs before it, and they for it.
            reload_btn.click(events.reload_model, None, [model_status], api_name="reload_model",
                             concurrency_id="model")
        export_btn.click(events.export, [run_state, export_formats, score, classes], [exported],
                         api_name="export", **draw)
        video_btn.click(events.segment_video, [video_in, video_every, video_overlay, model_state],
                        [video_out, video_results, video_info], api_name="segment_video", concurrency_id="model")
        webcam.stream(events.webcam_frame, [webcam, webcam_overlay, model_state], [webcam_out, webcam_info],
                      stream_every=WEBCAM_EVERY_S, trigger_mode="always_last", concurrency_id="model",
                      show_progress="hidden", api_visibility="private")
        table.select(events.select_segment, [run_state], [panoptic, selection],
                     api_visibility="private", **draw)
        show_all.click(events.show_all_segments, [run_state], [panoptic, selection],
                       api_visibility="private", **draw)

    # api_open=False: gradio's /run/<name> and /api/<name> routes would run an event at once,
    # outside the queue and its concurrency limits; they answer 404 instead.
    demo.queue(default_concurrency_limit=1, max_size=queue_size, api_open=False)
    return demo


def launch(demo: gr.Blocks, *, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT,
           examples_dir: Path = EXAMPLES_DIR, **kwargs):
    """Serve ``demo`` with the app's limits and look; ``kwargs`` go to ``Blocks.launch``."""
    return demo.launch(server_name=host, server_port=port, max_file_size=MAX_FILE_SIZE,
                       state_session_capacity=MAX_SESSIONS, allowed_paths=[str(examples_dir)],
                       theme=THEME, css=CSS, **kwargs)


def parse_args(argv=None) -> argparse.Namespace:
    env = os.environ.get
    parser = argparse.ArgumentParser(description="Serve the segfpn web app.")
    parser.add_argument("--host",
                        default=env("SEGFPN_HOST") or env("GRADIO_SERVER_NAME") or DEFAULT_HOST,
                        help="address to bind (SEGFPN_HOST; default %(default)s; 0.0.0.0 for "
                             "every interface)")
    parser.add_argument("--port", type=int,
                        default=int(env("SEGFPN_PORT") or env("GRADIO_SERVER_PORT") or DEFAULT_PORT),
                        help="port (SEGFPN_PORT; default %(default)s)")
    parser.add_argument("--weights", default=env("SEGFPN_WEIGHTS") or None,
                        help="checkpoint file or known name, several separated by commas and tried "
                             "in order (SEGFPN_WEIGHTS; default: "
                             f"{catalogue.default_checkpoint().name})")
    parser.add_argument("--device", default=env("SEGFPN_DEVICE") or None,
                        help="torch device (SEGFPN_DEVICE; default: cuda when present, else cpu)")
    parser.add_argument("--max-side", type=int, default=session.MAX_SIDE,
                        help="downscale uploads whose longest side is above this (default %(default)s)")
    parser.add_argument("--queue-size", type=int,
                        default=int(env("SEGFPN_QUEUE_SIZE") or QUEUE_SIZE),
                        help="requests that may wait for the model; beyond this a request is "
                             "answered 'busy, try again' (SEGFPN_QUEUE_SIZE; default %(default)s)")
    parser.add_argument("--session-memory-mb", type=int,
                        default=int(env("SEGFPN_SESSION_MEMORY_MB") or SESSION_MEMORY_MB),
                        help="memory for the last runs of all sessions together; beyond it the "
                             "least recently used is dropped (SEGFPN_SESSION_MEMORY_MB; default "
                             "%(default)s)")
    parser.add_argument("--allow-reload", action="store_true",
                        default=env("SEGFPN_ALLOW_RELOAD", "").strip().lower() in {"1", "true", "yes", "on"},
                        help="offer 'Reload weights' (and the /reload_model endpoint) to every "
                             "visitor (SEGFPN_ALLOW_RELOAD=1; default: off)")
    args = parser.parse_args(argv)
    if args.session_memory_mb <= 0:
        parser.error(f"--session-memory-mb must be positive, got {args.session_memory_mb}")
    return args


def stop_signals() -> threading.Event:
    """An event set by the first SIGTERM (``kill``, ``docker stop``, systemd) or SIGINT
    (Ctrl+C); a second one ends the process at once. Python's default for SIGTERM ends the
    process with no clean-up at all. Call from the main thread."""
    stopped = threading.Event()

    def stop(signum, frame):
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, signal.SIG_DFL)
        stopped.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, stop)
    return stopped


def serve_until(stopped: threading.Event, demo: gr.Blocks, **launch_options) -> None:
    """Serve ``demo`` (:func:`launch`) until ``stopped`` is set, then close it: Gradio deletes
    the files it cached (uploads, results), and the exit handlers remove the app's own temp
    folder when the process ends."""
    launch(demo, prevent_thread_lock=True, **launch_options)
    try:
        while not stopped.wait(0.5):
            pass
    finally:
        demo.close()


def main(argv=None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # gradio's own startup requests
    args = parse_args(argv)
    install_cleanup_handlers()  # a download's partial file is removed at exit (the handlers below stop)
    stopped = stop_signals()
    source = ModelSource(resolve.candidates(args.weights), device=args.device)
    demo = build_demo(source, max_side=args.max_side, queue_size=args.queue_size,
                      allow_reload=args.allow_reload,
                      runs=RunStore(budget_bytes=args.session_memory_mb << 20))
    if not source.available:
        logger.warning("no model loaded; the page says what to fetch:\n%s", source.describe())
    if not stopped.is_set():  # not stopped while loading
        serve_until(stopped, demo, host=args.host, port=args.port)
    logger.info("stopped")


if __name__ == "__main__":
    main()
