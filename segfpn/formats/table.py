"""A table of detections for notebooks: one row per detection, as CSV or Parquet.

Columns: ``image`` (file name), ``frame`` (video frame index, empty for an image), ``instance``
(index in the result, score order), ``class``, ``category_id``, ``score``, ``x0, y0, x1, y1``
(box, xyxy in image pixels, as the model gives it), ``area`` (mask pixels; for a box-only model,
Faster R-CNN or RetinaNet, the box's area), ``level`` (the pyramid level of the detection: of its
RoI, 2..5, for two-stage models; of the anchor that produced it, 3..7, for RetinaNet). Parquet
needs ``pyarrow``.
"""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path

import numpy as np

from segfpn.atomic_files import write_atomic
from segfpn.structures import Instances

COLUMNS = ("image", "frame", "instance", "class", "category_id", "score", "x0", "y0", "x1", "y1", "area", "level")


def detection_rows(instances: Instances, keep: np.ndarray, *, image_name: str, frame: int | None = None) -> list[dict]:
    """One dict per detection of ``keep``, keyed by :data:`COLUMNS`."""
    keep = np.asarray(keep, dtype=np.int64)
    if instances.masks is not None:
        areas = instances.masks[keep].areas()
    else:
        boxes = np.asarray(instances.boxes, dtype=np.float64)[keep].reshape(-1, 4)
        areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    rows = []
    for i, area in zip(keep.tolist(), areas.tolist()):
        label = int(instances.labels[i])
        x0, y0, x1, y1 = (float(v) for v in instances.boxes[i])
        rows.append({"image": image_name, "frame": frame, "instance": i, "class": instances.class_names[label],
                     "category_id": int(instances.category_ids[label]), "score": float(instances.scores[i]),
                     "x0": x0, "y0": y0, "x1": x1, "y1": y1, "area": area, "level": int(instances.levels[i])})
    return rows


def write_csv(path: str | os.PathLike, rows: list[dict]) -> Path:
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return write_atomic(path, lambda f: f.write(text.getvalue().encode("utf-8")))


def _arrow_table(rows: list[dict]):
    try:
        import pyarrow as pa
    except ImportError:
        raise RuntimeError("writing Parquet needs pyarrow: pip install pyarrow (or ask for csv)") from None
    types = {"image": pa.string(), "frame": pa.int64(), "instance": pa.int64(), "class": pa.string(),
             "category_id": pa.int64(), "score": pa.float32(), "x0": pa.float32(), "y0": pa.float32(),
             "x1": pa.float32(), "y1": pa.float32(), "area": pa.float64(), "level": pa.int64()}
    return pa.table({c: pa.array([r[c] for r in rows], type=types[c]) for c in COLUMNS})


def write_parquet(path: str | os.PathLike, rows: list[dict]) -> Path:
    table = _arrow_table(rows)  # says how to get pyarrow when it is missing
    import pyarrow.parquet as pq

    return write_atomic(path, lambda f: pq.write_table(table, f))


def read_table(path: str | os.PathLike) -> list[dict]:
    """The rows of a CSV or Parquet table written here, with numbers as numbers."""
    path = Path(path)
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        return pq.read_table(path).to_pylist()
    with path.open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    for row in rows:
        for key in ("frame", "instance", "category_id", "level"):
            row[key] = int(row[key]) if row[key] != "" else None
        for key in ("score", "x0", "y0", "x1", "y1", "area"):
            row[key] = float(row[key])
    return rows
