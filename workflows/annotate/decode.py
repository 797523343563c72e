"""Probe and decode videos and still images with PyAV, streaming, under sampling policies.

A video is read from a stream (local file or a ranged S3 reader), never loaded whole.
Sampling policies (``SamplingPolicy.parse``):

- ``all``         every frame;
- ``fps:N``       the first frame at or after each multiple of 1/N seconds (N <= 1000);
- ``uniform:K``   K frames at evenly spaced times ``k * duration / K``;
- ``keyframes``   only key frames (the decoder skips the rest).

Sparse policies seek to the key frame before the next target instead of decoding the gap,
aim further back where a seek lands past its aim (MPEG-TS lands on the key frame after it),
and fall back to sequential decoding for the rest of a video when seeking does not move
forward (long GOPs). Frames that are not sampled are never converted to RGB.

A reader may be given a time window ``(start_s, end_s)``: it then yields exactly the sampled
frames of the whole read whose timestamp lies in ``[start_s, end_s)`` (the first window, from 0,
also owns any frame before 0), so that the windows of a video, read by different workers and
concatenated, give the frames, indices and timestamps of the unsplit read. A window seeks to the
key frame before its start, and its frame indices come from the timestamps.

Every problem with an input becomes a :class:`DecodeError` with a ``kind`` and a readable
message; the annotate pipeline records it as an error row. A video that runs past its deadline
(``DecodeLimits.max_wall_s``, checked at every decoded frame, so the time its consumer spends
on the frames counts too) ends with kind ``timeout``.

Local media are named by their path, except a path that is not valid UTF-8 (a Latin-1 name
from an old archive: Parquet strings are UTF-8): it is named by a ``file://`` URI with its
bytes percent-encoded (:func:`workflows.core.storage.local_uri`), which ``storage.strip_file_scheme`` maps back.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import os
import re
import time
from collections.abc import Iterator
from typing import IO, Any

import numpy as np

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp")
VIDEO_SUFFIXES = (".mp4", ".mkv", ".mov", ".webm", ".avi", ".m4v", ".mpg", ".mpeg", ".ts", ".flv", ".wmv")
# No camera records 1000 frames per second of anything mien annotates; a larger N is a typo
# (fps:1000000000 is every frame, listed a billion times a second).
MAX_SAMPLING_FPS = 1000.0


@dataclasses.dataclass(slots=True)
class Frame:
    """One sampled frame. ``image`` is HxWx3 uint8 RGB, already rotated upright."""

    index: int  # index of the frame in the stream (0-based; from timestamp x fps after a seek or in a window)
    timestamp_s: float  # presentation time in seconds from the stream start
    image: np.ndarray


class DecodeError(Exception):
    """A video that cannot be (fully) decoded. ``kind`` is a short machine-readable tag."""

    def __init__(self, kind: str, message: str):
        self.kind = kind
        self.message = message
        super().__init__(f"{kind}: {message}")


@dataclasses.dataclass
class DecodeLimits:
    """Guards against hostile or absurd inputs."""

    max_duration_s: float = 6 * 3600.0
    max_pixels: int = 8192 * 8192
    max_sampled_frames: int = 100_000
    min_side: int = 16  # smaller frames cannot hold a detectable face
    # Wall seconds one video may take (decode + face extraction): max_wall_s plus
    # max_wall_s_per_video_s per second of the video, so no input or setting keeps a worker busy
    # forever. The floor covers stills and short clips on a busy core; 30 s per second of video
    # covers sampling=all at 30 fps at 1 s per frame (several faces on a slow CPU core; the face
    # stage measures 0.1-0.4 s per frame, docs/PERFORMANCE.md). max_wall_s=0: no deadline.
    max_wall_s: float = 600.0
    max_wall_s_per_video_s: float = 30.0

    def wall_budget_s(self, duration_s: float | None) -> float | None:
        """Seconds a video of ``duration_s`` (None: unknown, the floor alone) may take; None: no limit."""
        if not self.max_wall_s:
            return None
        return self.max_wall_s + self.max_wall_s_per_video_s * (duration_s or 0.0)

    def validate(self) -> list[str]:
        p = []
        if self.max_duration_s <= 0:
            p.append("max_duration_s: must be > 0")
        if self.max_pixels <= 0:
            p.append("max_pixels: must be > 0")
        if self.max_sampled_frames <= 0:
            p.append("max_sampled_frames: must be > 0")
        return p


@dataclasses.dataclass(frozen=True)
class SamplingPolicy:
    kind: str  # "all" | "fps" | "uniform" | "keyframes"
    value: float = 0.0

    _PATTERN = re.compile(r"^(all|keyframes|fps:(\d+(\.\d+)?)|uniform:(\d+))$")

    @classmethod
    def parse(cls, text: str) -> SamplingPolicy:
        text = text.strip()
        m = cls._PATTERN.match(text)
        if not m:
            raise ValueError(f"sampling policy {text!r} is not one of: all, keyframes, fps:N, uniform:K")
        if text.startswith("fps:"):
            v = float(text[4:])
            if v <= 0:
                raise ValueError("fps:N needs N > 0")
            if v > MAX_SAMPLING_FPS:
                raise ValueError(f"fps:{text[4:]} asks for more than {MAX_SAMPLING_FPS:g} frames per second; "
                                 f"use 'all' for every frame")
            return cls("fps", v)
        if text.startswith("uniform:"):
            v = int(text[8:])
            if v <= 0:
                raise ValueError("uniform:K needs K > 0")
            return cls("uniform", float(v))
        return cls(text)

    def __str__(self) -> str:
        if self.kind == "fps":
            return f"fps:{self.value:g}"
        if self.kind == "uniform":
            return f"uniform:{int(self.value)}"
        return self.kind


@dataclasses.dataclass
class VideoProbe:
    """What the container says about its first video stream (before any decoding)."""

    duration_s: float | None
    fps: float | None
    width: int
    height: int
    rotation: int  # degrees counter-clockwise applied for display (0, 90, 180, 270)
    codec: str
    n_frames: int | None  # from the header; may be 0/None for some containers
    is_image: bool = False

    @property
    def display_size(self) -> tuple[int, int]:
        """(width, height) after rotation."""
        return (self.height, self.width) if self.rotation % 180 else (self.width, self.height)


_EXIF_ORIENTATION = 0x0112
# EXIF orientation -> counter-clockwise rotation applied for display (mirroring aside).
_EXIF_ROTATION_CCW = {3: 180, 4: 180, 5: 90, 6: 270, 7: 270, 8: 90}


def is_image_uri(uri: str) -> bool:
    return uri.lower().endswith(IMAGE_SUFFIXES)


def _open_source(uri: str) -> IO[bytes] | str:
    from workflows.core import storage

    if not storage.is_remote(uri):
        path = storage.strip_file_scheme(uri)
        if not os.path.exists(path):
            raise DecodeError("not_found", f"no such file: {uri}")
        if os.path.isdir(path):
            raise DecodeError("not_a_file", f"is a directory: {uri}")
        if os.path.getsize(path) == 0:
            raise DecodeError("empty_file", "the file is empty (0 bytes)")
        return path
    try:
        if storage.info(uri).get("size", 1) == 0:
            raise DecodeError("empty_file", "the object is empty (0 bytes)")
        return storage.open_input(uri)
    except FileNotFoundError as e:
        raise DecodeError("not_found", f"no such object: {uri}") from e
    except PermissionError as e:
        raise DecodeError("access_denied", f"access denied reading {uri} ({e})") from e


def _rotation_of(stream: Any) -> int:
    rot = 0
    try:
        tag = stream.metadata.get("rotate")
        if tag is not None:
            rot = -int(float(tag))
    except (TypeError, ValueError):
        rot = 0
    return int(rot) % 360


def _rotate(image: np.ndarray, rotation_ccw: float) -> np.ndarray:
    r = int(round(rotation_ccw / 90.0)) % 4
    return np.ascontiguousarray(np.rot90(image, k=r)) if r else image


def _check_window(uri: str, window: tuple[float, float | None]) -> None:
    """A window the reader cannot honour is the caller's mistake: refuse it before opening anything."""
    start, end = window
    if is_image_uri(uri):
        raise ValueError(f"window {window}: {uri} is a still image, which has no time to split; read it without a window")
    if not (math.isfinite(start) and start >= 0):
        raise ValueError(f"window {window}: the start must be a number of seconds >= 0")
    if end is not None and not end > start:
        raise ValueError(f"window {window}: the end must be after the start (or None: to the end of the video)")


