"""Fixtures of the data pipeline tests: one small synthetic set per session, the coco_mini paths."""

import pytest

from segfpn.data.synthetic import generate
from testdata import DATA

COCO_MINI = DATA / "coco_mini"


@pytest.fixture(scope="session")
def synthetic_set(tmp_path_factory):
    """50 synthetic images (seed 0, 320 x 320), written once per session."""
    return generate(tmp_path_factory.mktemp("synthetic") / "set", num_images=50, seed=0,
                    progress=False)


@pytest.fixture(scope="session")
def coco_mini_paths():
    return {"image_dir": COCO_MINI / "images",
            "instances_json": COCO_MINI / "annotations" / "instances_val2017.json",
            "panoptic_json": COCO_MINI / "annotations" / "panoptic_val2017.json"}
