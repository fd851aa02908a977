"""The checkpoint catalogue: entries are consistent, sourced facts are pinned, lookups help."""

from __future__ import annotations

import dataclasses
import json
import math
import re
import socket
from pathlib import Path, PurePosixPath
from urllib.parse import urlparse

import pytest

from segfpn.checkpoints import catalogue, weights_cli
from segfpn.checkpoints.catalogue import (
    CHECKPOINTS,
    KnownCheckpoint,
    UnknownCheckpointError,
    default_checkpoint,
    find,
    find_by_file_name,
)
from segfpn.config import ARCHITECTURES

from testdata import DATA


@pytest.fixture(autouse=True)
def _no_network(monkeypatch):
    """Nothing in this module may open a connection."""

    def refuse(address, *args, **kwargs):
        raise AssertionError(f"test tried to connect to {address}")

    monkeypatch.setattr(socket, "create_connection", refuse)


ENTRIES = list(CHECKPOINTS.values())


@pytest.mark.parametrize("entry", ENTRIES, ids=[c.name for c in ENTRIES])
def test_entry_is_consistent(entry: KnownCheckpoint):
    url = urlparse(entry.url)
    assert url.scheme == "https" and url.netloc
    assert urlparse(entry.source_url).scheme == "https"
    assert PurePosixPath(url.path).name == entry.file_name
    assert entry.arch in ARCHITECTURES

    if entry.format == "torchvision":
        assert entry.hash_algorithm == "sha256"
        assert re.fullmatch(r"[0-9a-f]{8}", entry.sha256_prefix)
        assert entry.file_name.endswith(f"-{entry.sha256_prefix}.pth")
        assert entry.arch.startswith(("maskrcnn_", "fasterrcnn_", "retinanet_resnet50"))
        assert entry.categories == "coco_instances_torchvision"
    else:
        assert entry.format == "detectron2"
        assert entry.hash_algorithm == "md5"
        assert re.fullmatch(r"[0-9a-f]{6}", entry.md5_prefix)
        assert entry.file_name == f"model_final_{entry.md5_prefix}.pkl"
        assert f"/{entry.name}/" in entry.url  # the config folder in the zoo URL
        assert entry.arch.startswith(("mask_rcnn_", "panoptic_fpn_", "faster_rcnn_", "retinanet_R_"))
        folder = {"panoptic": "COCO-PanopticSegmentation", "mask": "COCO-InstanceSegmentation"}.get(
            entry.arch.split("_")[0], "COCO-Detection")
        assert f"/detectron2/{folder}/" in entry.url
        assert entry.categories == ("coco_panoptic" if entry.arch.startswith("panoptic_fpn_")
                                    else "coco_instances")

    # Box AP for every model, mask AP for those with masks, PQ for the panoptic ones.
    assert "box_ap" in entry.metrics
    assert ("mask_ap" in entry.metrics) == ARCHITECTURES[entry.arch]().has_masks
    assert ("pq" in entry.metrics) == entry.is_panoptic
    for value in entry.metrics.values():
        assert isinstance(value, float) and 0 < value < 100
    assert entry.size_bytes is None or entry.size_bytes > 1_000_000


def test_names_and_file_names_are_unique():
    assert len({c.file_name for c in ENTRIES}) == len(ENTRIES)
    assert all(name == c.name for name, c in CHECKPOINTS.items())