class VideoReader:
    """Streams sampled frames of one video or still image. Use as a context manager.

    >>> with VideoReader(uri, SamplingPolicy.parse("fps:2")) as r:
    ...     probe = r.probe
    ...     for frame in r.frames(): ...
    """

    def __init__(self, uri: str, policy: SamplingPolicy, limits: DecodeLimits | None = None,
                 seek_min_gap_s: float = 1.0, threads: int = 0, window: tuple[float, float | None] | None = None):
        if window is not None:
            _check_window(uri, window)
        self.uri = uri
        self.policy = policy
        self.limits = limits or DecodeLimits()
        self.seek_min_gap_s = seek_min_gap_s
        self.threads = threads  # decoder threads; 0 = FFmpeg's choice (one per core)
        self._container: Any = None
        self._source: Any = None
        self._image: np.ndarray | None = None
        # The window: the frames owned by this reader have lo <= t < hi (the first window owns t < 0 too).
        self.window = window
        self._lo = window[0] if window is not None and window[0] > 0 else -math.inf
        self._hi = window[1] if window is not None and window[1] is not None else math.inf
        started = time.monotonic()
        self.probe: VideoProbe = self._open()
        duration = self.probe.duration_s or ((self.probe.n_frames or 0) / (self.probe.fps or 1.0))
        if window is not None:  # a window's deadline is that of a video as long as the window
            duration = max((duration if window[1] is None else window[1]) - window[0], 0.0)
        self.budget_s = self.limits.wall_budget_s(duration)
        self._deadline = started + self.budget_s if self.budget_s is not None else math.inf
        self.decoded_frames = 0  # frames the decoder produced (sampled or not)
        self.seeks = 0
        self.last_decoded_s = -math.inf  # timestamp of the last frame the decoder produced
        self.reached_eof = False

    # -- opening and probing ------------------------------------------------------------
    def _open(self) -> VideoProbe:
        if is_image_uri(self.uri):
            return self._open_image()
        import av

        self._source = _open_source(self.uri)
        try:
            self._container = av.open(self._source, mode="r", metadata_errors="ignore")
        except av.error.InvalidDataError as e:
            self.close()
            raise DecodeError("invalid_data", f"not a decodable media container ({e})") from e
        except av.error.FFmpegError as e:
            self.close()
            raise DecodeError("open_failed", f"FFmpeg could not open the file ({e})") from e
        if not self._container.streams.video:
            kinds = sorted({s.type for s in self._container.streams})
            self.close()
            raise DecodeError("no_video_stream",
                              f"the file has no video stream (streams: {', '.join(kinds) or 'none'})")
        stream = self._container.streams.video[0]
        cc = stream.codec_context
        width, height = int(cc.width or 0), int(cc.height or 0)
        fps = None
        for rate in (stream.average_rate, stream.guessed_rate, stream.base_rate):
            if rate and float(rate) > 0:
                fps = float(rate)
                break
        duration = None
        if stream.duration is not None and stream.time_base is not None:
            duration = float(stream.duration * stream.time_base)
        elif self._container.duration is not None:
            duration = self._container.duration / 1_000_000.0
        probe = VideoProbe(duration_s=duration, fps=fps, width=width, height=height,
                           rotation=_rotation_of(stream), codec=cc.name or "unknown",
                           n_frames=int(stream.frames) if stream.frames else None)
        if width <= 0 or height <= 0:
            self.close()
            raise DecodeError("invalid_dimensions", f"video stream reports {width}x{height} pixels")
        if min(width, height) < self.limits.min_side:
            self.close()
            raise DecodeError("too_small", f"{width}x{height} pixels is below "
                                           f"decode.limits.min_side={self.limits.min_side}")
        if width * height > self.limits.max_pixels:
            self.close()
            raise DecodeError("too_large", f"{width}x{height} = {width * height} pixels exceeds "
                                           f"decode.limits.max_pixels={self.limits.max_pixels}")
        if duration is not None and duration > self.limits.max_duration_s:
            self.close()
            raise DecodeError("too_long", f"duration {duration:.0f} s exceeds "
                                          f"decode.limits.max_duration_s={self.limits.max_duration_s:.0f}")
        return probe

    def _open_image(self) -> VideoProbe:
        from PIL import Image, ImageOps

        src = _open_source(self.uri)
        fh = open(src, "rb") if isinstance(src, str) else src  # noqa: SIM115 - closed below
        try:
            # Pillow's own decompression-bomb guard raises for > 2x MAX_IMAGE_PIXELS; we check
            # the header size against our limit first so nothing is allocated for a bomb.
            with Image.open(fh) as im:
                w, h = im.size
                if min(w, h) < self.limits.min_side:
                    raise DecodeError("too_small", f"{w}x{h} pixels is below "
                                                   f"decode.limits.min_side={self.limits.min_side}")
                if w * h > self.limits.max_pixels:
                    raise DecodeError("too_large", f"{w}x{h} = {w * h} pixels exceeds "
                                                   f"decode.limits.max_pixels={self.limits.max_pixels}")
                orientation = im.getexif().get(_EXIF_ORIENTATION, 1)
                upright = ImageOps.exif_transpose(im).convert("RGB")
                self._image = np.asarray(upright, dtype=np.uint8)
        except DecodeError:
            raise
        except Image.DecompressionBombError as e:
            raise DecodeError("too_large", str(e)) from e
        except (OSError, SyntaxError, ValueError) as e:
            raise DecodeError("invalid_data", f"not a decodable image ({e})") from e
        finally:
            fh.close()
        # Like a video's: coded size plus the rotation for display, so that display_size is
        # the size of the upright frame the face boxes refer to.
        h2, w2 = self._image.shape[:2]
        rotation = _EXIF_ROTATION_CCW.get(orientation, 0) if isinstance(orientation, int) else 0
        if rotation % 180:
            w2, h2 = h2, w2
        return VideoProbe(duration_s=0.0, fps=None, width=w2, height=h2, rotation=rotation,
                          codec="image", n_frames=1, is_image=True)

    # -- decoding ----------------------------------------------------------------------
    def frames(self) -> Iterator[Frame]:
        """Yield the sampled frames in presentation order. Raises DecodeError on failure."""
        if self._image is not None:
            yield Frame(0, 0.0, self._image)
            return
        import av

        n = 0
        try:
            for frame in self._sampled():
                n += 1
                if n > self.limits.max_sampled_frames:
                    raise DecodeError("too_many_frames", f"more than decode.limits.max_sampled_frames="
                                                         f"{self.limits.max_sampled_frames} sampled frames")
                yield frame
        except av.error.FFmpegError as e:
            raise DecodeError("decode_error", f"decoding failed after {n} sampled frames ({e})") from e
        except MemoryError as e:
            raise DecodeError("out_of_memory", "ran out of memory while decoding") from e
        if self.window is None and n == 0:  # a window may hold no sampled frame: the whole video decides
            raise DecodeError("no_frames", "no decodable video frames")
        if self._hi == math.inf:  # the stream's end is the last window's to check
            self._check_complete()

    def _check_complete(self) -> None:
        """A stream that ends well before the duration its header declares was cut short."""
        p = self.probe
        if not self.reached_eof or self.policy.kind == "keyframes" or not p.duration_s:
            return
        tolerance = max(0.5, 3.0 / (p.fps or 10.0))
        if self.last_decoded_s < p.duration_s - tolerance:
            raise DecodeError("truncated", f"the stream ends at {max(self.last_decoded_s, 0):.2f} s but the "
                                           f"header declares {p.duration_s:.2f} s (truncated or corrupt file)")

    def _to_frame(self, frame: Any, index: int, t: float) -> Frame:
        img = frame.to_ndarray(format="rgb24")
        rot = getattr(frame, "rotation", 0) or 0  # display-matrix rotation, degrees ccw
        if rot:
            self.probe.rotation = int(rot) % 360  # the display matrix is authoritative
        elif self.probe.rotation:
            rot = self.probe.rotation
        return Frame(index=index, timestamp_s=t, image=_rotate(img, rot))

    def _time(self, frame: Any, stream: Any, start: float) -> float:
        if frame.pts is None:
            return float("nan")
        return float(frame.pts * stream.time_base) - start

    def _sampled(self) -> Iterator[Frame]:
        stream = self._container.streams.video[0]
        stream.thread_type = "AUTO"
        if self.threads:
            stream.codec_context.thread_count = self.threads
        start = float(stream.start_time * stream.time_base) if stream.start_time is not None else 0.0
        kind = self.policy.kind
        if kind == "keyframes":
            stream.codec_context.skip_frame = "NONKEY"
        prev, decoder = None, self._decoded(stream)
        if self._lo > -math.inf:
            prev, decoder = self._enter_window(stream, start)
        if kind in ("keyframes", "all"):
            count = self._index_from_time(prev, -1) + 1 if prev is not None else 0  # the index without timestamps
            for i, frame in enumerate(decoder, start=count):
                t = self._time(frame, stream, start)
                if kind == "all":
                    self.last_decoded_s = max(self.last_decoded_s, t)
                if t >= self._hi:
                    return
                idx = i if kind == "all" and self.window is None else self._index_from_time(t, i)
                yield self._to_frame(frame, idx, t)
            self.reached_eof = True
            return
        yield from self._sampled_targets(stream, start, prev, decoder)

    def _enter_window(self, stream: Any, start: float) -> tuple[float | None, Iterator[Any]]:
        """Seek to the key frame before the window and decode up to its start. Returns the time of
        the last frame before the window (None: none) and the decoder at the window's first frame.

        The seek lands strictly before the start, so that the frame before the window is decoded even
        when a key frame lies on the start: whether the window's first frame is sampled depends on it."""
        first, decoder = self._seek_before(stream, start, self._lo, strict=True)
        prev = None
        for frame in itertools.chain([first] if first is not None else [], decoder):
            t = self._time(frame, stream, start)
            if math.isfinite(t):
                self.last_decoded_s = max(self.last_decoded_s, t)
            if t >= self._lo:
                return prev, itertools.chain([frame], decoder)
            if math.isfinite(t):
                prev = t
        return prev, iter(())

    def _seek_before(self, stream: Any, start: float, t: float, strict: bool) -> tuple[Any, Iterator[Any]]:
        """Seek to the key frame at or before ``t`` (``strict``: before it). Returns the first frame
        decoded there (None: none) and the decoder after it.

        A container that seeks past its aim (MPEG-TS lands on the key frame after it, or nowhere past
        the last one) would skip the frames up to its landing: the seek then aims further back (2, 8,
        32 s...), and at last at the beginning, so that no frame at or after ``t`` is missed."""
        back = 0.0
        while True:
            aim = t - back
            pts = (math.floor((aim + start) / stream.time_base) - int(strict)) if aim > 0 else (stream.start_time or 0)
            self._container.seek(pts, stream=stream, backward=True, any_frame=False)
            self.seeks += 1
            decoder = self._decoded(stream)
            first = next(decoder, None)
            t_first = self._time(first, stream, start) if first is not None else math.inf
            if math.isfinite(t_first):
                self.last_decoded_s = max(self.last_decoded_s, t_first)
            overshot = t_first >= t if strict else t_first > t + 1e-6  # a frame without time: cannot tell
            if not overshot or aim <= 0:
                return first, decoder
            back = max(4 * back, 2.0)

    def _decoded(self, stream: Any) -> Iterator[Any]:
        """The decoder's frames from where it stands, counted and held to the video's deadline
        (checked per decoded frame, so neither a long gap between sampled frames nor slow work on
        them keeps a worker past it)."""
        for frame in self._container.decode(stream):
            self.decoded_frames += 1
            if time.monotonic() > self._deadline:
                lim = self.limits
                raise DecodeError("timeout", (
                    f"still running after {self.budget_s:.3g} s, the deadline for this video "
                    f"(decode.limits.max_wall_s={lim.max_wall_s:g} + decode.limits.max_wall_s_per_video_s="
                    f"{lim.max_wall_s_per_video_s:g} per second of video); raise them, or set "
                    f"decode.limits.max_wall_s=0 for no deadline"))
            yield frame

    def _index_from_time(self, t: float, fallback: int) -> int:
        fps = self.probe.fps
        if fps and math.isfinite(t):
            return int(round(t * fps))
        return fallback

    def _target_after(self, t: float) -> float | None:
        """The first sampling time later than ``t`` (None: no more), computed rather than stepped
        to: one frame of a fine policy satisfies many targets (uniform:K with a huge K)."""
        t += 1e-6  # a frame within a microsecond of a target satisfies it
        if self.policy.kind == "fps":
            step = 1.0 / self.policy.value
            return (math.floor(t / step) + 1) * step
        k_total = int(self.policy.value)
        dur = self.probe.duration_s
        if not dur or not math.isfinite(dur):
            dur = (self.probe.n_frames or 1) / (self.probe.fps or 1.0)
        k = math.floor(t * k_total / dur) + 1
        return k * dur / k_total if k < k_total else None

    def _sampled_targets(self, stream: Any, start: float, prev: float | None,
                         decoder: Iterator[Any]) -> Iterator[Frame]:
        """First frame at/after each target time; seek across gaps wider than seek_min_gap_s.
        ``decoder`` stands at the window's first frame, ``prev`` is the time of the frame before it."""
        # The frame before the window satisfied every target up to it: the first target of the
        # window is the first one after it, exactly as in a read from the start.
        target: float | None = self._target_after(prev) if prev is not None else 0.0
        seeking = self.policy.kind == "uniform" or (1.0 / self.policy.value) >= self.seek_min_gap_s
        index = self._index_from_time(prev, -1) if prev is not None else -1
        since = prev  # where the decoder stands after the last sampled frame: a seek may start from there
        first = None  # the first frame after the last seek
        while target is not None:
            if seeking and since is not None and target - since >= self.seek_min_gap_s:
                first, decoder = self._seek_before(stream, start, target, strict=False)
                if first is None:
                    self.reached_eof = True
                    return
                t_first = self._time(first, stream, start)
                if not math.isfinite(t_first) or t_first <= since:
                    # The key frame before the target is at/behind where we were: seeking gains
                    # nothing on this video (long GOP, or a container whose seeks overshoot had to
                    # aim back that far). Decode forward from here without seeking.
                    # (Frames up to `since` do not satisfy the target: none is sampled twice.)
                    seeking = False
                index = self._index_from_time(t_first, index + 1) - 1
                decoder = itertools.chain([first], decoder)
            since = None
            try:
                frame = next(decoder)
            except StopIteration:
                self.reached_eof = True
                return
            t = self._time(frame, stream, start)
            if math.isfinite(t):
                self.last_decoded_s = max(self.last_decoded_s, t)
            index += 1
            if not math.isfinite(t):
                t = index / (self.probe.fps or 1.0)
            if t >= self._hi:
                return
            if t + 1e-6 < target:
                continue
            yield self._to_frame(frame, index if self.window is None else self._index_from_time(t, index), t)
            target = self._target_after(t)  # one frame satisfies every target up to it
            since = None if frame is first else t  # after a seek's frame, the next target is decoded to

    def close(self) -> None:
        if self._container is not None:
            self._container.close()
            self._container = None
        if self._source is not None and not isinstance(self._source, str):
            self._source.close()
        self._source = None

    def __enter__(self) -> VideoReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
