"""Videos: every frame (or every n-th) segmented, written as an H.264 MP4 with the overlay and one
JSON of per-frame COCO results; streamed (a few frames held at a time, whatever the length)
and resumable.

For a video whose name has the stem ``S`` (:func:`segfpn.outputs.file_stem`)::

    S.overlay.mp4   the overlay of every segmented frame, H.264 (yuv420p, no B-frames, moov atom
                    first) in MP4: what browsers play; each frame keeps its time in the video,
                    so a variable frame rate, or every n-th frame, plays at the original pace
    S.video.json    {"video": {...}, "categories": [...], "frames": [{"frame_index", "time_s",
                    "image_id", "results": [COCO detection results]}]}; image_id = frame_index + 1

Decoding and encoding: PyAV (FFmpeg's libraries, libx264 bundled in its wheels).

Resuming: frames are encoded in parts of :data:`PART_FRAMES` segmented frames, each written
whole (video part, then its results) into ``S.video.parts/``; a run that stops (Ctrl-C, a
crash, :class:`threading.Event` ``cancel``) keeps its finished parts, and the next run with the
same video and options starts after them. A video or options that changed start the work
again (said in the log and in :attr:`VideoReport.restarted`). When every part is there they are
joined without re-encoding into the MP4 and the JSON, and the parts are removed.

Bad videos raise :class:`VideoError` naming the problem: not a video, damaged or truncated,
no video stream (audio only), no frame, larger than :data:`MAX_VIDEO_SIDE`. A video that
breaks off partway (a cut file) keeps the frames read until then and says so
(:attr:`VideoReport.problem`, ``"complete": false`` in the JSON).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np

from segfpn.atomic_files import write_atomic, write_atomic_by_name, write_json
from segfpn.export import instances_to_coco_results
from segfpn.imageio import ImageError, check_size
from segfpn.outputs import DEFAULT_OVERLAY, Overlay, draw_overlay, file_stem, result_categories

logger = logging.getLogger(__name__)

#: File name suffixes a video is recognised by (the content decides: see :func:`is_video`).
VIDEO_SUFFIXES = {".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi", ".mpg", ".mpeg", ".ts", ".wmv", ".flv",
                  ".3gp", ".ogv", ".gif"}
#: Longest side accepted, in pixels: 4K (3840x2160, 4096x2160) passes, 5K and 8K do not. A frame
#: larger than that is downscaled by the model anyway (to 1333 px), at 30 frames a second.
MAX_VIDEO_SIDE = 4096
#: Segmented frames per part (what an interrupted run can lose).
PART_FRAMES = 32
#: Time base of the MP4 written: 1/90000 s, the MPEG clock; frame times are kept to it.
TIME_BASE = Fraction(1, 90000)
#: libx264 settings: quality 23 (its default), fast, no B-frames (parts join with rising
#: decoding times).
ENCODER_OPTIONS = {"crf": "23", "preset": "veryfast", "bf": "0"}


class VideoError(ValueError):
    """The input is not a video segfpn can use; the message says why."""


class VideoCancelled(Exception):
    """:func:`predict_video` stopped by its ``cancel`` event; finished parts are kept."""


@dataclass(frozen=True)
class VideoInfo:
    """What a video's header says. ``frames``: declared count (None when the file does not
    say); ``fps``: average rate (None when unknown); ``duration_s``: None when unknown."""

    path: Path
    width: int
    height: int
    frames: int | None
    fps: float | None
    duration_s: float | None
    codec: str

    def expected_frames(self) -> int | None:
        """The declared frame count, or else duration x rate."""
        if self.frames:
            return self.frames
        if self.fps and self.duration_s:
            return max(1, round(self.fps * self.duration_s))
        return None


@dataclass(frozen=True)
class VideoFrame:
    """index: 0-based position in the video; time_s: seconds from the first frame; rgb: uint8 [H, W, 3]."""

    index: int
    time_s: float
    rgb: np.ndarray


@dataclass(frozen=True)
class VideoProgress:
    """Where :func:`predict_video` is: frames segmented (done, of total), and time."""

    frames_done: int
    frames_total: int | None
    seconds_elapsed: float
    seconds_left: float | None


@dataclass(frozen=True)
class VideoFiles:
    video: Path
    results: Path


@dataclass
class VideoReport:
    """files: the MP4 and the JSON. frames_done: frames segmented (this run and earlier ones);
    resumed_from: frames found done from an interrupted run; restarted: why an interrupted run's
    parts were dropped (None if not); problem: why the video ended before its declared end;
    already_done: the files were there and up to date (nothing run)."""

    files: VideoFiles
    frames_done: int = 0
    resumed_from: int = 0
    restarted: str | None = None
    problem: str | None = None
    already_done: bool = False


def is_video(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a file to read as a video: by its suffix, or for an unknown suffix by
    its content (an MP4/QuickTime ``ftyp`` box, Matroska/WebM, AVI, MPEG). GIF is an image."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".gif" or not path.is_file():
        return False
    if suffix in VIDEO_SUFFIXES:
        return True
    try:
        with path.open("rb") as f:
            head = f.read(16)
    except OSError:
        return False
    return (head[4:8] == b"ftyp" or head[:4] == b"\x1a\x45\xdf\xa3" or (head[:4] == b"RIFF" and head[8:12] == b"AVI ")
            or head[:4] in (b"\x00\x00\x01\xba", b"\x00\x00\x01\xb3"))


def _open(path: Path):
    import av

    if not path.is_file():
        raise VideoError(f"{path} does not exist or is not a file")
    if path.stat().st_size == 0:
        raise VideoError(f"{path.name} is empty (0 bytes): not a video")
    try:
        return av.open(str(path), metadata_errors="ignore")
    except av.error.EOFError:
        raise VideoError(f"{path.name} has no frame: it ends before its first one (empty or truncated)") from None
    except av.error.FFmpegError as exc:
        raise VideoError(f"{path.name} is not a video segfpn can read (damaged, truncated, or not a video): "
                         f"{_reason(exc)}") from None


def _reason(exc: Exception) -> str:
    return getattr(exc, "strerror", None) or str(exc) or type(exc).__name__


def _video_stream(container, name: str):
    if not container.streams.video:
        kinds = sorted({s.type for s in container.streams})
        what = "audio only" if kinds == ["audio"] else (f"streams: {', '.join(kinds)}" if kinds else "no streams")
        raise VideoError(f"{name} has no video stream ({what}): nothing to segment")
    return container.streams.video[0]


def _check_video_size(name: str, width: int, height: int, max_side: int) -> None:
    if max(width, height) > max_side:
        label = " (8K)" if max(width, height) >= 7680 else ""
        raise VideoError(f"{name} is {width}x{height}{label}: segfpn reads videos up to {max_side} px a side. "
                         f"Scale it down first, e.g. ffmpeg -i {name} -vf scale=-2:2160 smaller.mp4")
    try:
        check_size(width, height)
    except ImageError as exc:
        raise VideoError(f"{name}: frames of {exc}") from None


def probe_video(path: str | os.PathLike, *, max_side: int = MAX_VIDEO_SIDE) -> VideoInfo:
    """The header of a video; :class:`VideoError` for anything :func:`read_frames` would refuse
    before decoding (not a video, no video stream, too large)."""
    path = Path(path)
    with _open(path) as container:
        stream = _video_stream(container, path.name)
        if stream.codec_context is None:
            raise VideoError(f"{path.name}: its video stream is in a codec FFmpeg cannot decode (damaged, or an "
                             "unusual codec): convert it to H.264 MP4 first")
        width, height = stream.codec_context.width, stream.codec_context.height
        if not width or not height:
            raise VideoError(f"{path.name}: its video stream declares no frame size (damaged?)")
        _check_video_size(path.name, width, height, max_side)
        rate = stream.average_rate or stream.guessed_rate
        duration = (float(stream.duration * stream.time_base) if stream.duration is not None and stream.time_base
                    else float(container.duration) / 1e6 if container.duration else None)
        return VideoInfo(path=path, width=int(width), height=int(height), frames=int(stream.frames) or None,
                         fps=float(rate) if rate else None, duration_s=duration, codec=stream.codec_context.name)


def read_frames(path: str | os.PathLike, *, every: int = 1, start: int = 0, max_side: int = MAX_VIDEO_SIDE,
                problems: list[str] | None = None) -> Iterator[VideoFrame]:
    """Frames ``start``, ``start + every``, ... of a video, decoded one at a time, as RGB at the
    first frame's size (a frame of another size is scaled to it).

    A decoding error after the first frame ends the frames there and appends its reason to
    ``problems``; before any frame, and for a video with no frame, it is a :class:`VideoError`.
    """
    import av

    if every < 1 or start < 0:
        raise ValueError(f"every must be at least 1 and start at least 0, got {every}, {start}")
    path = Path(path)
    info = probe_video(path, max_side=max_side)
    with _open(path) as container:
        stream = _video_stream(container, path.name)
        stream.thread_type = "AUTO"
        index, first_time = -1, None
        frames = container.decode(stream)
        while True:
            try:
                frame = next(frames)
            except StopIteration:
                break
            except (av.error.FFmpegError, ValueError) as exc:
                if index < 0:
                    raise VideoError(f"{path.name} could not be decoded (damaged or truncated): "
                                     f"{_reason(exc)}") from None
                reason = f"decoding stopped after frame {index}: {_reason(exc)} (damaged or truncated?)"
                logger.warning("%s: %s", path.name, reason)
                if problems is not None:
                    problems.append(reason)
                return
            index += 1
            seconds = float(frame.time) if frame.time is not None else (index / info.fps if info.fps else float(index))
            first_time = seconds if first_time is None else first_time
            if index < start or (index - start) % every:
                continue
            try:
                rgb = frame.to_ndarray(format="rgb24", width=info.width, height=info.height)
            except (av.error.FFmpegError, ValueError) as exc:  # a frame the scaler cannot take
                raise VideoError(f"{path.name}: frame {index} could not be converted to RGB: {_reason(exc)}") from None
            yield VideoFrame(index=index, time_s=max(seconds - first_time, 0.0), rgb=np.ascontiguousarray(rgb))
        if index < 0:
            raise VideoError(f"{path.name} has a video stream but no frame could be decoded (empty or damaged)")


# ---------------------------------------------------------------------------------------------
# Writing


def h264_encoder() -> str:
    """The name of an H.264 encoder in this PyAV build; :class:`VideoError` when it has none."""
    import av

    for name in ("libx264", "h264"):
        try:
            av.codec.Codec(name, "w")
            return name
        except (av.error.FFmpegError, ValueError):
            continue
    raise VideoError("this installation of PyAV has no H.264 encoder (libx264); install the PyPI wheel: pip install av")


def _even(rgb: np.ndarray) -> np.ndarray:
    """yuv420p needs even sides: an odd one gets its last row or column repeated."""
    h, w = rgb.shape[:2]
    return np.pad(rgb, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge") if h % 2 or w % 2 else rgb


def _ticks(seconds: float) -> int:
    return int(round(seconds / TIME_BASE))


def encode_part(file, frames: list[tuple[float, np.ndarray]], *, container_options: dict | None = None) -> None:
    """Encode ``(time_s, rgb)`` frames (times rising) as H.264 MP4 into the binary ``file``, the
    first frame at time 0."""
    import av

    start = _ticks(frames[0][0])
    with av.open(file, "w", format="mp4", options=container_options or {}) as out:
        stream = out.add_stream(h264_encoder())
        height, width = _even(frames[0][1]).shape[:2]
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.time_base = TIME_BASE
        stream.codec_context.time_base = TIME_BASE
        stream.options = dict(ENCODER_OPTIONS)
        last = -1
        for seconds, rgb in frames:
            frame = av.VideoFrame.from_ndarray(_even(rgb), format="rgb24")
            frame.pts = max(_ticks(seconds) - start, last + 1)  # strictly rising, as MP4 needs
            frame.time_base = TIME_BASE
            last = frame.pts
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))


def join_parts(path: str | os.PathLike, parts: list[tuple[Path, float]]) -> Path:
    """Join MP4 parts made by :func:`encode_part` (``(path, start time in s)``) into one MP4 at
    ``path``, atomically, without re-encoding, each packet moved to its part's start time."""
    return write_atomic_by_name(path, lambda temp: _join(temp, parts))


