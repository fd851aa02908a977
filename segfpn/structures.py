"""Result types handed to users, drawing and evaluation: numpy arrays in small dataclasses."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class Instances:
    """Detections of one image, sorted by descending score.

    boxes:  float32 [N, 4], xyxy in original-image pixels (continuous coordinates, no +1).
    scores: float32 [N] in [0, 1].
    labels: int64 [N], indices into ``class_names``.
    class_names: names of all the model's thing classes (index = label).
    category_ids: COCO category id of every class in ``class_names``.
    masks:  bool [N, H, W] at the original image size.
    levels: int64 [N], FPN level (2..5) the mask-head RoI of each detection was pooled from,
            that is the level the final box maps to under k = floor(4 + log2(sqrt(wh) / 224)).
    box_levels: int64 [N], FPN level the box-head RoI (the proposal) was pooled from.
    """

    boxes: np.ndarray
    scores: np.ndarray
    labels: np.ndarray
    class_names: list[str]
    category_ids: list[int]
    masks: np.ndarray
    levels: np.ndarray
    box_levels: np.ndarray

    def __len__(self) -> int:
        return int(self.scores.shape[0])

    @property
    def names(self) -> list[str]:
        """Class name of every detection."""
        return [self.class_names[int(i)] for i in self.labels]

    def select(self, keep: np.ndarray) -> "Instances":
        """A subset of the detections (``keep``: bool mask or index array)."""
        return Instances(boxes=self.boxes[keep], scores=self.scores[keep], labels=self.labels[keep],
                         class_names=self.class_names, category_ids=self.category_ids,
                         masks=self.masks[keep], levels=self.levels[keep],
                         box_levels=self.box_levels[keep])


@dataclass
class SemanticSegmentation:
    """Per-pixel semantic classes.

    labels: uint8 [H, W] (int32 if a model has over 255 classes), indices into ``class_names``.
    class_names / category_ids: the semantic head's classes; for a panoptic-separated head
    index 0 is the merged "things" class (category id 0).
    """

    labels: np.ndarray
    class_names: list[str]
    category_ids: list[int]


@dataclass
class Segment:
    """One panoptic segment. ``category_id`` is the COCO id; ``label`` the model index (thing
    label for things, semantic label for stuff). ``score``, ``instance`` (index into
    ``Result.instances``) and ``level`` are set for things only."""

    id: int
    category_id: int
    label: int
    class_name: str
    isthing: bool
    area: int
    score: float | None = None
    instance: int | None = None
    level: int | None = None

    def to_json(self) -> dict:
        out = {"id": self.id, "category_id": self.category_id, "label": self.label,
               "class_name": self.class_name, "isthing": self.isthing, "area": self.area}
        if self.isthing:
            out.update(score=self.score, instance=self.instance, level=self.level)
        return out


@dataclass
class PanopticSegmentation:
    """segment_ids: int32 [H, W], 0 = void; ``segments`` lists every id > 0 present."""

    segment_ids: np.ndarray
    segments: list[Segment]


@dataclass
class Result:
    """Everything ``Predictor.predict`` returns for one image.

    image_size: (H, W) of the original image; input_size: (h, w) after the resize;
    padded_size: (Hp, Wp) of the tensor the backbone saw.
    features: when asked for, ``{"c2".."c5", "p2".."p6"}`` -> float32 [C, h_l, w_l] tensors on CPU
    (level l has stride 2**l relative to the *resized* input).
    timings: seconds per stage ("preprocess", "backbone_fpn", "heads", "postprocess", ...).
    """

    image_size: tuple[int, int]
    input_size: tuple[int, int]
    padded_size: tuple[int, int]
    instances: Instances
    semantic: SemanticSegmentation | None = None
    panoptic: PanopticSegmentation | None = None
    features: dict | None = None
    timings: dict[str, float] = field(default_factory=dict)
    device: str = "cpu"
