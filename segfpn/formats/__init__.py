"""Result -> the files labelling and training tools read, one module per format, each with a
writer and a reader (the reader is what the round-trip tests use):

=========== ========================= ============================== ===============================
format      file                      models with masks              box-only models (Faster R-CNN,
                                                                     RetinaNet)
=========== ========================= ============================== ===============================
``labelme`` ``S.labelme.json``        polygons, holes as             ``rectangle`` shapes
                                      ``_background_``
``yolo``    ``S.yolo.txt``            one normalised polygon per     ``class cx cy w h`` (YOLO
                                      instance (YOLO segment)        detect)
``cvat``    ``S.cvat.xml``            CVAT for images 1.1 polygons   CVAT ``<box>`` elements
``cutouts`` ``S.cutouts.zip``         RGBA PNG per instance and      the box's pixels, opaque
                                      segment, mask as alpha
``csv``     ``S.detections.csv``      class, score, box, area        the same (area: the box's)
                                      (mask), level
``parquet`` ``S.detections.parquet``  the same table as Parquet      the same (needs pyarrow)
=========== ========================= ============================== ===============================

Modules: :mod:`segfpn.formats.labelme`, :mod:`~segfpn.formats.yolo`, :mod:`~segfpn.formats.cvat`,
:mod:`~segfpn.formats.cutouts`, :mod:`~segfpn.formats.table`. The boxes of box-only models are
written in continuous pixel coordinates (a box's corners, as in the COCO results; polygons join
pixel centres), clipped to the image (:func:`boxes_in_image`) in LabelMe, YOLO and CVAT: a shape
lies in its image in a labelling tool, and Ultralytics rejects a label file with a coordinate
outside [0, 1]. The table keeps the model's boxes as they are.

Which detections: those at or above a score threshold whose class is in a class filter
(:func:`select_instances`), the same choice the app's Instances view makes; the COCO files of
:mod:`segfpn.outputs` keep every detection. :func:`segfpn.outputs.write_result` writes the
formats asked for (``formats=``).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterable, Sequence

import numpy as np

from segfpn.structures import Instances, Result, Segment

#: Every format :func:`segfpn.outputs.write_result` can add to the COCO files, in a stable order.
EXPORT_FORMATS = ("labelme", "yolo", "cvat", "cutouts", "csv", "parquet")


def check_formats(formats: Iterable[str]) -> tuple[str, ...]:
    """``formats`` in :data:`EXPORT_FORMATS` order, ``"coco"`` (always written) dropped;
    ValueError naming any unknown one."""
    asked = {f.strip().lower() for f in formats if f.strip()}
    unknown = sorted(asked - set(EXPORT_FORMATS) - {"coco"})
    if unknown:
        raise ValueError(f"unknown export format(s) {', '.join(unknown)}; choose from coco, "
                         f"{', '.join(EXPORT_FORMATS)}")
    if "parquet" in asked and importlib.util.find_spec("pyarrow") is None:
        # Told before any image is segmented, not after the first one.
        raise ValueError("the parquet format needs pyarrow: pip install pyarrow (or ask for csv)")
    return tuple(f for f in EXPORT_FORMATS if f in asked)


def known_class_names(thing_names: Sequence[str], stuff: Iterable[tuple[str, int]] = ()) -> list[str]:
    """The names a class filter may use: the thing classes, then the stuff classes (``(name,
    COCO id)`` of a semantic head; none for a model without one) not already named, without the
    merged "things" class of a panoptic-separated head (id 0)."""
    names = list(thing_names)
    names += [n for n, i in stuff if int(i) != 0 and n not in names]
    return names


def result_class_names(result: Result) -> list[str]:
    """The thing classes of the model, then its stuff classes (without the merged "things")."""
    stuff = () if result.semantic is None else zip(result.semantic.class_names, result.semantic.category_ids)
    return known_class_names(result.instances.class_names, stuff)


def check_classes(result: Result, classes: Iterable[str] | None) -> set[str] | None:
    """The class filter as a set (None: every class); ValueError for a name the model lacks."""
    if classes is None:
        return None
    wanted = set(classes)
    known = result_class_names(result)
    unknown = sorted(wanted - set(known))
    if unknown:
        raise ValueError(f"unknown class name(s) {unknown}; this model's classes are {known}")
    return wanted


def select_instances(instances: Instances, *, score_threshold: float = 0.0,
                     classes: set[str] | None = None) -> np.ndarray:
    """int64 [K] indices, in score order, of the detections with ``score >= score_threshold``
    whose class name is in ``classes`` (None: any class)."""
    keep = np.asarray(instances.scores) >= score_threshold
    if classes is not None:
        labels = [i for i, name in enumerate(instances.class_names) if name in classes]
        keep &= np.isin(instances.labels, labels)
    return np.flatnonzero(keep).astype(np.int64)


def select_segments(result: Result, *, score_threshold: float = 0.0,
                    classes: set[str] | None = None) -> list[Segment]:
    """The panoptic segments to export: things at or above the threshold, stuff regardless of
    score (it has none), in both cases of a class in ``classes`` (None: any class)."""
    if result.panoptic is None:
        return []
    return [s for s in result.panoptic.segments
            if s.category_id != 0 and (classes is None or s.class_name in classes)
            and (not s.isthing or s.score is None or s.score >= score_threshold)]


def boxes_in_image(boxes: np.ndarray, image_size: tuple[int, int]) -> np.ndarray:
    """float64 [K, 4] xyxy: ``boxes`` (xyxy, image px) clipped to an image of ``image_size`` (H, W).
    A box wholly outside becomes a flat box on the nearest edge (kept: the detection exists)."""
    h, w = image_size
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    return np.clip(boxes, 0.0, np.asarray([w, h, w, h], dtype=np.float64))


def check_masks_fit(instances: Instances, image_size: tuple[int, int]) -> None:
    """ValueError when ``instances`` have masks of another size than the image's (H, W)."""
    if instances.masks is not None and tuple(instances.masks.image_size) != tuple(image_size):
        (mh, mw), (h, w) = instances.masks.image_size, image_size
        raise ValueError(f"the masks are {mw}x{mh} but the image is {w}x{h}: the result is not this image's")
