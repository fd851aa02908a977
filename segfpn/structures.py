"""Result types handed to users, drawing and evaluation: numpy arrays in small dataclasses."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(eq=False)
class InstanceMasks:
    """N binary masks of one H x W image, each stored only inside its region.

    crops: N bool arrays, ``crops[i]`` of shape (y1 - y0, x1 - x0) for ``regions[i]``.
    regions: int64 [N, 4] (y0, y1, x0, x1), half-open, inside the image; every pixel of mask i
    outside ``regions[i]`` is False. image_size: (H, W).

    A full frame costs H x W bytes per mask (2.4 GB for 100 masks of a 6000x4000 photo), so
    frames are made only when asked for: ``masks[i]`` is mask i as bool [H, W] and
    ``np.asarray(masks)`` all of them as bool [N, H, W]; ``masks[keep]`` (a slice, a bool mask or
    an index array) is another :class:`InstanceMasks`.
    """

    crops: list[np.ndarray]
    regions: np.ndarray
    image_size: tuple[int, int]

    def __post_init__(self) -> None:
        self.regions = np.asarray(self.regions, dtype=np.int64).reshape(-1, 4)
        self.image_size = (int(self.image_size[0]), int(self.image_size[1]))
        if len(self.crops) != len(self.regions):
            raise ValueError(f"{len(self.crops)} mask crops but {len(self.regions)} regions")
        h, w = self.image_size
        for crop, (y0, y1, x0, x1) in zip(self.crops, self.regions.tolist()):
            if crop.dtype != bool or crop.shape != (max(y1 - y0, 0), max(x1 - x0, 0)):
                raise ValueError(f"a mask crop is {crop.dtype} {crop.shape}, its region (y0, y1, x0, x1) "
                                 f"{(y0, y1, x0, x1)}: crops must be bool arrays of their region's size")
            if y1 > y0 and x1 > x0 and not (0 <= y0 and y1 <= h and 0 <= x0 and x1 <= w):
                raise ValueError(f"mask region {(y0, y1, x0, x1)} lies outside the {w}x{h} image")

    @classmethod
    def from_array(cls, masks: np.ndarray) -> "InstanceMasks":
        """Crops of full bool masks [N, H, W], each to the bounding box of its pixels."""
        masks = np.asarray(masks)
        if masks.ndim != 3 or masks.dtype != bool:
            raise ValueError(f"masks must be bool [N, H, W], got {masks.dtype} {masks.shape}")
        crops, regions = [], []
        for mask in masks:
            rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
            if len(rows) == 0:
                crops.append(np.zeros((0, 0), dtype=bool))
                regions.append((0, 0, 0, 0))
                continue
            y0, y1, x0, x1 = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
            crops.append(np.ascontiguousarray(mask[y0:y1, x0:x1]))
            regions.append((y0, y1, x0, x1))
        return cls(crops=crops, regions=np.asarray(regions, dtype=np.int64).reshape(-1, 4),
                   image_size=masks.shape[1:])

    def __len__(self) -> int:
        return len(self.crops)

    @property
    def shape(self) -> tuple[int, int, int]:
        return (len(self.crops), *self.image_size)

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(bool)

    @property
    def ndim(self) -> int:
        return 3

    @property
    def nbytes(self) -> int:
        """Bytes held (crops and regions), not the N x H x W of full frames."""
        return sum(c.nbytes for c in self.crops) + self.regions.nbytes

    def bounds(self, index: int) -> tuple[slice, slice] | None:
        """(rows, cols) of mask ``index``'s region in the image, None when it is empty."""
        y0, y1, x0, x1 = (int(v) for v in self.regions[index])
        return (slice(y0, y1), slice(x0, x1)) if y1 > y0 and x1 > x0 else None

    def frame(self, index: int) -> np.ndarray:
        """Mask ``index`` as a full bool [H, W] frame."""
        out = np.zeros(self.image_size, dtype=bool)
        bounds = self.bounds(index)
        if bounds is not None:
            out[bounds] = self.crops[index]
        return out

    def areas(self) -> np.ndarray:
        """int64 [N]: pixels of each mask."""
        return np.asarray([int(np.count_nonzero(c)) for c in self.crops], dtype=np.int64)

    def __getitem__(self, index):
        if isinstance(index, (int, np.integer)):
            return self.frame(int(index))
        picked = np.arange(len(self.crops))[index]
        return InstanceMasks(crops=[self.crops[i] for i in picked], regions=self.regions[picked],
                             image_size=self.image_size)

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        out = np.zeros(self.shape, dtype=bool)
        for i in range(len(self.crops)):
            bounds = self.bounds(i)
            if bounds is not None:
                out[i][bounds] = self.crops[i]
        return out if dtype is None else out.astype(dtype)


@dataclass
class Instances:
    """Detections of one image, sorted by descending score.

    boxes:  float32 [N, 4], xyxy in original-image pixels (continuous coordinates, no +1).
    scores: float32 [N] in [0, 1].
    labels: int64 [N], indices into ``class_names``.
    class_names: names of all the model's thing classes (index = label).
    category_ids: COCO category id of every class in ``class_names``.
    masks:  :class:`InstanceMasks`: N bool masks at the original image size, each kept inside
            its region (``masks[i]`` is bool [H, W], ``np.asarray(masks)`` bool [N, H, W]); a
            bool [N, H, W] array given here is cropped. None for a model that predicts boxes
            only (Faster R-CNN, RetinaNet).
    levels: int64 [N], the pyramid level of each detection. Two-stage models: the level (2..5)
            of the final box's RoI, k = floor(4 + log2(sqrt(wh) / 224)) (the mask head pools it).
            RetinaNet: the level (3..7) of the anchor that produced the detection.
    box_levels: int64 [N], two-stage models: the level the box-head RoI (the proposal) was
            pooled from; RetinaNet: the same as ``levels``.
    mask_probs: float32 [N, M, M], the mask head's probabilities of each detection's class
            before pasting (M = 28), or None.
    """

    boxes: np.ndarray
    scores: np.ndarray
    labels: np.ndarray
    class_names: list[str]
    category_ids: list[int]
    masks: InstanceMasks | None
    levels: np.ndarray
    box_levels: np.ndarray
    mask_probs: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.masks is not None and not isinstance(self.masks, InstanceMasks):
            self.masks = InstanceMasks.from_array(np.asarray(self.masks))

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
                         masks=None if self.masks is None else self.masks[keep], levels=self.levels[keep],
                         box_levels=self.box_levels[keep],
                         mask_probs=None if self.mask_probs is None else self.mask_probs[keep])


@dataclass
class SemanticSegmentation:
    """Per-pixel semantic classes.

    labels: uint8 [H, W] (int32 if a model has over 256 classes), indices into ``class_names``.
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