def _join(temp: Path, parts: list[tuple[Path, float]]) -> None:
    import av

    # By name, not a file object: moving the index to the front (faststart, so that a browser
    # plays while loading) reopens the file.
    with av.open(str(temp), "w", format="mp4", options={"movflags": "+faststart"}) as out:
        target = None
        for path, start in parts:
            with av.open(str(path)) as part:
                stream = part.streams.video[0]
                if target is None:
                    target = out.add_stream_from_template(stream)
                shift = int(round(start / stream.time_base))
                for packet in part.demux(stream):
                    if packet.dts is None:  # the demuxer's empty end-of-stream packet
                        continue
                    packet.pts += shift
                    packet.dts += shift
                    packet.stream = target
                    out.mux(packet)


# ---------------------------------------------------------------------------------------------
# Segmenting a video


def video_files(out_dir: str | os.PathLike, video_name: str | os.PathLike) -> VideoFiles:
    stem = file_stem(video_name)
    return VideoFiles(video=Path(out_dir) / f"{stem}.overlay.mp4", results=Path(out_dir) / f"{stem}.video.json")


def _identity(path: Path, info: VideoInfo, options: dict) -> dict:
    stat = path.stat()
    identity = {"file_name": path.name, "bytes": stat.st_size, "mtime_ns": stat.st_mtime_ns, "width": info.width,
                "height": info.height, "options": options}
    return json.loads(json.dumps(identity))  # as it reads back from JSON


