"""Predicting a folder: per-image outputs, one merged COCO results file, resumable, and split
across ``torchrun`` processes without any image done twice or lost."""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

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


def write_image_outputs(predictor, image_path: Path, out_dir: Path, image_id: int) -> None:
    """Predict one image and write its overlay, COCO results and (if any) panoptic PNG + JSON.

    The instances JSON is written last: its presence marks the image as done.
    """
    from segfpn.viz import draw_instances, draw_panoptic

    rgb = read_image(image_path)
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


def predict_folder(predictor, images_dir: str | os.PathLike, out_dir: str | os.PathLike, *, rank: int = 0,
                   world_size: int = 1, progress: bool = True) -> FolderReport:
    """Run ``predictor`` over every image of ``images_dir`` (this rank's share), skipping done ones.

    Image ids are the 1-based positions in the sorted file list, the same in every process.
    A file that is not a readable image is reported in ``failed`` and the run goes on.
    """
    images_dir, out_dir = Path(images_dir), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    images = list_images(images_dir)
    ids = {p: i + 1 for i, p in enumerate(images)}
    mine = shard(images, rank, world_size)
    report = FolderReport(done=[], skipped=[], failed={})
    for path in tqdm(mine, desc=f"segfpn predict [{rank}/{world_size}]" if world_size > 1 else "segfpn predict",
                     disable=not progress, unit="img"):
        if outputs_of(out_dir, path)["instances"].exists():
            report.skipped.append(path.name)
            continue
        try:
            write_image_outputs(predictor, path, out_dir, ids[path])
            report.done.append(path.name)
        except ImageError as exc:
            logger.warning("skipping %s: %s", path.name, exc)
            report.failed[path.name] = str(exc)
    return report


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
