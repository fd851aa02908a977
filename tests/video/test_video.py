"""Videos: the overlay MP4 (H.264 a browser plays) and the per-frame COCO JSON, every n-th frame,
frame times kept (variable frame rate), resuming an interrupted run, progress, streaming, and a
clear VideoError for every kind of bad video (fuzzed files included)."""

import json
import threading
import tracemalloc

import av
import numpy as np
import pytest

from segfpn.video import (MAX_VIDEO_SIDE, VideoCancelled, VideoError, is_video, predict_video, probe_video,
                          read_frames)



def decoded(path):
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        info = (stream.codec_context.name, stream.codec_context.pix_fmt, stream.codec_context.profile)
        return info, [(round(float(f.time), 3), f.to_ndarray(format="rgb24")) for f in container.decode(stream)]


def test_every_fifth_frame_of_a_clip_with_the_bundled_model(tmp_path, clip, real_predictor):
    seen = []
    report = predict_video(real_predictor, clip, tmp_path / "out", every=5, progress=seen.append)
    assert report.frames_done == 4 and report.problem is None and not report.already_done
    (codec, pix_fmt, profile), frames = decoded(report.files.video)
    assert (codec, pix_fmt) == ("h264", "yuv420p") and profile in ("High", "Main", "Constrained Baseline")
    assert [t for t, _ in frames] == [0.0, 0.5, 1.0, 1.5]          # each frame at its time in the clip
    assert frames[0][1].shape == (72, 96, 3)
    data = report.files.video.read_bytes()
    assert data.index(b"moov") < data.index(b"mdat")                 # plays while it loads
    results = json.loads(report.files.results.read_text())
    assert [f["frame_index"] for f in results["frames"]] == [0, 5, 10, 15]
    assert [f["time_s"] for f in results["frames"]] == [0.0, 0.5, 1.0, 1.5]
    for frame in results["frames"]:
        assert frame["results"] and {r["image_id"] for r in frame["results"]} == {frame["frame_index"] + 1}
    assert results["video"]["complete"] and results["video"]["frames_segmented"] == 4
    assert {c["name"] for c in results["categories"]} >= {"circle", "square"}
    # The result of frame 10 is the one of that frame as an image.
    frame10 = next(f for f in read_frames(clip) if f.index == 10).rgb
    assert len(results["frames"][2]["results"]) == len(real_predictor.predict(frame10).instances)
    assert [p.frames_done for p in seen] == [0, 1, 2, 3, 4] and seen[-1].frames_total == 4
    assert seen[0].seconds_left is None and seen[-1].seconds_left == 0
    assert not (tmp_path / "out" / "clip.video.parts").exists()
    again = predict_video(real_predictor, clip, tmp_path / "out", every=5)
    assert again.already_done


def test_interrupted_run_resumes_after_its_finished_parts(tmp_path, clip, real_predictor, videos):
    out = tmp_path / "out"
    stopped = videos.counting(real_predictor, stop_after=11)
    with pytest.raises(KeyboardInterrupt):
        predict_video(stopped, clip, out, part_frames=4)
    assert sorted(p.name for p in (out / "clip.video.parts").glob("part_*.json")) == ["part_00000.json",
                                                                                     "part_00001.json"]
    assert not (out / "clip.overlay.mp4").exists() and not (out / "clip.video.json").exists()
    resumed = videos.counting(real_predictor)
    report = predict_video(resumed, clip, out, part_frames=4)
    assert report.resumed_from == 8 and report.frames_done == 20 and report.restarted is None
    all_frames = [f.rgb for f in read_frames(clip)]
    assert len(resumed.seen) == 12 and all(np.array_equal(a, b) for a, b in zip(resumed.seen, all_frames[8:]))
    _, frames = decoded(report.files.video)
    assert [t for t, _ in frames] == [round(i / 10, 3) for i in range(20)]
    results = json.loads(report.files.results.read_text())
    assert [f["frame_index"] for f in results["frames"]] == list(range(20))


def test_changed_options_start_again_and_say_so(tmp_path, clip, real_predictor, videos):
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        predict_video(videos.counting(real_predictor, stop_after=5), clip, out, part_frames=2)
    fresh = videos.counting(real_predictor)
    report = predict_video(fresh, clip, out, every=2, part_frames=2)
    assert report.restarted and "changed" in report.restarted and report.resumed_from == 0
    assert len(fresh.seen) == 10


def test_cancel_event_stops_after_a_batch_and_keeps_parts(tmp_path, clip, real_predictor, videos):
    cancel = threading.Event()
    predictor = videos.counting(real_predictor)

    def progress(p):
        if p.frames_done >= 3:
            cancel.set()

    with pytest.raises(VideoCancelled):
        predict_video(predictor, clip, tmp_path, part_frames=1, progress=progress, cancel=cancel)
    assert len(predictor.seen) == 3 and len(list((tmp_path / "clip.video.parts").glob("part_*.json"))) == 3


