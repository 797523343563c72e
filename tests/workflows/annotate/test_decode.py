"""Decoding real video rendered with PyAV: exact frame indices and timestamps per policy."""

import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest

from tests.media import read_index, render_video
from workflows.annotate.decode import DecodeError, DecodeLimits, SamplingPolicy, VideoReader


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    # 10 s at 10 fps, a key frame every 10 frames.
    return str(render_video(tmp_path_factory.mktemp("v") / "clip.mp4", n_frames=100, fps=10, gop=10))


@pytest.fixture(scope="module")
def ts_clip(tmp_path_factory):
    # The same clip in MPEG-TS, whose seeks land on the key frame after the aim (or nowhere after the last one).
    return str(render_video(tmp_path_factory.mktemp("v") / "clip.ts", n_frames=100, fps=10, gop=10))


def _read(uri, policy, **kw):
    with VideoReader(uri, SamplingPolicy.parse(policy), **kw) as r:
        frames = list(r.frames())
        return r, frames


@pytest.mark.parametrize("policy,expected", [
    ("all", list(range(100))),
    ("fps:2", list(range(0, 100, 5))),
    ("fps:0.5", [0, 20, 40, 60, 80]),
    ("uniform:4", [0, 25, 50, 75]),
    ("keyframes", list(range(0, 100, 10))),
    ("fps:30", list(range(100))),  # above the native rate: every frame once
])
def test_sampling_policies_exact(clip, policy, expected):
    r, frames = _read(clip, policy)
    assert [f.index for f in frames] == expected
    assert [read_index(f.image) for f in frames] == expected  # the pixels are those frames
    assert [round(f.timestamp_s, 3) for f in frames] == [i / 10 for i in expected]
    assert r.probe.width == 256 and r.probe.height == 144 and r.probe.fps == 10
    assert r.probe.duration_s == pytest.approx(10.0)


def _every_frame(uri):
    """(time, is key frame) of every frame, decoded by PyAV without the reader."""
    import av

    with av.open(uri) as c:
        s = c.streams.video[0]
        return [(float((f.pts - s.start_time) * s.time_base), f.key_frame) for f in c.decode(s)]


def _reference(uri, policy):
    """Indices of the frames a policy samples: the first frame at or after each target time."""
    frames = _every_frame(uri)
    times = [t for t, _ in frames]
    if policy in ("all", "keyframes"):
        return [i for i, (_, key) in enumerate(frames) if key or policy == "all"]
    duration = times[-1] + 0.1  # the last frame lasts 0.1 s (10 fps)
    if policy.startswith("fps:"):
        step = 1 / float(policy[4:])
        targets = [k * step for k in range(int(duration / step) + 1)]
    else:
        k_total = int(policy[8:])
        targets = [k * duration / k_total for k in range(k_total)]
    picked = [next((i for i, t in enumerate(times) if t >= target - 1e-6), None) for target in targets]
    return sorted({i for i in picked if i is not None})


@pytest.mark.parametrize("policy", ["all", "fps:0.5", "fps:5", "uniform:7", "keyframes"])
def test_sparse_reads_of_a_container_that_seeks_past_its_aim(ts_clip, policy):
    """MPEG-TS seeks land on the key frame after the aim: the reader still samples the first frame
    at or after each target, and the complete file reads to its end (no false 'truncated')."""
    expected = _reference(ts_clip, policy)
    _, frames = _read(ts_clip, policy)  # raises DecodeError('truncated') when a seek loses the end
    assert [f.index for f in frames] == expected
    assert [read_index(f.image) for f in frames] == expected
    assert [round(f.timestamp_s, 3) for f in frames] == [i / 10 for i in expected]


@pytest.mark.parametrize("policy", ["all", "fps:2", "fps:0.5"])
def test_single_threaded_decoding_gives_the_same_frames(clip, policy):
    """A face actor decodes on one thread (decode.threads=1): same frames, same pixels."""
    _, auto = _read(clip, policy)
    _, one = _read(clip, policy, threads=1)
    assert [f.index for f in one] == [f.index for f in auto]
    assert all(np.array_equal(a.image, b.image) for a, b in zip(one, auto, strict=True))


