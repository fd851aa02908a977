"""Paths of the test data and small helpers shared by the tests. Every file lives in this repository."""

from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "tests" / "data"
EXAMPLES = ROOT / "examples" / "images"
D2_MINI = DATA / "d2_mini"


def load_rgb(name: str) -> np.ndarray:
    """An example photo as RGB uint8 [H, W, 3]."""
    return np.asarray(Image.open(EXAMPLES / name).convert("RGB")).copy()
