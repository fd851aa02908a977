"""Many gradio_client sessions sending photos to the app at once (the load test and
benchmarks/load_app.py).

Every client is a :class:`gradio_client.Client` of its own (so a session of its own), sending
its photos one after the other, all clients starting together. A request the queue has no room
for is answered "busy" (gradio_client's ``QueueError``: "Queue is full! Please try again."); the
client waits a little and sends it again, as a person would. Each request ends with the app's
answer, an error, or (after ``deadline_s``) a record that it was never answered.
"""

from __future__ import annotations

import random
import statistics
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]
SOURCES = [ROOT / "examples" / "images" / name for name in
           ("chelsea_cat.png", "coffee.png", "astronaut.png", "voc2007_000001_portrait.jpg",
            "cyclists_33823288584.jpg", "dogs_people_16004479832.jpg")]


def make_photos(folder: Path, clients: int, per_client: int) -> list[list[Path]]:
    """``per_client`` small photos for each client, every one of another size (64-200 px a
    side) and cut from another place of an example photo, named after its client."""
    folder.mkdir(parents=True, exist_ok=True)
    sources = [np.asarray(Image.open(p).convert("RGB")) for p in SOURCES]
    photos = []
    for c in range(clients):
        mine = []
        for j in range(per_client):
            k = c * per_client + j
            height, width = 64 + (k * 5) % 137, 200 - (k * 3) % 137  # distinct (h, w) for k < 137
            source = sources[k % len(sources)]
            top = (k * 7) % (source.shape[0] - height)
            left = (k * 11) % (source.shape[1] - width)
            path = folder / f"client{c:02d}_photo{j}.png"
            Image.fromarray(source[top:top + height, left:left + width]).save(path)
            mine.append(path)
        photos.append(mine)
    return photos


@dataclass
class Request:
    """One photo sent by one client. ``answer``: the /segment outputs (overlay, overlay PNG,
    COCO JSON, panoptic PNG, panoptic JSON, summary) or None; ``latency_s``: from sending the
    accepted attempt to its answer; ``busy_s``: how long each "busy" answer took."""

    client: int
    photo: Path
    answer: tuple | None = None
    error: str | None = None
    latency_s: float | None = None
    busy_s: list[float] = field(default_factory=list)
    busy_messages: set[str] = field(default_factory=set)

    @property
    def answered(self) -> bool:
        return self.answer is not None or self.error is not None


@dataclass
class LoadRun:
    requests: list[Request]
    wall_s: float

    @property
    def completed(self) -> list[Request]:
        return [r for r in self.requests if r.answer is not None]

    @property
    def busy(self) -> int:
        return sum(len(r.busy_s) for r in self.requests)

    def percentile(self, q: float) -> float:
        latencies = sorted(r.latency_s for r in self.completed)
        return float(np.percentile(latencies, q)) if latencies else float("nan")

    def report(self) -> str:
        done = len(self.completed)
        busy_times = [t for r in self.requests for t in r.busy_s]
        lines = [f"{done} of {len(self.requests)} requests answered with a result in "
                 f"{self.wall_s:.1f} s: {done / self.wall_s:.2f} requests/s",
                 f"latency (accepted request to its result): p50 {self.percentile(50):.2f} s, "
                 f"p95 {self.percentile(95):.2f} s, max {self.percentile(100):.2f} s"]
        if busy_times:
            message = sorted(set().union(*(r.busy_messages for r in self.requests)))[0]
            lines.append(f"busy answers: {len(busy_times)} (\"{message}\"), each within "
                         f"{max(busy_times):.2f} s, median {statistics.median(busy_times):.2f} s")
        else:
            lines.append("busy answers: 0")
        errors = [r for r in self.requests if r.error]
        if errors:
            lines.append(f"errors: {len(errors)}, e.g. {errors[0].error}")
        unanswered = [r for r in self.requests if not r.answered]
        if unanswered:
            lines.append(f"never answered: {len(unanswered)}")
        return "\n".join(lines)


def _client_loop(url: str, client_index: int, photos: list[Path], requests: list[Request],
                 start: threading.Barrier, deadline: float, score: float) -> None:
    from gradio_client import Client, handle_file
    from gradio_client.utils import QueueError

    client = Client(url, verbose=False)
    jitter = random.Random(client_index)
    try:
        start.wait()
        for photo in photos:
            request = Request(client_index, photo)
            requests.append(request)
            while time.monotonic() < deadline:
                sent = time.monotonic()
                try:
                    request.answer = client.predict(handle_file(photo), score, 0.5, True, True,
                                                    api_name="/segment")
                    request.latency_s = time.monotonic() - sent
                    break
                except QueueError as e:
                    request.busy_s.append(time.monotonic() - sent)
                    request.busy_messages.add(str(e))
                    time.sleep(jitter.uniform(0.2, 1.0))
                except Exception as e:  # AppError (the app's message) or a broken connection
                    request.error = f"{type(e).__name__}: {e}"
                    break
    finally:
        client.close()


def run_load(url: str, photos: list[list[Path]], *, deadline_s: float = 240.0,
             score: float = 1.0) -> LoadRun:
    """Every client (a list of photos) in a thread of its own, all starting at once.

    ``score`` is the Segment threshold: 1.0 (the default) draws no detection, so each overlay
    is exactly the photo it answers (what the load test checks).
    """
    per_client: list[list[Request]] = [[] for _ in photos]
    start = threading.Barrier(len(photos) + 1)
    deadline = time.monotonic() + deadline_s
    threads = [threading.Thread(target=_client_loop, args=(url, i, mine, per_client[i], start,
                                                           deadline, score), daemon=True)
               for i, mine in enumerate(photos)]
    for thread in threads:
        thread.start()
    start.wait(timeout=120)  # every client has fetched the app's config
    began = time.monotonic()
    for thread in threads:
        thread.join(timeout=max(1.0, deadline - time.monotonic() + 5))
    wall = time.monotonic() - began
    requests = [r for mine in per_client for r in mine]
    sent = {r.photo for r in requests}
    requests += [Request(i, p) for i, mine in enumerate(photos) for p in mine if p not in sent]
    return LoadRun(requests=requests, wall_s=wall)
