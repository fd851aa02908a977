"""The checkpoints segfpn knows by name: where they live, how to check them, what they score.

Each :class:`KnownCheckpoint` carries what torchvision's weights enums carry (url, categories,
metrics) plus what a download needs to be verified: the hash prefix the publisher put in the file
name. torchvision names its files ``<model>_coco-<first 8 hex of the sha256>.pth``; detectron2 names
its files ``model_final_<first 6 hex of the md5>.pkl``.

Only published facts are stored. Where a fact is not published (the exact byte size of every file
here), the field is ``None``; what a download may not exceed (``max_size_bytes``) is then derived
from published facts with a stated margin (see :func:`_limit_from_mib` and
:func:`_limit_from_float32_values`).

    >>> from segfpn.checkpoints.catalogue import find, default_checkpoint
    >>> find("panoptic_fpn_R_50_3x").metrics["pq"]
    41.5
    >>> default_checkpoint().name
    'panoptic_fpn_R_101_3x'
"""

from __future__ import annotations

import difflib
import math
import re
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Literal, Mapping

from segfpn.config import ARCHITECTURES

CheckpointFormat = Literal["torchvision", "detectron2"]
CategoriesKind = Literal["coco_instances_torchvision", "coco_instances", "coco_panoptic"]

_HEX = re.compile(r"[0-9a-f]+")

#: The most bytes a download may have when a checkpoint carries neither an exact size nor a limit
#: (an entry made by hand): 1 GiB, four times the largest known file.
UNKNOWN_SIZE_LIMIT_BYTES = 1 << 30


@dataclass(frozen=True, kw_only=True)
class KnownCheckpoint:
    """One published checkpoint.

    ``name``: the catalogue key (detectron2's config name without ``.yaml``, torchvision's
    builder name). ``arch``: a key of :data:`segfpn.config.ARCHITECTURES`.
    ``format``: how the file is laid out ("torchvision" state-dict ``.pth``, "detectron2" pickle).
    ``file_name``: the name of the file on the publisher's server and in ``weights/``.
    ``size_bytes``: exact size when published, else ``None``. ``approx_size_mb``: the rounded
    size the publisher lists (torchvision: MiB), for display only. ``max_size_bytes``: the most
    bytes a download of it may have when the exact size is not known (see
    :attr:`size_limit_bytes`). ``sha256_prefix`` / ``md5_prefix``: exactly one
    is set; the downloaded file's digest must start with it.
    ``categories``: which label space the class indices refer to:
    "coco_instances_torchvision" (91 ids with "N/A" gaps, background first),
    "coco_instances" (80 contiguous thing classes), "coco_panoptic" (80 things + 53 stuff).
    ``metrics``: as published, on COCO val2017: "box_ap"; "mask_ap" for models with masks; "pq"
    for panoptic models.
    ``source_url``: the page the facts were copied from.
    """

    name: str
    arch: str
    format: CheckpointFormat
    url: str
    file_name: str
    categories: CategoriesKind
    metrics: Mapping[str, float] = field(default_factory=dict, hash=False)
    source_url: str
    size_bytes: int | None = None
    approx_size_mb: float | None = None
    max_size_bytes: int | None = None
    sha256_prefix: str | None = None
    md5_prefix: str | None = None
    notes: str = ""

    def __post_init__(self) -> None:
        if self.arch not in ARCHITECTURES:
            raise ValueError(f"checkpoint {self.name!r}: arch {self.arch!r} is not one of "
                             f"{sorted(ARCHITECTURES)}")
        if (self.sha256_prefix is None) == (self.md5_prefix is None):
            raise ValueError(f"checkpoint {self.name!r}: set exactly one of sha256_prefix and "
                             f"md5_prefix")
        prefix = self.hash_prefix
        if not _HEX.fullmatch(prefix):
            raise ValueError(f"checkpoint {self.name!r}: hash prefix {prefix!r} must be "
                             f"lowercase hex")
        for field_name in ("size_bytes", "max_size_bytes"):
            value = getattr(self, field_name)
            if value is not None and (not isinstance(value, int) or value <= 0):
                raise ValueError(f"checkpoint {self.name!r}: {field_name} must be a positive number "
                                 f"of bytes, got {value!r}")
        if (self.size_bytes is not None and self.max_size_bytes is not None
                and self.size_bytes > self.max_size_bytes):
            raise ValueError(f"checkpoint {self.name!r}: size_bytes {self.size_bytes} is above "
                             f"max_size_bytes {self.max_size_bytes}")
        object.__setattr__(self, "metrics", MappingProxyType(dict(self.metrics)))

    @property
    def hash_algorithm(self) -> Literal["sha256", "md5"]:
        """The hashlib name of the digest the prefix belongs to."""
        return "sha256" if self.sha256_prefix is not None else "md5"

    @property
    def hash_prefix(self) -> str:
        """The leading hex digits the file's digest must start with."""
        return self.sha256_prefix if self.sha256_prefix is not None else self.md5_prefix

    @property
    def is_panoptic(self) -> bool:
        return self.categories == "coco_panoptic"

    @property
    def size_limit_bytes(self) -> int:
        """The most bytes a download of this file may have: the exact size when known, else
        ``max_size_bytes``, else :data:`UNKNOWN_SIZE_LIMIT_BYTES`."""
        if self.size_bytes is not None:
            return self.size_bytes
        if self.max_size_bytes is not None:
            return self.max_size_bytes
        return UNKNOWN_SIZE_LIMIT_BYTES


