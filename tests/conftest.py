"""Fixtures shared by every test folder."""

import pytest
import torch

from testdata import D2_MINI

torch.set_num_threads(2)


@pytest.fixture(scope="session")
def d2_mini_checkpoint():
    return D2_MINI / "panoptic_fpn_mini.pkl"
