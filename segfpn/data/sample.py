"""One training example: an image with its instance targets and (optionally) its semantic map."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: Semantic label of pixels that carry no loss: void, crowd regions, unknown categories.
IGNORE_LABEL = 255


@dataclass
class Sample:
    """What a data set returns for one image, at the image's original resolution.

    image:    uint8 [H, W, 3], RGB.
    boxes:    float32 [G, 4], xyxy in image pixels (continuous coordinates: a box that covers
              pixel columns 3..5 has x1 = 3, x2 = 6).
    labels:   int64 [G], contiguous thing indices (``CategorySet.thing_label`` of the COCO id).
    masks:    bool [G, H, W], one visible-area mask per instance.
    semantic: int64 [H, W] semantic indices (``CategorySet.semantic_label``; 0 = the merged
              "things" class, 255 = ignore), or None when the data set has no panoptic labels.
    image_id: the COCO image id; file_name: the image file name, relative to the image folder.

    G may be 0; the arrays then keep their trailing shapes ([0, 4], [0], [0, H, W]).
    """

    image: np.ndarray
    boxes: np.ndarray
    labels: np.ndarray
    masks: np.ndarray
    semantic: np.ndarray | None
    image_id: int
    file_name: str

    @property
    def image_size(self) -> tuple[int, int]:
        """(H, W) of the image."""
        return int(self.image.shape[0]), int(self.image.shape[1])

    @property
    def num_instances(self) -> int:
        return int(self.labels.shape[0])

    def check(self) -> None:
        """Raise ValueError naming the first field whose shape or dtype breaks the contract above."""
        height, width = self.image_size
        num = self.num_instances
        expected = {
            "image": (self.image, np.uint8, (height, width, 3)),
            "boxes": (self.boxes, np.float32, (num, 4)),
            "labels": (self.labels, np.int64, (num,)),
            "masks": (self.masks, np.bool_, (num, height, width)),
        }
        if self.semantic is not None:
            expected["semantic"] = (self.semantic, np.int64, (height, width))
        for name, (array, dtype, shape) in expected.items():
            if array.dtype != dtype or array.shape != shape:
                raise ValueError(f"image {self.image_id}: Sample.{name} must be {np.dtype(dtype)} "
                                 f"{list(shape)}, got {array.dtype} {list(array.shape)}")