@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="FFmpeg starts one thread per core: needs 2+")
def test_one_decoder_thread_starts_no_thread_pool(clip):
    """FFmpeg's default starts a decoder thread per core in every reader; threads=1 starts none."""
    import psutil

    def threads_while_decoding(**kw) -> int:
        with VideoReader(clip, SamplingPolicy.parse("all"), **kw) as r:
            frames = r.frames()
            next(frames)
            n = psutil.Process().num_threads()
            list(frames)
            return n

    assert threads_while_decoding(threads=1) < threads_while_decoding()


def test_decode_threads_must_not_be_negative():
    from workflows.annotate.pipeline import AnnotateConfig
    from workflows.core.config import ConfigError, load_config

    assert load_config(AnnotateConfig, None, []).decode.threads == 1
    with pytest.raises(ConfigError, match="decode.threads: must be >= 0"):
        load_config(AnnotateConfig, None, ["decode.threads=-1"])


def test_sparse_sampling_seeks_instead_of_decoding_everything(clip):
    r, frames = _read(clip, "fps:0.5")
    assert r.seeks >= 3 and r.decoded_frames < 60
    r_all, _ = _read(clip, "fps:2")
    assert r_all.decoded_frames == 100  # 0.5 s apart: under seek_min_gap_s, decoded sequentially


def test_long_gop_falls_back_to_sequential(tmp_path):
    p = str(render_video(tmp_path / "longgop.mp4", n_frames=60, fps=10, gop=300))
    r, frames = _read(p, "fps:0.5")
    assert [read_index(f.image) for f in frames] == [0, 20, 40]
    assert r.decoded_frames <= 62


def test_rotation_metadata_is_applied(tmp_path):
    p = str(render_video(tmp_path / "rot.mp4", n_frames=5, fps=5, width=256, height=144, rotation=90))
    r, frames = _read(p, "all")
    assert frames[0].image.shape == (256, 144, 3)
    assert r.probe.rotation in (90, 270) and r.probe.display_size == (144, 256)


def test_variable_frame_rate_timestamps(tmp_path):
    pts = [0.0, 0.1, 0.15, 0.9, 1.0, 1.6, 2.4, 2.45]
    p = str(render_video(tmp_path / "vfr.mp4", n_frames=len(pts), fps=10, pts_seconds=pts))
    _, frames = _read(p, "all")
    assert [round(f.timestamp_s, 3) for f in frames] == pts
    _, frames = _read(p, "fps:1")  # first frame at/after 0, 1, 2 s
    assert [read_index(f.image) for f in frames] == [0, 4, 6]


def test_odd_size_video(tmp_path):
    p = str(render_video(tmp_path / "odd.mkv", n_frames=3, fps=5, width=198, height=110, codec="ffv1"))
    _, frames = _read(p, "all")
    assert frames[0].image.shape == (110, 198, 3)


def test_still_image_is_a_one_frame_video(tmp_path):
    from PIL import Image

    img = np.zeros((50, 80, 3), np.uint8)
    img[:, :40] = 255
    Image.fromarray(img).save(tmp_path / "s.png")
    r, frames = _read(str(tmp_path / "s.png"), "fps:2")
    assert len(frames) == 1 and frames[0].image.shape == (50, 80, 3) and r.probe.is_image


def test_exif_rotated_jpeg_is_upright(tmp_path):
    from PIL import Image

    im = Image.fromarray(np.zeros((40, 100, 3), np.uint8))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 CW on display
    im.save(tmp_path / "r.jpg", exif=exif)
    _, frames = _read(str(tmp_path / "r.jpg"), "all")
    assert frames[0].image.shape == (100, 40, 3)


def _png_header_only(path, w, h):
    def chunk(t, d):
        return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d) & 0xFFFFFFFF)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
                     + chunk(b"IEND", b""))