def _limit_from_mib(published_mib: float) -> int:
    """A download limit from a size published in MiB to two or three decimals: that size, plus
    half a unit of its last decimal, plus 1%. (torchvision's "_file_size" is in MiB: the
    maskrcnn_resnet50_fpn state dict alone is 169.78 MiB of tensors, its file 169.84.)"""
    return math.ceil((published_mib + 0.005) * 1.01 * 2**20)


def _limit_from_float32_values(num_values: int) -> int:
    """A download limit for a detectron2 model-zoo pickle of ``num_values`` float32 values: their
    bytes plus 1%, plus 1 MiB for the pickle framing (a key and a numpy header, about 200 bytes,
    for each of at most 600 arrays, and the state dict's ``_metadata``)."""
    return math.ceil(num_values * 4 * 1.01) + 2**20


# ---------------------------------------------------------------------------------------------
# torchvision. Source: torchvision 0.29.1 `torchvision/models/detection/mask_rcnn.py`,
# `faster_rcnn.py` and `retinanet.py` (the COCO_V1 entries of MaskRCNN_ResNet50_FPN_Weights,
# FasterRCNN_ResNet50_FPN_Weights, RetinaNet_ResNet50_FPN_Weights and their _V2_ variants): url,
# meta["_metrics"]["COCO-val2017"]["box_map"/"mask_map"], meta["_file_size"] (the size in MB
# rendered as "File size" in the torchvision model docs, in MiB). torchvision publishes no exact
# byte count, so size_bytes stays None; max_size_bytes is derived from "_file_size". The v2
# Mask R-CNN weights were added in pytorch/vision PR #5773, RetinaNet's in #5756.

_TORCHVISION_DOCS = ("https://docs.pytorch.org/vision/stable/models/generated/"
                     "torchvision.models.detection.")


def _torchvision(builder: str, *, sha256_prefix: str, weights_enum: str, metrics: dict[str, float],
                 file_size_mib: float, notes: str) -> KnownCheckpoint:
    """A COCO_V1 entry of torchvision's ``weights_enum``, built from its url and meta."""
    file_name = f"{builder}_coco-{sha256_prefix}.pth"
    return KnownCheckpoint(
        name=builder,
        arch=builder,
        format="torchvision",
        url=f"https://download.pytorch.org/models/{file_name}",
        file_name=file_name,
        categories="coco_instances_torchvision",
        metrics=metrics,
        source_url=f"{_TORCHVISION_DOCS}{builder}.html",
        approx_size_mb=file_size_mib,
        max_size_bytes=_limit_from_mib(file_size_mib),
        sha256_prefix=sha256_prefix,
        notes=f"torchvision {weights_enum}.COCO_V1 ({notes}).",
    )


_TORCHVISION = (
    _torchvision("maskrcnn_resnet50_fpn", sha256_prefix="bf2d0c1e", weights_enum="MaskRCNN_ResNet50_FPN_Weights",
                 metrics={"box_ap": 37.9, "mask_ap": 34.6}, file_size_mib=169.84, notes="the paper's recipe"),
    _torchvision("maskrcnn_resnet50_fpn_v2", sha256_prefix="73cbd019",
                 weights_enum="MaskRCNN_ResNet50_FPN_V2_Weights", metrics={"box_ap": 47.4, "mask_ap": 41.8},
                 file_size_mib=177.219, notes="improved recipe, pytorch/vision#5773"),
    _torchvision("fasterrcnn_resnet50_fpn", sha256_prefix="258fb6c6", weights_enum="FasterRCNN_ResNet50_FPN_Weights",
                 metrics={"box_ap": 37.0}, file_size_mib=159.743, notes="boxes only"),
    _torchvision("fasterrcnn_resnet50_fpn_v2", sha256_prefix="dd69338a",
                 weights_enum="FasterRCNN_ResNet50_FPN_V2_Weights", metrics={"box_ap": 46.7},
                 file_size_mib=167.104, notes="boxes only, improved recipe"),
    _torchvision("retinanet_resnet50_fpn", sha256_prefix="eeacb38b", weights_enum="RetinaNet_ResNet50_FPN_Weights",
                 metrics={"box_ap": 36.4}, file_size_mib=130.267, notes="one-stage, boxes only"),
    _torchvision("retinanet_resnet50_fpn_v2", sha256_prefix="5905b1c5",
                 weights_enum="RetinaNet_ResNet50_FPN_V2_Weights", metrics={"box_ap": 41.5},
                 file_size_mib=146.037, notes="one-stage, boxes only, pytorch/vision#5756"),
)


