"""Predicting a folder: per-image outputs, one merged COCO results file, resumable, and split
across ``torchrun`` processes without any image done twice or lost."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from segfpn.export import instances_to_coco_results, panoptic_to_coco, write_atomic, write_panoptic_png
from segfpn.imageio import ImageError, read_image

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


def outputs_of(out_dir: Path, image: Path) -> dict[str, Path]:
    stem = image.stem
    return {"overlay": out_dir / f"{stem}.overlay.png", "instances": out_dir / f"{stem}.instances.json",
            "panoptic_png": out_dir / f"{stem}.panoptic.png", "panoptic_json": out_dir / f"{stem}.panoptic.json"}


def write_image_outputs(predictor, image_path: Path, out_dir: Path, image_id: int, *, rgb: np.ndarray | None = None,
                        result=None) -> None:
    """Write one image's overlay, COCO results and (if any) panoptic PNG + JSON.

    ``rgb``/``result``: the image and its prediction when the caller has them (else they are
    read and computed here). The instances JSON is written last: its presence marks the image
    as done.
    """
    from segfpn.viz import draw_instances, draw_panoptic

    if rgb is None:
        rgb = read_image(image_path)
    if result is None:
        result = predictor.predict(rgb)
    paths = outputs_of(out_dir, image_path)
    if result.panoptic is not None:
        overlay = draw_panoptic(rgb, result.panoptic)
        png, annotation = panoptic_to_coco(result.panoptic, image_id, paths["panoptic_png"].name)
        write_panoptic_png(paths["panoptic_png"], png)
        write_atomic(paths["panoptic_json"], lambda f: f.write(json.dumps(annotation).encode()))
    else:
        overlay = draw_instances(rgb, result.instances)
    write_atomic(paths["overlay"], lambda f: Image.fromarray(overlay).save(f, format="PNG"))
    record = {"image": image_path.name, "image_id": image_id, "height": rgb.shape[0], "width": rgb.shape[1],
              "results": instances_to_coco_results(result.instances, image_id)}
    write_atomic(paths["instances"], lambda f: f.write(json.dumps(record).encode()))


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
                   world_size: int = 1, progress: bool = True, batch_size: int = 1) -> FolderReport:
    """Run ``predictor`` over every image of ``images_dir`` (this rank's share), skipping done ones.

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
        if outputs_of(out_dir, path)["instances"].exists():
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
            write_image_outputs(predictor, path, out_dir, ids[path], rgb=rgb, result=result)
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
    write_atomic(path, lambda f: f.write(json.dumps(data, indent=1).encode()))
    return path


def merge_results(images_dir: str | os.PathLike, out_dir: str | os.PathLike) -> Path:
    """Concatenate every per-image results file into one COCO results JSON (written atomically)."""
    images_dir, out_dir = Path(images_dir), Path(out_dir)
    merged = []
    for path in list_images(images_dir):
        per_image = outputs_of(out_dir, path)["instances"]
        if per_image.exists():
            merged.extend(json.loads(per_image.read_text())["results"])
    target = out_dir / MERGED_RESULTS
    write_atomic(target, lambda f: f.write(json.dumps(merged).encode()))
    return target