def _audio_only(path):
    import av

    with av.open(str(path), "w") as out:
        s = out.add_stream("aac", rate=16000)
        for i in range(10):
            f = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
            f.sample_rate = 16000
            f.pts = i * 1024
            for p in s.encode(f):
                out.mux(p)
        for p in s.encode():
            out.mux(p)


@pytest.mark.parametrize("name,make,kind", [
    ("zero.mp4", lambda p: p.write_bytes(b""), "empty_file"),
    ("text.mp4", lambda p: p.write_text("this is not a video\n" * 50), "invalid_data"),
    ("audio.mp4", _audio_only, "no_video_stream"),
    ("bomb.png", lambda p: _png_header_only(p, 100000, 100000), "too_large"),
    ("tiny.png", lambda p: _png_header_only(p, 1, 1), "too_small"),
    ("garbled.png", lambda p: p.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00garbage" * 10), "invalid_data"),
])
def test_bad_inputs_raise_decode_error_with_kind(tmp_path, name, make, kind):
    p = tmp_path / name
    make(p)
    with pytest.raises(DecodeError) as ei:
        _read(str(p), "fps:2")
    assert ei.value.kind == kind, ei.value
    assert ei.value.message


def test_truncated_mp4(tmp_path, clip):
    data = Path(clip).read_bytes()
    p = tmp_path / "trunc.mp4"
    p.write_bytes(data[: len(data) // 2])
    with pytest.raises(DecodeError) as ei:
        _read(str(p), "all")
    assert ei.value.kind in ("invalid_data", "decode_error", "no_frames", "truncated")


def _cut_faststart(tmp_path) -> Path:
    """The first half of a 10 s clip whose header (declaring 10 s) comes first: frames up to ~4 s."""
    src = render_video(tmp_path / "fast.mp4", n_frames=100, fps=10, gop=10)
    import av

    fast = tmp_path / "faststart.mp4"
    with av.open(str(src)) as inp, av.open(str(fast), "w", options={"movflags": "faststart"}) as out:
        s = out.add_stream_from_template(inp.streams.video[0])
        for pkt in inp.demux(inp.streams.video[0]):
            if pkt.dts is not None:
                pkt.stream = s
                out.mux(pkt)
    data = fast.read_bytes()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: len(data) // 2])
    return cut


@pytest.mark.parametrize("policy", ["all", "fps:2", "fps:0.5"])
def test_truncated_with_header_up_front_is_detected(tmp_path, policy):
    cut = _cut_faststart(tmp_path)
    with pytest.raises(DecodeError) as ei:
        _read(str(cut), policy)
    assert ei.value.kind == "truncated" and "header declares 10.00 s" in ei.value.message


def test_one_pixel_video(tmp_path):
    p = str(render_video(tmp_path / "px.mkv", n_frames=2, fps=5, width=2, height=2, codec="ffv1"))
    with pytest.raises(DecodeError) as ei:
        _read(p, "all")
    assert ei.value.kind == "too_small"


def test_too_many_pixels_by_header(tmp_path):
    p = str(render_video(tmp_path / "big.mp4", n_frames=2, fps=10))
    with pytest.raises(DecodeError) as ei:
        _read(p, "all", limits=DecodeLimits(max_pixels=256 * 100))
    assert ei.value.kind == "too_large" and "decode.limits.max_pixels" in ei.value.message


def test_too_long_by_header(tmp_path):
    p = str(render_video(tmp_path / "long.mp4", n_frames=20, fps=10))
    with pytest.raises(DecodeError) as ei:
        _read(p, "all", limits=DecodeLimits(max_duration_s=1.0))
    assert ei.value.kind == "too_long"


def test_streams_from_s3(s3_bucket, clip):
    from workflows.core import storage

    uri = f"{s3_bucket}/v/clip.mp4"
    storage.write_bytes(uri, Path(clip).read_bytes())
    _, frames = _read(uri, "fps:1")
    assert [read_index(f.image) for f in frames] == list(range(0, 100, 10))


def test_header_claiming_100000_squared_is_an_error(tmp_path):
    p = tmp_path / "absurd.mkv"
    p.write_bytes(b"YUV4MPEG2 W100000 H100000 F30:1 Ip A1:1 C420jpeg\nFRAME\n" + b"\0" * 64)
    with pytest.raises(DecodeError) as ei:
        _read(str(p), "fps:2")
    assert ei.value.kind in ("too_large", "open_failed")  # FFmpeg itself refuses dimensions this large


# -- time windows --------------------------------------------------------------------------

def _windows(bounds):
    return list(zip(bounds, [*bounds[1:], None], strict=True))


@pytest.mark.parametrize("bounds", [
    [0.0, 3.33, 6.1],  # boundaries on neither key frames nor targets
    [0.0, 2.0, 5.0],  # boundaries on key frames and on targets
    [0.0, 1.45, 5.75],  # uniform:7 targets 1.43 and 5.71 just before a boundary, their frames (1.5, 5.8) after it
], ids=["between", "on", "target-before-frame-after"])
@pytest.mark.parametrize("policy", ["all", "fps:5", "fps:0.5", "uniform:7", "keyframes"])
@pytest.mark.parametrize("media", ["clip", "ts_clip"])
def test_windows_concatenated_are_the_whole_read(media, policy, bounds, request):
    """Workers decoding the windows of a video get together exactly the frames of one reader,
    also on MPEG-TS, whose seeks land past their aim."""
    video = request.getfixturevalue(media)
    _, whole = _read(video, policy)
    parts = [f for w in _windows(bounds) for f in _read(video, policy, window=w)[1]]
    assert [(f.index, f.timestamp_s) for f in parts] == [(f.index, f.timestamp_s) for f in whole]
    assert all(np.array_equal(a.image, b.image) for a, b in zip(parts, whole, strict=True))


def test_sparse_window_seeks_to_its_first_target(clip):
    r, frames = _read(clip, "uniform:4", window=(5.05, None))  # first target 7.5 s
    assert [f.index for f in frames] == [75]
    assert r.decoded_frames < 15  # not every frame from 5 s to 7.5 s


@pytest.mark.parametrize("policy,window", [
    ("fps:0.5", (2.5, 3.5)),  # between the targets 2 s and 4 s
    ("keyframes", (2.05, 2.95)),
    ("all", (10.5, None)),  # a last window after the last frame
])
def test_window_without_sampled_frames_yields_nothing(clip, policy, window):
    _, frames = _read(clip, policy, window=window)
    assert frames == []


def test_truncated_file_raises_in_the_last_window_only(tmp_path):
    cut = str(_cut_faststart(tmp_path))
    _, first = _read(cut, "all", window=(0.0, 2.0))
    _, middle = _read(cut, "all", window=(2.0, 6.0))  # the data ends inside it: the last window tells
    assert [f.index for f in first] == list(range(20)) and middle and middle[0].index == 20
    with pytest.raises(DecodeError) as ei:
        _read(cut, "all", window=(2.5, None))
    assert ei.value.kind == "truncated" and "header declares 10.00 s" in ei.value.message


def test_window_deadline_is_that_of_its_length(clip):
    limits = DecodeLimits()
    for window in [(2.0, 5.0), (7.0, None)]:
        with VideoReader(clip, SamplingPolicy.parse("all"), limits, window=window) as r:
            assert r.budget_s == limits.wall_budget_s(3.0)


@pytest.mark.parametrize("window,problem", [
    ((-1.0, 2.0), "the start must be"),
    ((float("nan"), None), "the start must be"),
    ((3.0, 2.0), "the end must be after the start"),
    ((3.0, 3.0), "the end must be after the start"),
])
def test_invalid_window_is_refused(clip, window, problem):
    with pytest.raises(ValueError, match=problem):
        VideoReader(clip, SamplingPolicy.parse("all"), window=window)


def test_window_on_a_still_image_is_refused(tmp_path):
    from PIL import Image

    Image.fromarray(np.zeros((50, 80, 3), np.uint8)).save(tmp_path / "s.png")
    with pytest.raises(ValueError, match="still image"):
        VideoReader(str(tmp_path / "s.png"), SamplingPolicy.parse("all"), window=(0.0, None))
