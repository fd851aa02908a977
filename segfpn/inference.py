"""Predicting a folder: per-image outputs, one merged COCO results file, resumable, and split
across ``torchrun`` processes without any image done twice or lost."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from segfpn.atomic_files import write_json
from segfpn.imageio import ImageError, read_image
from segfpn.outputs import DEFAULT_OVERLAY, Overlay, ResultFiles, result_files, write_result

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif"}
MERGED_RESULTS = "coco_instances_results.json"


@dataclass
class FolderReport:
    done: list[str]
    skipped: list[str]
    failed: dict[str, str]


def list_images(folder: Path) -> list[Path]:
    """Image files directly in ``folder``, sorted by name (the order every process agrees on)."""
    if not folder.is_dir():
        raise NotADirectoryError(f"{folder} is not a folder")
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def shard(items: list, rank: int, world_size: int) -> list:
    """This process's share: every ``world_size``-th item starting at ``rank``."""
    return items[rank::world_size]


def distributed_rank() -> tuple[int, int]:
    """(rank, world size) from torchrun's environment, (0, 1) without it."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def load_predictor(weights: str | os.PathLike, *, arch: str | None = None, device: str | None = None,
                   precision: str = "fp32", score_threshold: float | None = None):
    """``segfpn.load(weights, ...)`` with the detections' score threshold set to ``score_threshold``
    (None: the checkpoint's) in whichever section the model keeps it: ``box_head`` (Mask R-CNN,
    Panoptic FPN, Faster R-CNN) or ``retina_head`` (RetinaNet)."""
    import segfpn

    overrides = None
    if score_threshold is not None:
        overrides = {_detection_head(weights, arch=arch): {"score_threshold": score_threshold}}
    return segfpn.load(weights, arch=arch, device=device, precision=precision, overrides=overrides)


def _detection_head(weights: str | os.PathLike, *, arch: str | None) -> str:
    """The config section of the model in ``weights`` holding its detection thresholds."""
    from segfpn.checkpoints.loading import convert_state, read_state

    # The section is known only once the file is recognised; segfpn.load reads the tensors again
    # (its overrides name a section, and there is no section-neutral threshold to pass).
    state, metadata = read_state(weights)
    return convert_state(state, metadata, arch=arch, path=Path(weights)).config.detection_head


def write_image_outputs(predictor, image_path: Path, out_dir: Path, image_id: int, *, rgb: np.ndarray | None = None,
                        result=None, overlay: Overlay = DEFAULT_OVERLAY, formats: Iterable[str] = ("coco",),
                        score_threshold: float = 0.0, classes: Iterable[str] | None = None) -> ResultFiles:
    """Write one image's files (:func:`segfpn.outputs.write_result`).

    ``rgb``/``result``: the image and its prediction when the caller has them (else they are
    read and computed here). ``formats``, ``score_threshold``, ``classes``: the extra files.
    """
    if rgb is None:
        rgb = read_image(image_path)
    if result is None:
        result = predictor.predict(rgb)
    return write_result(result, rgb, out_dir, image_name=image_path.name, image_id=image_id, overlay=overlay,
                        formats=formats, score_threshold=score_threshold, classes=classes)


def is_done(out_dir: Path, image_path: Path) -> bool:
    """Whether ``image_path``'s files are all in ``out_dir`` (its instances JSON, written last, is)."""
    return result_files(out_dir, image_path.name, panoptic=False).instances.exists()


def _read_ahead(paths: list[Path], depth: int = 2):
    """Yield ``(path, rgb or ImageError)`` in order, decoding the next images in a background
    thread while the caller runs the model on the current ones."""
    with ThreadPoolExecutor(1, thread_name_prefix="segfpn-read") as pool:
        def read(path):
            try:
                return read_image(path)
            except ImageError as exc:
                return exc

        pending = [pool.submit(read, p) for p in paths[:depth]]
        for i, path in enumerate(paths):
            image = pending[i].result()
            if i + depth < len(paths):
                pending.append(pool.submit(read, paths[i + depth]))
            pending[i] = None
            yield path, image


def predict_folder(predictor, images_dir: str | os.PathLike, out_dir: str | os.PathLike, *, rank: int = 0,
                   world_size: int = 1, progress: bool = True, batch_size: int = 1,
                   overlay: Overlay = DEFAULT_OVERLAY, formats: Iterable[str] = ("coco",),
                   score_threshold: float = 0.0, classes: Iterable[str] | None = None) -> FolderReport:
    """Run ``predictor`` over every image of ``images_dir`` (this rank's share), skipping done ones.
    ``formats``, ``score_threshold``, ``classes``: the extra files of each image
    (:func:`segfpn.outputs.write_result`).

    Image ids are the 1-based positions in the sorted file list, the same in every process.
    Images are decoded ahead in a thread and predicted ``batch_size`` at a time (more than 1
    pays on a GPU). A file that is not a readable image is reported in ``failed`` and the run
    goes on. Each process also writes what it did to ``OUT/logs/predict_rank<r>_of_<n>.json``.
    """
    images_dir, out_dir = Path(images_dir), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    images = list_images(images_dir)
    ids = {p: i + 1 for i, p in enumerate(images)}
    mine = shard(images, rank, world_size)
    report = FolderReport(done=[], skipped=[], failed={})
    todo = []
    for path in mine:
        if is_done(out_dir, path):
            report.skipped.append(path.name)
        else:
            todo.append(path)
    bar = tqdm(total=len(mine), initial=len(report.skipped), unit="img", disable=not progress,
               desc=f"segfpn predict [{rank}/{world_size}]" if world_size > 1 else "segfpn predict")
    batch: list[tuple[Path, np.ndarray]] = []

    def flush():
        if not batch:
            return
        results = predictor.predict_batch([rgb for _, rgb in batch])
        for (path, rgb), result in zip(batch, results):
            write_image_outputs(predictor, path, out_dir, ids[path], rgb=rgb, result=result, overlay=overlay,
                                formats=formats, score_threshold=score_threshold, classes=classes)
            report.done.append(path.name)
        bar.update(len(batch))
        batch.clear()

    for path, image in _read_ahead(todo):
        if isinstance(image, ImageError):
            logger.warning("skipping %s: %s", path.name, image)
            report.failed[path.name] = str(image)
            bar.update(1)
            continue
        batch.append((path, image))
        if len(batch) >= batch_size:
            flush()
    flush()
    bar.close()
    write_log(out_dir, report, rank, world_size)
    return report


def write_log(out_dir: Path, report: FolderReport, rank: int, world_size: int) -> Path:
    """This process's record of the run: which images it predicted, skipped or could not read."""
    path = out_dir / "logs" / f"predict_rank{rank}_of_{world_size}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {"rank": rank, "world_size": world_size, **dataclasses.asdict(report)}
    return write_json(path, data, indent=1)


def merge_results(images_dir: str | os.PathLike, out_dir: str | os.PathLike) -> Path:
    """Concatenate every per-image COCO results list into one COCO results JSON (written atomically)."""
    images_dir, out_dir = Path(images_dir), Path(out_dir)
    merged = []
    for path in list_images(images_dir):
        per_image = result_files(out_dir, path.name, panoptic=False).instances
        if per_image.exists():
            merged.extend(json.loads(per_image.read_text()))
    return write_json(out_dir / MERGED_RESULTS, merged)
