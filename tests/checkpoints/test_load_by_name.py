"""segfpn.load(NAME): downloads a known checkpoint on first use, then works offline from weights/.

A real HTTP server on 127.0.0.1 plays the publisher; the catalogue gets one extra entry for the
small detectron2-format checkpoint in tests/data (its md5 prefix is in its file name, as in the zoo).
"""

import functools
import hashlib
import http.server
import shutil
import threading
from types import MappingProxyType

import pytest

import segfpn
from segfpn.checkpoints import catalogue
from segfpn.checkpoints.errors import CheckpointError


@pytest.fixture
def served_zoo(tmp_path, monkeypatch, d2_mini_checkpoint):
    md5 = hashlib.md5(d2_mini_checkpoint.read_bytes()).hexdigest()
    entry = catalogue.KnownCheckpoint(
        name="panoptic_fpn_mini", arch="panoptic_fpn_R_50", format="detectron2",
        url=f"https://dl.example.invalid/mini/model_final_{md5[:6]}.pkl", file_name=f"model_final_{md5[:6]}.pkl",
        categories="coco_panoptic", metrics={"box_ap": 0.0, "mask_ap": 0.0, "pq": 0.0},
        source_url="tests/data/d2_mini/README.md", md5_prefix=md5[:6])
    monkeypatch.setattr(catalogue, "CHECKPOINTS", MappingProxyType({**catalogue.CHECKPOINTS, entry.name: entry}))
    served = tmp_path / "server"
    served.mkdir()
    shutil.copy(d2_mini_checkpoint, served / entry.file_name)
    hits = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            hits.append(self.path)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(served)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    weights = tmp_path / "weights"
    monkeypatch.setenv("SEGFPN_WEIGHTS_DIR", str(weights))
    monkeypatch.setenv("SEGFPN_BASE_URL", f"http://127.0.0.1:{server.server_address[1]}/")
    monkeypatch.delenv("SEGFPN_OFFLINE", raising=False)
    yield entry, weights, hits
    server.shutdown()


def test_download_on_first_use_then_offline(served_zoo, monkeypatch):
    entry, weights, hits = served_zoo
    first = segfpn.load("panoptic_fpn_mini", device="cpu")
    assert (weights / entry.file_name).is_file() and len(hits) == 1
    assert first.arch == "panoptic_fpn_R_50" and first.has_semantic_head
    monkeypatch.setenv("SEGFPN_OFFLINE", "1")
    monkeypatch.setenv("SEGFPN_BASE_URL", "http://127.0.0.1:9/")  # nothing listens there
    second = segfpn.load("panoptic_fpn_mini", device="cpu")
    assert len(hits) == 1 and second.source == str(weights / entry.file_name)


def test_unknown_name_suggests_the_closest(served_zoo):
    with pytest.raises(CheckpointError, match="Did you mean 'panoptic_fpn_R_50_3x'"):
        segfpn.load("panoptic_fpn_R50_3x", device="cpu")


def test_offline_and_missing_says_what_to_fetch(served_zoo, monkeypatch):
    monkeypatch.setenv("SEGFPN_OFFLINE", "1")
    with pytest.raises(Exception, match="model_final_c10459.pkl") as err:
        segfpn.load("panoptic_fpn_R_50_3x", device="cpu")
    assert "weights" in str(err.value)
