"""``mien render``: the source video re-encoded (H.264) with its annotations drawn on.

Every source frame is decoded (rotation applied, as the annotator saw it) and gets, for each
face track, the box, ``#track``, the expression label with its confidence and the top active
AUs of the track's most recent annotated face. Faces are annotated only on sampled frames
(e.g. ``fps:2``), so a face is held until its track's next sampled frame and dropped once it is
older than ``max_gap_s`` (the track left, or was lost). Output frames keep the source
presentation timestamps (same time base), so the render lines up with the source and with
``timestamp_s`` in the Parquet. Audio is not copied.

A still-image input (annotated as a one-frame video) renders to an annotated JPEG/PNG; so does one
frame of a video (``--output x.png``): the one at ``--at`` seconds, by default the annotated frame
that shows the most faces. Labels are placed where they cover no other face and no other label
(group photos), joined to their box by a line when they had to move away from it.
"""

from __future__ import annotations

import bisect
import dataclasses
import logging
import math
import os
import statistics
import tempfile
from collections.abc import Iterator
from fractions import Fraction
from typing import Any

import numpy as np

from workflows.core import storage
from workflows.corpus.reader import AnnotationOutput, OutputError, top_active_aus
from workflows.outputs.palette import fe_color, rgb

log = logging.getLogger(__name__)

FACE_COLUMNS = ["frame_index", "timestamp_s", "track_id", "segment_id", "bbox", "fe_label", "fe_confidence",
                "au_active", "au_probs"]
IMAGE_OUTPUT_SUFFIXES = (".jpg", ".jpeg", ".png")


@dataclasses.dataclass
class RenderOptions:
    """How ``mien render`` draws and encodes."""

    max_gap_s: float | None = None  # hold a face at most this long; None: 1.5 x the sampling step
    top_aus: int = 3  # active AUs shown per face, most probable first
    codec: str = "libx264"
    crf: int = 20  # x264 quality (lower = better, larger)
    preset: str = "veryfast"
    timecode: bool = True  # draw "t=…s frame N" in the bottom-left corner
    at_s: float | None = None  # image output of a video: the frame at this time; None: the most faces


@dataclasses.dataclass
class RenderResult:
    """What was written."""

    path: str
    video_id: str
    frames: int  # frames written (= decoded source frames)
    frames_with_faces: int
    faces_drawn: int  # boxes drawn over all frames
    max_gap_s: float
    at_s: float | None = None  # image output: the time of the frame drawn


class TrackTimeline:
    """The annotated faces of one track in time order; answers "which face to show at t"."""

    def __init__(self, rows: list[dict[str, Any]]):
        self.rows = sorted(rows, key=lambda r: r["timestamp_s"])
        self.times = [float(r["timestamp_s"]) for r in self.rows]

    def at(self, t: float, max_gap_s: float, eps: float) -> dict[str, Any] | None:
        """The latest face sampled at or before ``t`` if it is at most ``max_gap_s`` old."""
        i = bisect.bisect_right(self.times, t + eps) - 1
        if i < 0 or t - self.times[i] > max_gap_s + eps:
            return None
        return self.rows[i]


def default_max_gap(timelines: list[TrackTimeline], fps: float | None) -> float:
    """1.5 x the median step between a track's consecutive samples (at least one frame)."""
    steps = [b - a for tl in timelines for a, b in zip(tl.times, tl.times[1:], strict=False) if b > a]
    frame_s = 1.0 / fps if fps else 0.04
    if not steps:
        return max(0.5, frame_s)
    return max(1.5 * statistics.median(steps), frame_s)


def _text_color(bg: tuple[int, int, int]) -> tuple[int, int, int]:
    luminance = 0.299 * bg[0] + 0.587 * bg[1] + 0.114 * bg[2]
    return (0, 0, 0) if luminance > 140 else (255, 255, 255)


Rect = tuple[int, int, int, int]  # x0, y0, x1, y1 in pixels