# ---------------------------------------------------------------------------------------------
# detectron2. Source: detectron2 MODEL_ZOO.md at commit 02b5c4e295e990042a714712c21dc79b731e8833,
# its tables of COCO-PanopticSegmentation, COCO-InstanceSegmentation and COCO-Detection (box AP
# only): url, model id, box AP / mask AP / PQ. The six
# hex digits of model_final_<md5>.pkl are the start of the file's md5. No file sizes are published.
# The LSJ "new_baselines" are left out on purpose: their key layout (SyncBN, 4conv1fc box head)
# matches none of our ARCHITECTURES.

_D2_ZOO = "https://github.com/facebookresearch/detectron2/blob/main/MODEL_ZOO.md"
_D2_BASE = "https://dl.fbaipublicfiles.com/detectron2"

# The float32 values each architecture's model-zoo pickle holds, for its download limit. R50:
# counted from the key manifests of the real files (tests/data/d2_*_keys.json,
# "num_values_model_zoo_pkl"; 5 cell_anchors arrays of 12 values (RetinaNet: 36) included). R101:
# the R50 count plus the 17 more res4 blocks, 19,044,352 values (ResNet-101 minus ResNet-50,
# counted on segfpn's models, whose other layers match those files).
# tests/checkpoints/test_catalogue.py checks both counts.
_D2_FLOAT32_VALUES = {
    "panoptic_fpn_R_50": 46_080_290,
    "panoptic_fpn_R_101": 46_080_290 + 19_044_352,
    "mask_rcnn_R_50_FPN": 44_449_516,
    "mask_rcnn_R_101_FPN": 44_449_516 + 19_044_352,
    "faster_rcnn_R_50_FPN": 41_806_236,
    "faster_rcnn_R_101_FPN": 41_806_236 + 19_044_352,
    "retinanet_R_50_FPN": 38_021_992,
    "retinanet_R_101_FPN": 38_021_992 + 19_044_352,
}


def _detectron2(config: str, *, folder: str, model_id: int, md5_prefix: str, arch: str,
                metrics: dict[str, float]) -> KnownCheckpoint:
    """An entry of the detectron2 model zoo, built from its table row."""
    file_name = f"model_final_{md5_prefix}.pkl"
    panoptic = folder == "COCO-PanopticSegmentation"
    return KnownCheckpoint(
        name=config,
        arch=arch,
        format="detectron2",
        url=f"{_D2_BASE}/{folder}/{config}/{model_id}/{file_name}",
        file_name=file_name,
        categories="coco_panoptic" if panoptic else "coco_instances",
        metrics=metrics,
        source_url=_D2_ZOO,
        max_size_bytes=_limit_from_float32_values(_D2_FLOAT32_VALUES[arch]),
        md5_prefix=md5_prefix,
        notes=f"detectron2 configs/{folder}/{config}.yaml, model id {model_id}.",
    )


