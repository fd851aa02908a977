"""segfpn: Mask R-CNN and Panoptic FPN on a Feature Pyramid Network.

    import segfpn
    model = segfpn.load("weights/maskrcnn_resnet50_fpn_coco-bf2d0c1e.pth")
    result = model.predict("photo.jpg")   # result.instances, result.semantic, result.panoptic
"""

from segfpn.categories import Category, CategorySet
from segfpn.checkpoints.errors import CheckpointError, UnsafeCheckpointError
from segfpn.config import ARCHITECTURES, ModelConfig
from segfpn.imageio import ImageError, read_image
from segfpn.predictor import Predictor, load
from segfpn.structures import Instances, PanopticSegmentation, Result, Segment, SemanticSegmentation

__all__ = [
    "ARCHITECTURES", "Category", "CategorySet", "CheckpointError", "ImageError", "Instances", "ModelConfig",
    "PanopticSegmentation", "Predictor", "Result", "Segment", "SemanticSegmentation", "UnsafeCheckpointError",
    "load", "read_image",
]
__version__ = "0.1.0"