# (url, hash prefix, box AP, mask AP, PQ) as published: torchvision 0.29.1 mask_rcnn.py,
# faster_rcnn.py and retinanet.py weights enums, detectron2 MODEL_ZOO.md (commit 02b5c4e). Pinned so a
# typo in the catalogue fails here.
PUBLISHED = {
    "maskrcnn_resnet50_fpn": (
        "https://download.pytorch.org/models/maskrcnn_resnet50_fpn_coco-bf2d0c1e.pth",
        "bf2d0c1e", 37.9, 34.6, None),
    "maskrcnn_resnet50_fpn_v2": (
        "https://download.pytorch.org/models/maskrcnn_resnet50_fpn_v2_coco-73cbd019.pth",
        "73cbd019", 47.4, 41.8, None),
    "panoptic_fpn_R_50_1x": (
        "https://dl.fbaipublicfiles.com/detectron2/COCO-PanopticSegmentation/panoptic_fpn_R_50_1x/"
        "139514544/model_final_dbfeb4.pkl", "dbfeb4", 37.6, 34.7, 39.4),
    "panoptic_fpn_R_50_3x": (
        "https://dl.fbaipublicfiles.com/detectron2/COCO-PanopticSegmentation/panoptic_fpn_R_50_3x/"
        "139514569/model_final_c10459.pkl", "c10459", 40.0, 36.5, 41.5),
    "panoptic_fpn_R_101_3x": (
        "https://dl.fbaipublicfiles.com/detectron2/COCO-PanopticSegmentation/panoptic_fpn_R_101_3x/"
        "139514519/model_final_cafdb1.pkl", "cafdb1", 42.4, 38.5, 43.0),
    "mask_rcnn_R_50_FPN_1x": (
        "https://dl.fbaipublicfiles.com/detectron2/COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_1x/"
        "137260431/model_final_a54504.pkl", "a54504", 38.6, 35.2, None),
    "mask_rcnn_R_50_FPN_3x": (
        "https://dl.fbaipublicfiles.com/detectron2/COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_3x/"
        "137849600/model_final_f10217.pkl", "f10217", 41.0, 37.2, None),
    "mask_rcnn_R_101_FPN_3x": (
        "https://dl.fbaipublicfiles.com/detectron2/COCO-InstanceSegmentation/mask_rcnn_R_101_FPN_3x/"
        "138205316/model_final_a3ec72.pkl", "a3ec72", 42.9, 38.6, None),
    "fasterrcnn_resnet50_fpn": (
        "https://download.pytorch.org/models/fasterrcnn_resnet50_fpn_coco-258fb6c6.pth", "258fb6c6", 37.0, None, None),
    "fasterrcnn_resnet50_fpn_v2": (
        "https://download.pytorch.org/models/fasterrcnn_resnet50_fpn_v2_coco-dd69338a.pth", "dd69338a", 46.7, None,
        None),
    "retinanet_resnet50_fpn": (
        "https://download.pytorch.org/models/retinanet_resnet50_fpn_coco-eeacb38b.pth", "eeacb38b", 36.4, None, None),
    "retinanet_resnet50_fpn_v2": (
        "https://download.pytorch.org/models/retinanet_resnet50_fpn_v2_coco-5905b1c5.pth", "5905b1c5", 41.5, None,
        None),
    "faster_rcnn_R_50_FPN_1x": (
        "https://dl.fbaipublicfiles.com/detectron2/COCO-Detection/faster_rcnn_R_50_FPN_1x/137257794/"
        "model_final_b275ba.pkl", "b275ba", 37.9, None, None),
    "faster_rcnn_R_50_FPN_3x": (
        "https://dl.fbaipublicfiles.com/detectron2/COCO-Detection/faster_rcnn_R_50_FPN_3x/137849458/"
        "model_final_280758.pkl", "280758", 40.2, None, None),
    "faster_rcnn_R_101_FPN_3x": (
        "https://dl.fbaipublicfiles.com/detectron2/COCO-Detection/faster_rcnn_R_101_FPN_3x/137851257/"
        "model_final_f6e8b1.pkl", "f6e8b1", 42.0, None, None),
    "retinanet_R_50_FPN_1x": (
        "https://dl.fbaipublicfiles.com/detectron2/COCO-Detection/retinanet_R_50_FPN_1x/190397773/"
        "model_final_bfca0b.pkl", "bfca0b", 37.4, None, None),
    "retinanet_R_50_FPN_3x": (
        "https://dl.fbaipublicfiles.com/detectron2/COCO-Detection/retinanet_R_50_FPN_3x/190397829/"
        "model_final_5bd44e.pkl", "5bd44e", 38.7, None, None),
    "retinanet_R_101_FPN_3x": (
        "https://dl.fbaipublicfiles.com/detectron2/COCO-Detection/retinanet_R_101_FPN_3x/190397697/"
        "model_final_971ab9.pkl", "971ab9", 40.4, None, None),
}


def test_published_facts():
    assert set(CHECKPOINTS) == set(PUBLISHED)
    for name, (url, prefix, box_ap, mask_ap, pq) in PUBLISHED.items():
        entry = CHECKPOINTS[name]
        assert (entry.url, entry.hash_prefix) == (url, prefix), name
        assert entry.metrics.get("box_ap") == box_ap, name
        assert entry.metrics.get("mask_ap") == mask_ap, name
        assert entry.metrics.get("pq") == pq, name
    # Sizes are published only roughly (torchvision's "_file_size" in MB); never as bytes here.
    assert CHECKPOINTS["maskrcnn_resnet50_fpn"].approx_size_mb == 169.84
    assert CHECKPOINTS["maskrcnn_resnet50_fpn_v2"].approx_size_mb == 177.219
    assert CHECKPOINTS["fasterrcnn_resnet50_fpn"].approx_size_mb == 159.743
    assert CHECKPOINTS["fasterrcnn_resnet50_fpn_v2"].approx_size_mb == 167.104
    assert CHECKPOINTS["retinanet_resnet50_fpn"].approx_size_mb == 130.267
    assert CHECKPOINTS["retinanet_resnet50_fpn_v2"].approx_size_mb == 146.037


