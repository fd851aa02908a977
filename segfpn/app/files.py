"""The app's download files: one request's files, written by the one result writer
(:mod:`segfpn.outputs`, the same names and contents as ``segfpn predict``) into a scratch folder of
the request's own, which is removed when the request ends. No gradio here.
"""

from __future__ import annotations

import atexit
import contextlib
import shutil
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from segfpn.app.session import Run
from segfpn.atomic_files import write_png
from segfpn.formats import check_classes, check_formats
from segfpn.outputs import ResultFiles, result_files, write_result
from segfpn.outputs import write_exports as write_exports_for

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


def write_downloads(run: Run, overlay: np.ndarray, directory: Path) -> ResultFiles:
    """The run's files in ``directory`` (a :func:`request_dir`), as ``segfpn predict`` writes
    them (:func:`segfpn.outputs.write_result`): the overlay is ``overlay``, the Instances view as
    the person set it up; coordinates refer to ``run.image`` (the image as segmented)."""
    return write_result(run.result, run.image, directory, image_name=run.name, overlay_image=overlay)


def write_overlay(run: Run, overlay: np.ndarray, directory: Path) -> Path:
    """The overlay alone (a redraw), under the name :func:`write_downloads` gives it."""
    return write_png(result_files(directory, run.name, panoptic=False).overlay, overlay)


#: (label, format) of the exports the Downloads tab offers (:data:`segfpn.formats.EXPORT_FORMATS`).
EXPORT_CHOICES = (("LabelMe JSON (polygons)", "labelme"), ("YOLO segmentation txt", "yolo"),
                  ("CVAT for images XML", "cvat"), ("cut-outs (PNG with alpha, zipped)", "cutouts"),
                  ("detections table (CSV)", "csv"), ("detections table (Parquet)", "parquet"))


def write_exports(run: Run, directory: Path, *, formats, score_threshold: float,
                  classes=None) -> tuple[list[Path], list[str]]:
    """``(paths, notes)``: the run's files in ``formats`` (:func:`segfpn.outputs.write_exports`), for
    the detections the Instances view shows: score at least ``score_threshold``, of ``classes``
    (None: all). For a box-only run each format is written on its own, and one that cannot be
    made from boxes is skipped with a note saying why rather than failing the others."""

    def write(chosen) -> list[Path]:
        return list(write_exports_for(run.result, run.image, directory, image_name=run.name, formats=chosen,
                                      score_threshold=score_threshold, classes=classes or None).values())

    if not run.box_only:
        return write(formats), []
    formats = check_formats(formats)  # an unknown format or class fails as for every model
    check_classes(run.result, classes or None)
    paths, notes = [], []
    for format in formats:
        try:
            paths += write([format])
        except ValueError as e:
            notes.append(f"{format}: {e}")
    return paths, notes
