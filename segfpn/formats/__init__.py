"""Result -> the files labelling and training tools read, one module per format, each with a
writer and a reader (the reader is what the round-trip tests use):

=========== ===================== ==================================================================
format      file                  module
=========== ===================== ==================================================================
``labelme`` ``S.labelme.json``    :mod:`segfpn.formats.labelme`: polygons, holes as ``_background_``
``yolo``    ``S.yolo.txt``        :mod:`segfpn.formats.yolo`: one normalised polygon per instance
``cvat``    ``S.cvat.xml``        :mod:`segfpn.formats.cvat`: CVAT for images 1.1 polygons
``cutouts`` ``S.cutouts.zip``     :mod:`segfpn.formats.cutouts`: RGBA PNG per instance and segment
``csv``     ``S.detections.csv``  :mod:`segfpn.formats.table`: class, score, box, area, level
``parquet`` ``S.detections.parquet`` the same table as Parquet (needs pyarrow)
=========== ===================== ==================================================================

Which detections: those at or above a score threshold whose class is in a class filter
(:func:`select_instances`), the same choice the app's Instances view makes; the COCO files of
:mod:`segfpn.outputs` keep every detection. :func:`segfpn.outputs.write_result` writes the
formats asked for (``formats=``).
"""

from __future__ import annotations

from collections.abc import Iterable

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
    return tuple(f for f in EXPORT_FORMATS if f in asked)


def result_class_names(result: Result) -> list[str]:
    """The thing classes of the model, then its stuff classes (without the merged "things")."""
    names = list(result.instances.class_names)
    if result.semantic is not None:
        names += [n for n, i in zip(result.semantic.class_names, result.semantic.category_ids)
                  if i != 0 and n not in names]
    return names


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
