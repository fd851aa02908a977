"""The one checkpoint resolver (segfpn.load, segfpn predict, the app): paths, known names in the
weights folder and in torchvision's own cache, offline, fallbacks, and the reasons it gives."""

from __future__ import annotations

import hashlib
from types import MappingProxyType

import pytest

from segfpn.checkpoints import catalogue, resolve
from segfpn.checkpoints.resolve import (BUNDLED_CHECKPOINT, CheckpointUnavailable, Unavailable, candidates, locate,
                                        resolve_first)


@pytest.fixture
def isolated(tmp_path, monkeypatch):
    """Empty weights folder and torch cache; downloads impossible (nothing listens on port 9)."""
    monkeypatch.setenv("SEGFPN_WEIGHTS_DIR", str(tmp_path / "weights"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("SEGFPN_BASE_URL", "http://127.0.0.1:9/")
    monkeypatch.delenv("SEGFPN_OFFLINE", raising=False)
    return tmp_path


def fake_torchvision_entry(monkeypatch, payload: bytes) -> catalogue.KnownCheckpoint:
    """A torchvision-format catalogue entry whose hash prefix is that of ``payload``."""
    sha = hashlib.sha256(payload).hexdigest()
    entry = catalogue.KnownCheckpoint(
        name="tv_fake", arch="maskrcnn_resnet50_fpn", format="torchvision",
        url=f"https://download.example.invalid/models/tv_fake_coco-{sha[:8]}.pth",
        file_name=f"tv_fake_coco-{sha[:8]}.pth", categories="coco_instances_torchvision",
        metrics={"box_ap": 0.0, "mask_ap": 0.0}, source_url="tests", sha256_prefix=sha[:8],
        max_size_bytes=1 << 20)
    monkeypatch.setattr(catalogue, "CHECKPOINTS", MappingProxyType({**catalogue.CHECKPOINTS, entry.name: entry}))
    return entry


def test_paths_and_names(isolated):
    weights = isolated / "w.pkl"
    weights.write_bytes(b"x")
    assert locate(str(weights)) == weights
    folder = locate(str(isolated))
    assert isinstance(folder, Unavailable) and "is a folder" in folder.reason
    missing = locate(str(isolated / "nope.safetensors"))
    assert isinstance(missing, Unavailable) and "does not exist" in missing.reason
    typo = locate("panoptic_fpn_R_50_3")
    assert isinstance(typo, Unavailable) and "panoptic_fpn_R_50_3x" in typo.reason


def test_known_name_in_the_weights_folder_needs_no_network(isolated):
    entry = catalogue.find("panoptic_fpn_R_50_3x")
    (isolated / "weights").mkdir()
    (isolated / "weights" / entry.file_name).write_bytes(b"x")
    assert locate(entry.name) == isolated / "weights" / entry.file_name


def test_torchvision_files_are_taken_from_torchvisions_cache(isolated, monkeypatch):
    payload = b"a torchvision checkpoint"
    entry = fake_torchvision_entry(monkeypatch, payload)
    cached = isolated / "torch" / "hub" / "checkpoints" / entry.file_name
    cached.parent.mkdir(parents=True)
    cached.write_bytes(payload)
    assert locate(entry.name, download_missing=False) == cached
    cached.write_bytes(b"damaged")  # the hash no longer fits: not used
    found = locate(entry.name, download_missing=False)
    assert isinstance(found, Unavailable) and found.url and found.dest == isolated / "weights" / entry.file_name


def test_offline_and_failed_downloads_say_what_to_fetch(isolated, monkeypatch):
    monkeypatch.setenv("SEGFPN_OFFLINE", "1")
    offline = locate("panoptic_fpn_R_50_3x")
    assert isinstance(offline, Unavailable) and "SEGFPN_OFFLINE=1" in offline.reason
    assert "Fetch http://127.0.0.1:9/model_final_c10459.pkl" in offline.message()
    monkeypatch.delenv("SEGFPN_OFFLINE")
    refused = locate("panoptic_fpn_R_50_3x", retries=0, timeout=2)
    assert isinstance(refused, Unavailable) and "could not download it" in refused.reason
    leftovers = list((isolated / "weights").glob("*")) if (isolated / "weights").is_dir() else []
    assert leftovers == []


def test_candidates_fall_back_to_the_bundled_model(isolated):
    default = catalogue.default_checkpoint().name
    assert candidates(None) == [default, str(BUNDLED_CHECKPOINT)]
    assert candidates("a.pkl, b") == ["a.pkl", "b", str(BUNDLED_CHECKPOINT)]
    assert candidates(["x"], fallback=False) == ["x"]
    path, chosen, problems = resolve_first(candidates(None), download_missing=False)
    assert path == BUNDLED_CHECKPOINT and chosen == str(BUNDLED_CHECKPOINT)
    assert [p.candidate for p in problems] == [default]
    with pytest.raises(CheckpointUnavailable, match="is not available") as info:
        resolve_first(["missing.pkl", "also_missing"], download_missing=False)
    assert len(info.value.problems) == 2


def test_segfpn_load_goes_through_the_resolver(isolated, monkeypatch):
    import segfpn

    monkeypatch.setattr(resolve, "BUNDLED_CHECKPOINT", BUNDLED_CHECKPOINT)
    with pytest.raises(CheckpointUnavailable, match="neither a file nor a known checkpoint"):
        segfpn.load("no_such_model", device="cpu")
    assert segfpn.load(BUNDLED_CHECKPOINT, device="cpu").arch


def test_weights_list_and_verify_show_the_bundled_model(isolated, capsys, monkeypatch):
    from segfpn.checkpoints import weights_cli

    assert weights_cli.main(["list"]) == 0
    listed = capsys.readouterr().out
    assert "bundled" in listed and str(BUNDLED_CHECKPOINT) in listed
    assert weights_cli.main(["verify"]) == 0
    assert "bundled: ok" in capsys.readouterr().out
    tampered = isolated / "bundled.safetensors"
    tampered.write_bytes(BUNDLED_CHECKPOINT.read_bytes()[:-1] + b"\0")
    monkeypatch.setattr(weights_cli, "BUNDLED_CHECKPOINT", tampered)
    assert weights_cli.main(["verify"]) == 1
    assert "bundled: FAILED" in capsys.readouterr().err