def draw_faces(image: np.ndarray, faces: list[dict[str, Any]], top_aus: int = 3) -> np.ndarray:
    """Draw boxes and labels of ``faces`` on an HxWx3 uint8 RGB ``image`` in place; returns it.

    Every box is drawn first, then the labels where :func:`place_labels` puts them."""
    import cv2

    h, w = image.shape[:2]
    scale = min(1.2, max(0.35, h / 640))
    thick = 1 if scale < 0.6 else 2
    box_thick = max(2, round(h / 240))
    font = cv2.FONT_HERSHEY_SIMPLEX
    boxes: list[Rect] = []
    texts: list[list[str]] = []
    sizes: list[tuple[int, int]] = []
    line_hs: list[int] = []
    for f in faces:
        x0, y0, x1, y1 = (int(round(v)) for v in f["bbox"])
        boxes.append((max(0, min(w - 1, x0)), max(0, min(h - 1, y0)), max(0, min(w - 1, x1)), max(0, min(h - 1, y1))))
        conf = f.get("fe_confidence")
        lines = [f"#{f['track_id']} {f.get('fe_label') or '?'}"
                 + (f" {conf:.2f}" if conf is not None and math.isfinite(conf) else "")]
        aus = top_active_aus(f.get("au_active"), f.get("au_probs"), top_aus)
        if aus:
            lines.append(" ".join(aus))
        extents = [cv2.getTextSize(s, font, scale, thick)[0] for s in lines]
        line_h = max(e[1] for e in extents) + int(8 * scale) + 2
        texts.append(lines)
        line_hs.append(line_h)
        sizes.append((max(e[0] for e in extents) + 8, line_h * len(lines) + 4))
    colors = [rgb(fe_color(f.get("fe_label"))) for f in faces]
    for (x0, y0, x1, y1), color in zip(boxes, colors, strict=True):
        cv2.rectangle(image, (x0, y0), (x1, y1), color, box_thick, cv2.LINE_AA)
    for box, lines, line_h, color, (left, top, right, bottom) in zip(
            boxes, texts, line_hs, colors, place_labels(boxes, sizes, w, h), strict=True):
        if _overlap((left, top, right, bottom), _grown(box, box_thick)) == 0:  # moved away: a leader line
            cv2.line(image, _nearest((left, top, right, bottom), box), _nearest(box, (left, top, right, bottom)),
                     color, max(1, box_thick // 2), cv2.LINE_AA)
        cv2.rectangle(image, (left, top), (right, bottom), color, -1)
        for k, s in enumerate(lines):
            cv2.putText(image, s, (left + 4, top + (k + 1) * line_h - 4), font, scale, _text_color(color),
                        thick, cv2.LINE_AA)
    return image


def place_labels(boxes: list[Rect], sizes: list[tuple[int, int]], width: int, height: int) -> list[Rect]:
    """Where each face's label block (``sizes``: width, height) goes on a ``width`` x ``height``
    frame: on the first of the candidate spots (:func:`_spots`) that covers no face box and no
    label placed before; where every spot covers something (a crowd), on the one that covers
    least, labels counting more than faces. Boxes are taken top to bottom, so upper faces keep
    the spot right above them."""
    placed: dict[int, Rect] = {}
    for i in sorted(range(len(boxes)), key=lambda k: (boxes[k][1], boxes[k][0])):
        best: tuple[int, Rect] | None = None
        for spot in _spots(boxes[i], min(sizes[i][0], width), min(sizes[i][1], height), width, height):
            cost = 4 * sum(_overlap(spot, p) for p in placed.values()) + sum(_overlap(spot, b) for b in boxes)
            if best is None or cost < best[0]:
                best = (cost, spot)
            if cost == 0:
                break
        assert best is not None
        placed[i] = best[1]
    return [placed[i] for i in range(len(boxes))]


def _spots(box: Rect, bw: int, bh: int, width: int, height: int) -> Iterator[Rect]:
    """Label spots for ``box``, nearest first: right above it, right below it, then one label
    height further out each time; each left-aligned, right-aligned and centred on the box."""
    x0, y0, x1, y1 = box
    for step in range(4):
        for top in (y0 - bh - step * bh, y1 + step * bh):
            for left in (x0, x1 - bw, (x0 + x1 - bw) // 2):
                lx, ty = max(0, min(left, width - bw)), max(0, min(top, height - bh))
                yield lx, ty, lx + bw, ty + bh


def _overlap(a: Rect, b: Rect) -> int:
    return max(0, min(a[2], b[2]) - max(a[0], b[0])) * max(0, min(a[3], b[3]) - max(a[1], b[1]))


def _grown(r: Rect, by: int) -> Rect:
    return (r[0] - by, r[1] - by, r[2] + by, r[3] + by)


def _nearest(r: Rect, to: Rect) -> tuple[int, int]:
    """The point of ``r`` closest to the centre of ``to``."""
    cx, cy = (to[0] + to[2]) // 2, (to[1] + to[3]) // 2
    return max(r[0], min(cx, r[2])), max(r[1], min(cy, r[3]))


def _draw_timecode(image: np.ndarray, t: float, index: int) -> None:
    import cv2

    h = image.shape[0]
    scale = min(0.8, max(0.3, h / 900))
    text = f"t={t:.3f}s  frame {index}"
    (tw, th), _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
    cv2.rectangle(image, (0, h - th - 10), (tw + 10, h), (0, 0, 0), -1)
    cv2.putText(image, text, (5, h - 5), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), 1, cv2.LINE_AA)


def _source_time_base(uri: str) -> Fraction:
    """The source video stream's time base, so output timestamps are the source's exactly."""
    import av

    src: Any = storage.open_input(uri) if storage.is_remote(uri) else storage.strip_file_scheme(uri)
    try:
        with av.open(src, metadata_errors="ignore") as c:
            tb = c.streams.video[0].time_base
    finally:
        if not isinstance(src, str):
            src.close()
    return Fraction(tb) if tb else Fraction(1, 90000)


def _even(image: np.ndarray) -> np.ndarray:
    """Pad to even width/height (yuv420p needs them) with black on the right/bottom."""
    h, w = image.shape[:2]
    if h % 2 == 0 and w % 2 == 0:
        return image
    return np.pad(image, ((0, h % 2), (0, w % 2), (0, 0)))


def _deliver(local_path: str, dest: str) -> None:
    """Move a finished local file to ``dest`` (a local path: atomic rename; s3://: upload)."""
    if storage.is_remote(dest):
        fs, path = storage.filesystem(dest)
        storage.with_retries(fs.put_file)(local_path, path)
        os.unlink(local_path)
    else:
        os.replace(local_path, storage.strip_file_scheme(dest))


def _tempfile_for(dest: str, suffix: str) -> str:
    d = None
    if not storage.is_remote(dest):
        d = os.path.dirname(os.path.abspath(storage.strip_file_scheme(dest)))
        os.makedirs(d, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".mien-render-", suffix=suffix, dir=d)
    os.fchmod(fd, 0o666 & ~storage._UMASK)  # mkstemp makes 0600; a render is a file like any other
    os.close(fd)
    return tmp


def default_render_path(root: str, video_id: str, is_image: bool = False) -> str:
    """``OUT/renders/<video_id>.mp4`` (``.jpg`` for a still image)."""
    return storage.join(root, "renders", f"{video_id}{'.jpg' if is_image else '.mp4'}")


def render_video(root: str, video: str, output: str | None = None,
                 options: RenderOptions | None = None) -> RenderResult:
    """Render ``video`` (a video_id, unique prefix, URI or file name) of the output at ``root``.

    Raises :class:`OutputError` when the video is unknown, has no ``ok`` row, or its source
    cannot be decoded any more.
    """
    from workflows.annotate.decode import DecodeError, SamplingPolicy, VideoReader

    opts = options or RenderOptions()
    out = AnnotationOutput(root)
    row = out.find_video(video)
    vid, uri = row["video_id"], row["video_uri"]
    if row["status"] != "ok":
        raise OutputError(f"video {vid} ({uri}) has no ok annotation: {row.get('error_kind')}: {row.get('error')}")
    faces = out.rows_of_video(vid, "faces", FACE_COLUMNS).to_pylist()
    by_track: dict[int, list[dict[str, Any]]] = {}
    for f in faces:
        by_track.setdefault(int(f["track_id"]), []).append(f)
    timelines = [TrackTimeline(rows) for _, rows in sorted(by_track.items())]
    try:
        with VideoReader(uri, SamplingPolicy.parse("all")) as reader:
            probe = reader.probe
            max_gap = opts.max_gap_s if opts.max_gap_s is not None else default_max_gap(timelines, probe.fps)
            eps = 0.25 / probe.fps if probe.fps else 1e-3
            dest = output or default_render_path(root, vid, probe.is_image)
            if probe.is_image or dest.lower().endswith(IMAGE_OUTPUT_SUFFIXES):
                at = opts.at_s if opts.at_s is not None else busiest_time(timelines, max_gap, eps)
                frame = _frame_at(reader, at, eps, probe.duration_s)
                shown = [r for tl in timelines if (r := tl.at(frame.timestamp_s, max_gap, eps)) is not None]
                image = draw_faces(frame.image.copy(), shown, opts.top_aus)
                _write_image(image, dest)
                log.info("rendered %s at %.3f s (frame %d) -> %s", vid, frame.timestamp_s, frame.index, dest)
                return RenderResult(dest, vid, 1, int(bool(shown)), len(shown), max_gap, frame.timestamp_s)
            if opts.at_s is not None:
                raise OutputError(f"--at picks the frame of a still image; give --output FILE.png or .jpg "
                                  f"(not {dest}), or leave --at out for the whole video")
            result = _encode(reader, timelines, dest, opts, max_gap, eps, _source_time_base(uri), vid)
    except DecodeError as e:
        raise OutputError(f"cannot decode the source of {vid} ({uri}): {e}; render needs the original "
                          f"video at the URI recorded in videos/") from e
    log.info("rendered %s: %d frames, %d with faces -> %s", vid, result.frames, result.frames_with_faces,
             result.path)
    return result


def busiest_time(timelines: list[TrackTimeline], max_gap_s: float, eps: float) -> float:
    """The earliest annotated time at which the most faces are shown (0.0 without faces)."""
    times = sorted({t for tl in timelines for t in tl.times})
    if not times:
        return 0.0
    return max(times, key=lambda t: (sum(tl.at(t, max_gap_s, eps) is not None for tl in timelines), -t))


def _frame_at(reader: Any, at_s: float, eps: float, duration_s: float | None) -> Any:
    """The first decoded frame at or after ``at_s`` (the still image's one frame for a photo)."""
    for frame in reader.frames():
        if reader.probe.is_image or frame.timestamp_s >= at_s - eps:
            return frame
    ends = f"; the video is {duration_s:.2f} s long" if duration_s else ""
    raise OutputError(f"no frame at {at_s:g} s{ends}: give a smaller --at")


def _write_image(image: np.ndarray, dest: str) -> None:
    from PIL import Image

    suffix = ".png" if dest.lower().endswith(".png") else ".jpg"
    tmp = _tempfile_for(dest, suffix)
    Image.fromarray(image).save(tmp, quality=92)
    _deliver(tmp, dest)


def _encode(reader: Any, timelines: list[TrackTimeline], dest: str, opts: RenderOptions, max_gap: float,
            eps: float, time_base: Fraction, video_id: str) -> RenderResult:
    import av

    fps = reader.probe.fps
    rate = Fraction(fps).limit_denominator(1001) if fps else Fraction(25)
    tmp = _tempfile_for(dest, ".mp4")
    n = with_faces = drawn = 0
    last_pts = -1
    try:
        with av.open(tmp, "w", format="mp4", options={"movflags": "+faststart"}) as container:
            stream: Any = None
            for frame in reader.frames():
                shown = [r for tl in timelines if (r := tl.at(frame.timestamp_s, max_gap, eps)) is not None]
                image = _even(frame.image.copy())
                if shown:
                    draw_faces(image, shown, opts.top_aus)
                    with_faces += 1
                    drawn += len(shown)
                if opts.timecode:
                    _draw_timecode(image, frame.timestamp_s, frame.index)
                if stream is None:
                    stream = container.add_stream(opts.codec, rate=rate)
                    stream.width, stream.height = image.shape[1], image.shape[0]
                    stream.pix_fmt = "yuv420p"
                    stream.time_base = time_base
                    stream.codec_context.time_base = time_base
                    if opts.codec == "libx264":
                        stream.options = {"crf": str(opts.crf), "preset": opts.preset}
                vf = av.VideoFrame.from_ndarray(image, format="rgb24")
                t = frame.timestamp_s if math.isfinite(frame.timestamp_s) else n / float(rate)
                pts = max(int(round(t / time_base)), last_pts + 1)  # strictly increasing for the muxer
                vf.pts, vf.time_base, last_pts = pts, time_base, pts
                for pkt in stream.encode(vf):
                    container.mux(pkt)
                n += 1
            if stream is not None:
                for pkt in stream.encode():
                    container.mux(pkt)
        _deliver(tmp, dest)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return RenderResult(dest, video_id, n, with_faces, drawn, max_gap)