class _Progress:
    def __init__(self, total: int | None, done: int, callback, bar: bool, name: str) -> None:
        from tqdm import tqdm

        self.total, self.done, self.callback = total, done, callback
        self.started, self.at_start = time.perf_counter(), done
        self.bar = tqdm(total=total, initial=done, unit="frame", desc=f"segfpn video {name}", disable=not bar)

    def advance(self, count: int) -> None:
        self.done += count
        self.bar.update(count)
        self.report()

    def report(self) -> None:
        elapsed = time.perf_counter() - self.started
        rate = (self.done - self.at_start) / elapsed if elapsed > 0 else 0.0
        left = (max(self.total - self.done, 0) / rate) if rate > 0 and self.total is not None else None
        if self.callback is not None:
            self.callback(VideoProgress(frames_done=self.done, frames_total=self.total, seconds_elapsed=elapsed,
                                        seconds_left=left))

    def close(self) -> None:
        self.bar.close()


def predict_video(predictor, video: str | os.PathLike, out_dir: str | os.PathLike, *, every: int = 1,
                  overlay: Overlay = DEFAULT_OVERLAY, batch_size: int = 1,
                  progress: Callable[[VideoProgress], None] | None = None, progress_bar: bool = False,
                  cancel: threading.Event | None = None, part_frames: int = PART_FRAMES,
                  max_side: int = MAX_VIDEO_SIDE) -> VideoReport:
    """Segment frames 0, ``every``, 2 ``every``, ... of ``video`` with ``predictor`` and write
    ``S.overlay.mp4`` and ``S.video.json`` into ``out_dir`` (created if missing); see the module
    docstring for the files, resuming and errors.

    ``overlay``: what the video shows (:func:`segfpn.outputs.draw_overlay`). ``batch_size``:
    frames per forward pass (more than 1 pays on a GPU). ``progress``: called after every batch
    and once at the start with a :class:`VideoProgress`; ``progress_bar``: a tqdm bar on stderr.
    ``cancel``: set it (from another thread) to stop after the current batch:
    :class:`VideoCancelled` is raised, finished parts are kept for the next run.
    """
    if every < 1 or batch_size < 1 or part_frames < 1:
        raise ValueError("every, batch_size and part_frames must be at least 1, "
                         f"got {every}, {batch_size}, {part_frames}")
    video, out_dir = Path(video), Path(out_dir)
    info = probe_video(video, max_side=max_side)
    out_dir.mkdir(parents=True, exist_ok=True)
    files = video_files(out_dir, video.name)
    options = {"every": every, "overlay": overlay, "weights": str(getattr(predictor, "source", ""))}
    # The detection thresholds change the results, so a run with others starts again; they are in
    # box_head (two-stage models) or retina_head (RetinaNet).
    config = getattr(predictor, "config", None)
    if config is None:
        options["box_head"] = None
    else:
        options[config.detection_head] = dataclasses.asdict(getattr(config, config.detection_head))
    identity = _identity(video, info, options)
    if files.results.exists() and files.video.exists():
        try:
            done = json.loads(files.results.read_text()).get("video", {}).get("source") == identity
        except (OSError, ValueError):
            done = False
        if done:
            return VideoReport(files=files, already_done=True)
    work = out_dir / f"{file_stem(video.name)}.video.parts"
    report = VideoReport(files=files)
    parts = _resume(work, identity, report)
    expected = info.expected_frames()
    total = None if expected is None else len(range(0, expected, every))
    frames_done = sum(p["frames"] for p in parts)
    report.resumed_from = frames_done
    start = parts[-1]["next_index"] if parts else 0
    tracker = _Progress(total, frames_done, progress, progress_bar, video.name)
    tracker.report()
    problems: list[str] = []
    pending: list[VideoFrame] = []
    part: list[tuple[VideoFrame, object]] = []
    try:
        for frame in read_frames(video, every=every, start=start, max_side=max_side, problems=problems):
            pending.append(frame)
            if len(pending) >= batch_size:
                part += zip(pending, predictor.predict_batch([f.rgb for f in pending]))
                tracker.advance(len(pending))
                pending.clear()
                if len(part) >= part_frames:
                    parts.append(_write_part(work, len(parts), part, overlay=overlay, every=every))
                    part = []
                if cancel is not None and cancel.is_set():
                    raise VideoCancelled(f"stopped after {tracker.done} frames; run again to continue")
        if pending:
            part += zip(pending, predictor.predict_batch([f.rgb for f in pending]))
            tracker.advance(len(pending))
        if part:
            parts.append(_write_part(work, len(parts), part, overlay=overlay, every=every))
    finally:
        tracker.close()
    if not parts:
        raise VideoError(f"{video.name}: no frame left to segment from frame {start} on")
    report.problem = problems[0] if problems else None
    report.frames_done = sum(p["frames"] for p in parts)
    video_info = {**dataclasses.asdict(info), "path": None, "file_name": video.name, "every": every,
                  "frames_segmented": report.frames_done, "complete": report.problem is None,
                  "problem": report.problem, "source": identity}
    del video_info["path"]
    join_parts(files.video, [(work / p["video"], p["start_s"]) for p in parts])
    categories = parts[-1]["categories"]
    part_results = [work / p["results"] for p in parts]
    write_atomic(files.results, lambda f: _write_results(f, video_info, categories, part_results))
    shutil.rmtree(work, ignore_errors=True)
    return report