def test_variable_frame_rate_times_are_kept(tmp_path, real_predictor, videos):
    rng = np.random.default_rng(11)
    times = np.round(np.cumsum(rng.uniform(0.02, 0.4, 15)) - 0.02, 3).tolist()
    path = videos.write_video(tmp_path / "vfr.mkv", videos.photo_frames(15), times=times)
    assert [round(f.time_s, 3) for f in read_frames(path)] == pytest.approx([t - times[0] for t in times], abs=1e-3)
    report = predict_video(videos.counting(real_predictor), path, tmp_path / "out", part_frames=4)
    _, frames = decoded(report.files.video)
    assert [t for t, _ in frames] == pytest.approx([t - times[0] for t in times], abs=2e-3)


def test_odd_sized_frames_encode(tmp_path, real_predictor, videos):
    path = videos.write_video(tmp_path / "odd.mp4", [f[:71, :95] for f in videos.photo_frames(3)], codec="mpeg4")
    report = predict_video(videos.counting(real_predictor), path, tmp_path / "out")
    (_, _, _), frames = decoded(report.files.video)
    assert len(frames) == 3 and frames[0][1].shape[:2] in ((72, 96), (71, 95))


def test_memory_does_not_grow_with_the_length(tmp_path, real_predictor, videos):
    short = videos.write_video(tmp_path / "short.mp4", videos.photo_frames(30, (64, 48)))
    long = videos.write_video(tmp_path / "long.mp4", videos.photo_frames(240, (64, 48)))
    peaks = []
    for path in (short, long):
        predictor = videos.counting(real_predictor)
        predictor.predict_batch(videos.photo_frames(1, (64, 48)))  # the model's own allocations come first
        predictor.seen = None
        predictor.predict_batch = lambda frames, p=predictor: [p._result] * len(frames)
        tracemalloc.start()
        predict_video(predictor, path, tmp_path / path.stem, part_frames=16)
        peaks.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
    assert peaks[1] < 1.5 * peaks[0], peaks


# --- bad videos ------------------------------------------------------------------------------


def test_bad_videos_get_a_clear_error(tmp_path, clip, real_predictor, videos):
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    noise = tmp_path / "noise.mp4"
    noise.write_bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    cut = tmp_path / "cut.mp4"  # moov atom at the end (no faststart): cut before it
    cut.write_bytes(clip.read_bytes()[: clip.stat().st_size // 2])
    audio = tmp_path / "audio.m4a"
    with av.open(str(audio), "w") as out:
        stream = out.add_stream("aac", rate=16000)
        samples = np.zeros((1, 16000), np.float32)
        frame = av.AudioFrame.from_ndarray(samples, format="fltp", layout="mono")
        frame.sample_rate = 16000
        out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    no_frames = tmp_path / "no_frames.mkv"
    with av.open(str(no_frames), "w") as out:
        stream = out.add_stream("mpeg4", rate=10)
        stream.width, stream.height = 64, 48
        out.start_encoding()  # the header, with a video stream, and never a frame
    huge = videos.write_video(tmp_path / "eight_k.mp4", [np.zeros((4320, 7680, 3), np.uint8)], codec="mpeg4")
    cases = {empty: "empty", noise: "not a video", cut: "damaged, truncated", audio: "audio only",
             no_frames: "no frame", huge: "7680x4320 (8K)"}
    for path, words in cases.items():
        with pytest.raises(VideoError, match=words.replace("(", r"\(").replace(")", r"\)")):
            predict_video(real_predictor, path, tmp_path / "out")
    assert str(MAX_VIDEO_SIDE) in str(pytest.raises(VideoError, probe_video, huge).value)
    assert not list((tmp_path / "out").glob("*.mp4")) if (tmp_path / "out").exists() else True


def test_a_video_cut_partway_keeps_the_frames_before_the_cut(tmp_path, real_predictor, videos):
    path = videos.write_video(tmp_path / "whole.mp4", videos.photo_frames(40),
                              container_options={"movflags": "+faststart"})
    data = path.read_bytes()
    cut = tmp_path / "cut_faststart.mp4"
    cut.write_bytes(data[: int(len(data) * 0.6)])
    report = predict_video(videos.counting(real_predictor), cut, tmp_path / "out")
    assert 0 < report.frames_done < 40
    results = json.loads(report.files.results.read_text())["video"]
    assert results["frames_segmented"] == report.frames_done
    if report.problem is not None:  # FFmpeg may also just end the stream early
        assert not results["complete"] and "truncated" in report.problem


def test_fuzzed_videos_raise_video_error_or_work(tmp_path, clip, real_predictor, videos):
    rng = np.random.default_rng(5)
    original = np.frombuffer(clip.read_bytes(), np.uint8)
    outcomes = set()
    for trial in range(12):
        data = original.copy()
        spots = rng.integers(0, len(data), int(rng.integers(1, 40)))
        data[spots] = rng.integers(0, 256, len(spots))
        path = tmp_path / f"fuzz{trial}.mp4"
        path.write_bytes(data.tobytes())
        try:
            predict_video(videos.counting(real_predictor), path, tmp_path / f"out{trial}")
            outcomes.add("ok")
        except VideoError:
            outcomes.add("error")
    assert outcomes


def test_video_recognised_by_suffix_or_content(tmp_path, clip):
    renamed = tmp_path / "clip.data"
    renamed.write_bytes(clip.read_bytes())
    assert is_video(clip) and is_video(renamed)
    image = tmp_path / "photo.png"
    image.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(20))
    assert not is_video(image) and not is_video(tmp_path / "missing.mp4")