def _float32_values(arch: str) -> int:
    """Values in segfpn's model of ``arch`` (built on the meta device: no memory, no time)."""
    import torch

    from segfpn.model.build import build_model

    with torch.device("meta"):
        model = build_model(ARCHITECTURES[arch]())
    return sum(v.numel() for v in model.state_dict().values())


def test_every_entry_has_a_download_limit_derived_from_published_facts():
    """torchvision: its published size in MiB (at least the bytes of its tensors, at most 2%
    above the published size); detectron2: the float32 values of the real files (key manifests
    for R50, R50 + the extra res4 blocks for R101), at least their bytes plus room for the pickle
    framing, at most 2% + 2 MiB above them."""
    import torch
    from torchvision.models import detection

    manifests = {"panoptic_fpn_R_50": "d2_panoptic_fpn_R_50_keys.json",
                 "mask_rcnn_R_50_FPN": "d2_mask_rcnn_R_50_FPN_keys.json",
                 "faster_rcnn_R_50_FPN": "d2_faster_rcnn_R_50_FPN_keys.json",
                 "retinanet_R_50_FPN": "d2_retinanet_R_50_FPN_keys.json"}
    for entry in ENTRIES:
        assert entry.max_size_bytes is not None, entry.name
        limit = entry.size_limit_bytes
        assert limit == entry.max_size_bytes and entry.size_bytes is None
        # In the zoo files, not in segfpn's model: 5 levels of 3 (RetinaNet: 9) cell anchors.
        cell_anchor_values = 5 * (9 if entry.arch.startswith("retinanet") else 3) * 4
        if entry.format == "torchvision":
            with torch.device("meta"):
                model = getattr(detection, entry.arch)(weights=None, weights_backbone=None)
            tensor_bytes = sum(v.numel() * v.element_size() for v in model.state_dict().values())
            published = entry.approx_size_mb * 2**20
            assert tensor_bytes < published < limit <= published * 1.02, entry.name
        else:
            values = catalogue._D2_FLOAT32_VALUES[entry.arch]
            if entry.arch in manifests:
                spec = json.loads((DATA / manifests[entry.arch]).read_text())
                assert values == spec["num_values_model_zoo_pkl"] == sum(
                    math.prod(k["shape"]) for k in spec["keys"] if k["in_model_zoo_pkl"])
            assert values == _float32_values(entry.arch) + cell_anchor_values, entry.name
            assert 4 * values + 600 * 250 < limit <= 4 * values * 1.02 + 2 * 2**20, entry.name


def test_size_limit_falls_back_and_is_validated(monkeypatch):
    assert KnownCheckpoint(**_entry(size_bytes=1000, max_size_bytes=2000)).size_limit_bytes == 1000
    assert KnownCheckpoint(**_entry(max_size_bytes=2000)).size_limit_bytes == 2000
    monkeypatch.setattr(catalogue, "UNKNOWN_SIZE_LIMIT_BYTES", 12345)
    assert KnownCheckpoint(**_entry()).size_limit_bytes == 12345
    with pytest.raises(ValueError, match="above max_size_bytes"):
        KnownCheckpoint(**_entry(size_bytes=3000, max_size_bytes=2000))
    for bad in (0, -5, 1.5):
        with pytest.raises(ValueError, match="max_size_bytes must be a positive"):
            KnownCheckpoint(**_entry(max_size_bytes=bad))


def test_default_is_the_best_panoptic_by_pq():
    best = max((c for c in ENTRIES if "pq" in c.metrics), key=lambda c: c.metrics["pq"])
    assert default_checkpoint() is best
    assert default_checkpoint().name == "panoptic_fpn_R_101_3x"
    assert default_checkpoint().is_panoptic


