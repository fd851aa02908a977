"""The bundled model (weights/synthetic_panoptic_fpn.safetensors), loaded once, and one inspection
of a synthetic example."""

import pytest
from testdata import EXAMPLES, ROOT

import segfpn


@pytest.fixture(scope="session")
def bundled():
    return segfpn.load(ROOT / "weights" / "synthetic_panoptic_fpn.safetensors", device="cpu")


@pytest.fixture(scope="session")
def inspection(bundled):
    return bundled.inspect(EXAMPLES / "synthetic_shapes_1.png")
