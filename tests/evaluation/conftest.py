"""Paths of the test data (copied into tests/data, see the PROVENANCE/README files there)."""

from pathlib import Path

import pytest

DATA = Path(__file__).resolve().parents[1] / "data"
COCO_MINI = DATA / "coco_mini"
PANOPTICAPI_DEV = DATA / "panopticapi_dev"


@pytest.fixture(scope="session")
def coco_mini() -> Path:
    return COCO_MINI


@pytest.fixture(scope="session")
def panopticapi_dev() -> Path:
    return PANOPTICAPI_DEV
