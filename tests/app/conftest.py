"""The app served for real once per test session: the mini detectron2 checkpoint on 127.0.0.1
and a free port. Tests talk to it with gradio_client or a browser."""

from __future__ import annotations

import pytest
from app_testing import CountingPredictor, serve

import segfpn


@pytest.fixture(scope="session")
def mini_predictor(d2_mini_checkpoint):
    return segfpn.load(d2_mini_checkpoint, device="cpu")


@pytest.fixture(scope="session")
def server(mini_predictor):
    """The app with the mini checkpoint; ``server.predictor.calls`` counts the model runs."""
    served = serve(CountingPredictor(mini_predictor))
    yield served
    served.demo.close()


@pytest.fixture
def client(server):
    """A gradio_client session of its own (so its own gr.State)."""
    from gradio_client import Client

    return Client(server.url, verbose=False)
