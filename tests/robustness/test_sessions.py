"""Sessions of the app: the runs they keep fit in one memory budget across all sessions (the
least recently used dropped first, its session told so), a new session copies nothing of the
model, and requests of one session run together without touching each other's files."""

from __future__ import annotations

import numpy as np
import pytest
from app_process import segment, serve_in_process
from gradio_client import Client
from gradio_client.exceptions import AppError
from input_cases import CAT, PORTRAIT, rgb
from serve_app import MINI_CHECKPOINT, SMALL_INPUT

import segfpn
from segfpn.app import session
from segfpn.app.session import RunStore
from segfpn.app.source import ModelSource

#: Redraws of one session sent at once, and how many times.
AT_ONCE, ROUNDS = 4, 15


@pytest.fixture(scope="module")
def predictor():
    return segfpn.load(MINI_CHECKPOINT, device="cpu", overrides=SMALL_INPUT)


def _redraw(client, score: float = 0.5):
    return client.predict(score, 0.5, [], True, True, api_name="/redraw_instances")


def test_runs_kept_within_a_memory_budget_least_recently_used_dropped(predictor):
    """A budget of 2.5 runs: four sessions segment, the two least recently used lose their
    run and are told to press Segment again; the store never holds more than its budget."""
    one_run = session.kept_bytes(session.run_model(predictor, str(CAT)))
    runs = RunStore(budget_bytes=int(2.5 * one_run))
    url, demo = serve_in_process(ModelSource.from_predictor(predictor, "mini"), runs=runs)
    clients = [Client(url, verbose=False) for _ in range(4)]
    try:
        for client in clients:
            segment(client, CAT)
            assert runs.total_bytes <= runs.budget_bytes
        assert len(runs) == 2 and runs.total_bytes == 2 * one_run
        for client in clients[:2]:
            with pytest.raises(AppError, match="dropped to free memory.*press Segment again"):
                _redraw(client)
        for client in clients[2:]:
            image, summary = _redraw(client)
            assert rgb(image).shape == rgb(CAT).shape and "detections shown" in summary
        # Pressing Segment again brings the run back; the least recently used other one goes.
        segment(clients[0], PORTRAIT)
        assert rgb(_redraw(clients[0])[0]).shape == rgb(PORTRAIT).shape
        with pytest.raises(AppError, match="dropped to free memory"):
            _redraw(clients[2])
        assert rgb(_redraw(clients[3])[0]).shape == rgb(CAT).shape
        assert runs.total_bytes <= runs.budget_bytes and len(runs) == 2
        # A session that never pressed Segment is not told its run was dropped.
        fresh = Client(url, verbose=False)
        image, _ = _redraw(fresh)
        assert not isinstance(image, str)  # nothing drawn, no error: a notice to press Segment
        fresh.close()
    finally:
        for client in clients:
            client.close()
        demo.close()


class _NeverCopied:
    """Wraps a predictor; deep-copying it (and so the model) counts in ``copies``."""

    def __init__(self, predictor):
        self._predictor = predictor
        self.copies = 0

    def predict(self, image, **kwargs):
        return self._predictor.predict(image, **kwargs)

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return getattr(self._predictor, name)

    def __deepcopy__(self, memo):
        self.copies += 1
        return self


def test_a_new_session_copies_nothing_of_the_model(predictor):
    """Pages and sessions served, a run made: the model is never copied. (Gradio deep-copies a
    State's settings for each page; a delete callback bound to the object holding the model
    copied the whole model, about 20 MB per session with the mini checkpoint.)"""
    wrapped = _NeverCopied(predictor)
    url, demo = serve_in_process(ModelSource.from_predictor(wrapped, "mini"))
    try:
        for _ in range(3):
            client = Client(url, verbose=False)
            segment(client, CAT)
            _redraw(client)
            client.close()
        assert wrapped.copies == 0
    finally:
        demo.close()


def test_redraws_of_one_session_at_once_all_answered(predictor):
    """Four redraws of one session at once, fifteen times: two /redraw_instances with the same
    settings and two /inspect with the same level and mode. Every one answers its own overlay,
    download and view, whole: no request removes a folder another one is writing or serving,
    and no picture is served while another request of the same picture writes it."""
    url, demo = serve_in_process(ModelSource.from_predictor(predictor, "mini"))
    client = Client(url, verbose=False)
    try:
        segment(client, PORTRAIT)
        failures, answers = [], 0
        for round_ in range(ROUNDS):
            score = round(0.1 + 0.05 * round_, 2)
            jobs = [client.submit(score, 0.5, [], True, True, api_name=name)
                    for name in ("/redraw_instances", "/overlay_download")]
            jobs += [client.submit("p3", "pca" if round_ % 2 else "mean_abs", 0, api_name="/inspect")
                     for _ in range(AT_ONCE // 2)]
            images = []
            for i, job in enumerate(jobs):
                try:
                    answer = job.result(timeout=120)
                except Exception as e:  # the failure this test is about: collected, then shown
                    failures.append(f"{type(e).__name__}: {e}")
                    continue
                answers += 1
                images.append(rgb(answer if isinstance(answer, str) else answer[0]))
                if i == 0:  # the redraw: the view (a JPEG) and the summary
                    assert f"(score ≥ {score:.2f})" in answer[1]
                if i == 1:  # its PNG download, the same picture
                    assert np.abs(images[-1].astype(int) - images[-2]).mean() < 2.0
            assert all(image.shape == rgb(PORTRAIT).shape for image in images)
        assert failures == [] and answers == AT_ONCE * ROUNDS
    finally:
        client.close()
        demo.close()