def test_default_follows_the_metrics(monkeypatch):
    better = dataclasses.replace(CHECKPOINTS["panoptic_fpn_R_50_1x"], metrics={
        "box_ap": 37.6, "mask_ap": 34.7, "pq": 99.0})
    # An instance-only model with huge AP must never become the panoptic default.
    instance = dataclasses.replace(CHECKPOINTS["mask_rcnn_R_50_FPN_3x"], metrics={
        "box_ap": 99.0, "mask_ap": 99.0})
    monkeypatch.setattr(catalogue, "CHECKPOINTS", {
        **CHECKPOINTS, better.name: better, instance.name: instance})
    assert default_checkpoint() is better


def test_find_accepts_names_config_files_and_file_names():
    assert find("panoptic_fpn_R_50_3x") is CHECKPOINTS["panoptic_fpn_R_50_3x"]
    assert find("panoptic_fpn_R_50_3x.yaml") is CHECKPOINTS["panoptic_fpn_R_50_3x"]
    assert find("model_final_cafdb1.pkl") is CHECKPOINTS["panoptic_fpn_R_101_3x"]
    assert find_by_file_name("maskrcnn_resnet50_fpn_coco-bf2d0c1e.pth").name == "maskrcnn_resnet50_fpn"
    assert find_by_file_name("nothing.pth") is None


def test_unknown_name_suggests_the_closest_and_lists_all():
    with pytest.raises(UnknownCheckpointError) as excinfo:
        find("panoptic_fpn_R50_3x")
    message = str(excinfo.value)
    assert message.startswith("unknown checkpoint 'panoptic_fpn_R50_3x'.")  # no KeyError quotes
    assert isinstance(excinfo.value, KeyError)  # callers may catch KeyError
    assert "Did you mean 'panoptic_fpn_R_50_3x'?" in message
    for name in CHECKPOINTS:
        assert name in message
    with pytest.raises(UnknownCheckpointError, match="Did you mean 'mask_rcnn_R_101_FPN_3x'"):
        find("mask_rcnn_R101_FPN_3x")
    with pytest.raises(UnknownCheckpointError) as excinfo:
        find("zzzz")
    assert "Did you mean" not in str(excinfo.value)


def _entry(**changes) -> dict:
    fields = dict(name="x", arch="panoptic_fpn_R_50", format="detectron2",
                  url="https://example.invalid/model_final_abcdef.pkl",
                  file_name="model_final_abcdef.pkl", categories="coco_panoptic",
                  metrics={"box_ap": 1.0, "mask_ap": 1.0, "pq": 1.0},
                  source_url="https://example.invalid/", md5_prefix="abcdef")
    fields.update(changes)
    return fields


def test_known_checkpoint_validates_and_is_immutable():
    entry = KnownCheckpoint(**_entry())
    with pytest.raises(ValueError, match="arch"):
        KnownCheckpoint(**_entry(arch="resnet50"))
    with pytest.raises(ValueError, match="exactly one"):
        KnownCheckpoint(**_entry(sha256_prefix="abcdef12"))
    with pytest.raises(ValueError, match="exactly one"):
        KnownCheckpoint(**_entry(md5_prefix=None))
    with pytest.raises(ValueError, match="hex"):
        KnownCheckpoint(**_entry(md5_prefix="ABCDEF"))
    with pytest.raises(dataclasses.FrozenInstanceError):
        entry.url = "https://elsewhere/"
    with pytest.raises(TypeError):
        entry.metrics["pq"] = 100.0
    hash(entry)  # usable as a dict key / in sets


def test_cli_list_marks_default_and_present(tmp_path, capsys):
    (tmp_path / "model_final_c10459.pkl").write_bytes(b"\0" * 3 * 2**20)
    assert weights_cli.main(["list", "--dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    rows = {line.split()[0]: line for line in out.splitlines() if line.split()}
    for name in CHECKPOINTS:
        assert name in rows
    assert "panoptic_fpn_R_101_3x *" in out
    assert rows["panoptic_fpn_R_50_3x"].split()[-1] == "yes"
    assert "3 MiB" in rows["panoptic_fpn_R_50_3x"]
    assert rows["panoptic_fpn_R_50_1x"].split()[-1] == "no"
    assert "43.0" in rows["panoptic_fpn_R_101_3x"] and "~170 MiB" in rows["maskrcnn_resnet50_fpn"]
    assert "<= 252 MiB" in rows["panoptic_fpn_R_101_3x"]  # no published size: the download limit


def test_weights_readme_lists_every_checkpoint():
    readme = (Path(__file__).resolve().parents[2] / "weights" / "README.md").read_text()
    for entry in ENTRIES:
        assert entry.url in readme, entry.name
        assert f"`{entry.name}`" in readme
    assert f"`{default_checkpoint().name}` (default)" in readme