_DETECTRON2 = (
    _detectron2("panoptic_fpn_R_50_1x", folder="COCO-PanopticSegmentation", model_id=139514544,
                md5_prefix="dbfeb4", arch="panoptic_fpn_R_50",
                metrics={"box_ap": 37.6, "mask_ap": 34.7, "pq": 39.4}),
    _detectron2("panoptic_fpn_R_50_3x", folder="COCO-PanopticSegmentation", model_id=139514569,
                md5_prefix="c10459", arch="panoptic_fpn_R_50",
                metrics={"box_ap": 40.0, "mask_ap": 36.5, "pq": 41.5}),
    _detectron2("panoptic_fpn_R_101_3x", folder="COCO-PanopticSegmentation", model_id=139514519,
                md5_prefix="cafdb1", arch="panoptic_fpn_R_101",
                metrics={"box_ap": 42.4, "mask_ap": 38.5, "pq": 43.0}),
    _detectron2("mask_rcnn_R_50_FPN_1x", folder="COCO-InstanceSegmentation", model_id=137260431,
                md5_prefix="a54504", arch="mask_rcnn_R_50_FPN",
                metrics={"box_ap": 38.6, "mask_ap": 35.2}),
    _detectron2("mask_rcnn_R_50_FPN_3x", folder="COCO-InstanceSegmentation", model_id=137849600,
                md5_prefix="f10217", arch="mask_rcnn_R_50_FPN",
                metrics={"box_ap": 41.0, "mask_ap": 37.2}),
    _detectron2("mask_rcnn_R_101_FPN_3x", folder="COCO-InstanceSegmentation", model_id=138205316,
                md5_prefix="a3ec72", arch="mask_rcnn_R_101_FPN",
                metrics={"box_ap": 42.9, "mask_ap": 38.6}),
    _detectron2("faster_rcnn_R_50_FPN_1x", folder="COCO-Detection", model_id=137257794,
                md5_prefix="b275ba", arch="faster_rcnn_R_50_FPN", metrics={"box_ap": 37.9}),
    _detectron2("faster_rcnn_R_50_FPN_3x", folder="COCO-Detection", model_id=137849458,
                md5_prefix="280758", arch="faster_rcnn_R_50_FPN", metrics={"box_ap": 40.2}),
    _detectron2("faster_rcnn_R_101_FPN_3x", folder="COCO-Detection", model_id=137851257,
                md5_prefix="f6e8b1", arch="faster_rcnn_R_101_FPN", metrics={"box_ap": 42.0}),
    _detectron2("retinanet_R_50_FPN_1x", folder="COCO-Detection", model_id=190397773,
                md5_prefix="bfca0b", arch="retinanet_R_50_FPN", metrics={"box_ap": 37.4}),
    _detectron2("retinanet_R_50_FPN_3x", folder="COCO-Detection", model_id=190397829,
                md5_prefix="5bd44e", arch="retinanet_R_50_FPN", metrics={"box_ap": 38.7}),
    _detectron2("retinanet_R_101_FPN_3x", folder="COCO-Detection", model_id=190397697,
                md5_prefix="971ab9", arch="retinanet_R_101_FPN", metrics={"box_ap": 40.4}),
)

#: Every known checkpoint by name, in display order (torchvision first, then detectron2).
CHECKPOINTS: Mapping[str, KnownCheckpoint] = MappingProxyType(
    {c.name: c for c in (*_TORCHVISION, *_DETECTRON2)})


class UnknownCheckpointError(KeyError):
    """Raised by :func:`find` for a name that is not in the catalogue.

    A :class:`KeyError` (so ``except KeyError`` works) whose message prints without the quotes
    that :class:`KeyError` adds.
    """

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


def names() -> list[str]:
    """The known checkpoint names, in display order."""
    return list(CHECKPOINTS)


def find(name: str) -> KnownCheckpoint:
    """The checkpoint called ``name`` (a catalogue name, or a detectron2 config file name).

    ``"panoptic_fpn_R_50_3x.yaml"`` and the published file name (``"model_final_c10459.pkl"``)
    are accepted too. Raises :class:`UnknownCheckpointError` listing the known names and the
    closest match for anything else.
    """
    key = name.strip()
    if key.endswith(".yaml"):
        key = key[: -len(".yaml")]
    if key in CHECKPOINTS:
        return CHECKPOINTS[key]
    by_file = find_by_file_name(key)
    if by_file is not None:
        return by_file
    close = difflib.get_close_matches(key, list(CHECKPOINTS), n=1, cutoff=0.5)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    raise UnknownCheckpointError(
        f"unknown checkpoint {name!r}.{hint} Known checkpoints: {', '.join(CHECKPOINTS)}. "
        f"To use a file of your own, see weights/README.md.")


def find_by_file_name(file_name: str) -> KnownCheckpoint | None:
    """The checkpoint whose published file is called ``file_name`` (a base name), or ``None``."""
    for checkpoint in CHECKPOINTS.values():
        if checkpoint.file_name == file_name:
            return checkpoint
    return None


def default_checkpoint() -> KnownCheckpoint:
    """The checkpoint the app uses by default: the panoptic one with the highest published PQ."""
    panoptic = [c for c in CHECKPOINTS.values() if c.is_panoptic and "pq" in c.metrics]
    if not panoptic:
        raise LookupError("the catalogue holds no panoptic checkpoint with a published PQ")
    return max(panoptic, key=lambda c: c.metrics["pq"])
