"""Training data: COCO instance/panoptic data sets, augmentation, and a synthetic shapes set.

    from segfpn.data import CocoDataset, generate, synthetic_categories
    paths = generate("data/shapes", num_images=200, seed=0)
    dataset = paths.dataset()          # CocoDataset of Sample(image, boxes, labels, masks, semantic)
"""

from segfpn.data.coco import CocoDataset, decode_segmentation
from segfpn.data.sample import IGNORE_LABEL, Sample
from segfpn.data.synthetic import SyntheticPaths, generate, make_scene, synthetic_categories
from segfpn.data.transforms import choose_min_size, collate, horizontal_flip, random_horizontal_flip

__all__ = [
    "IGNORE_LABEL", "CocoDataset", "Sample", "SyntheticPaths", "choose_min_size", "collate",
    "decode_segmentation", "generate", "horizontal_flip", "make_scene", "random_horizontal_flip",
    "synthetic_categories",
]