def _resume(work: Path, identity: dict, report: VideoReport) -> list[dict]:
    """The finished parts of an earlier run of the same video and options, in order; a run of
    anything else is removed (``report.restarted`` says why)."""
    state = work / "state.json"
    if work.exists():
        try:
            earlier = json.loads(state.read_text())
        except (OSError, ValueError):
            earlier = None
        if earlier == identity:
            parts = []
            while (work / f"part_{len(parts):05d}.json").exists():  # the results go last: the part is whole
                parts.append(json.loads((work / f"part_{len(parts):05d}.json").read_text())["part"])
            if parts:
                logger.info("%s: resuming after %d segmented frames", identity["file_name"],
                            sum(p["frames"] for p in parts))
            return parts
        report.restarted = ("the video or the options changed since the interrupted run" if earlier is not None
                            else "the interrupted run's state was unreadable")
        logger.warning("%s: %s; starting again", identity["file_name"], report.restarted)
        shutil.rmtree(work)
    work.mkdir(parents=True)
    write_json(state, identity, indent=1)
    return []


def _write_part(work: Path, number: int, frames: list, *, overlay: Overlay, every: int) -> dict:
    """Encode and save one part: its MP4, then its results (whose presence marks it whole)."""
    name = f"part_{number:05d}"
    drawn = [(f.time_s, draw_overlay(f.rgb, result, overlay=overlay)) for f, result in frames]
    write_atomic(work / f"{name}.mp4", lambda file: encode_part(file, drawn))
    records = [{"frame_index": f.index, "time_s": round(f.time_s, 6), "image_id": f.index + 1,
                "results": instances_to_coco_results(result.instances, image_id=f.index + 1)} for f, result in frames]
    part = {"video": f"{name}.mp4", "results": f"{name}.json", "frames": len(frames), "start_s": frames[0][0].time_s,
            "next_index": frames[-1][0].index + every, "categories": result_categories(frames[0][1])}
    write_json(work / f"{name}.json", {"part": part, "frames": records})
    return part


def _write_results(file, video_info: dict, categories: list[dict], part_files: list[Path]) -> None:
    """The results JSON, written part by part (one part's frames in memory at a time)."""
    file.write(b'{"video":' + json.dumps(video_info).encode() + b',"categories":' + json.dumps(categories).encode()
               + b',"frames":[')
    first = True
    for path in part_files:
        for record in json.loads(path.read_text())["frames"]:
            file.write((b"" if first else b",") + json.dumps(record, separators=(",", ":")).encode())
            first = False
    file.write(b"]}")


def read_video_results(path: str | os.PathLike) -> dict:
    """A ``S.video.json`` as written by :func:`predict_video`."""
    return json.loads(Path(path).read_text())


__all__ = ["MAX_VIDEO_SIDE", "PART_FRAMES", "VIDEO_SUFFIXES", "VideoCancelled", "VideoError", "VideoFiles",
           "VideoFrame", "VideoInfo", "VideoProgress", "VideoReport", "h264_encoder", "is_video", "predict_video",
           "probe_video", "read_frames", "read_video_results", "video_files"]
