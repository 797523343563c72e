"""Long videos in time windows: one video's windows run on different face workers at once, and
its result is the one a single worker reading it whole would give.

A video of at least twice ``decode.window_s`` is split into ``floor(duration / window_s)``
windows of equal length. The face stage first only probes it (status ``windowed``); then each
window is decoded and its faces extracted on whichever worker is free
(``DecodeFacesStage.process_window``: the reader yields exactly the sampled frames whose time falls
in the window), and once all of a video's windows are in, one MLLM worker merges them
(``MllmStage.process_windows``): faces concatenated in time order, tracks, segments and per-track
AU normalisation computed over the whole video by the same function as for a video read whole, then
scored and written like any video. A window whose worker dies is retried alone; a video commits
only when all its windows have.

:func:`run_windows` is the scheduler, the same for every executor; an executor supplies a
:class:`WindowBackend` (Ray actors in ``runner.py``, worker processes in ``local.py``).
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import math
import time
from collections.abc import Iterator
from typing import Any, Protocol

log = logging.getLogger(__name__)


def windows_of(duration_s: float | None, window_s: float, workers: int = 1) -> list[tuple[float, float | None]]:
    """The windows ``[start, end)`` of a video (the last one open-ended, so nothing past a header's
    duration is lost); one window (the whole video) when windows are off or it is shorter than two.
    With at least as many windows as ``workers``, their number is rounded up to a multiple of it, so
    that a lone long video keeps every worker busy to its end (5 windows on 2 workers leave one
    worker a third window to read alone: 1.36x measured, against 1.8x for 6)."""
    if not window_s or not duration_s or not math.isfinite(duration_s) or duration_s < 2 * window_s:
        return [(0.0, None)]
    k = int(duration_s // window_s)
    if workers > 1 and k >= workers:
        k = -(-k // workers) * workers
    step = duration_s / k
    return [(i * step, (i + 1) * step if i < k - 1 else None) for i in range(k)]


def windowed_row(video_id: str, uri: str, probe: Any, sampling: str) -> dict[str, Any]:
    """The face stage's row of a video it only probed: long enough for windows."""
    w, h = probe.display_size
    return {"video_id": video_id, "video_uri": uri, "status": "windowed", "error": None, "error_kind": None,
            "n_frames": 0, "n_faces": 0, "n_tracks": 0, "duration_s": probe.duration_s, "fps": probe.fps,
            "codec": probe.codec, "width": w, "height": h, "rotation": probe.rotation, "sampling": sampling,
            "faces_npz": b"", "decode_faces_s": 0.0, "decode_faces_cpu_s": 0.0}


def probe_long(sources: list[Any], cfg: Any, threads: int = 8) -> dict[str, dict[str, Any]]:
    """The ``windowed`` rows of those of ``sources`` (``VideoSource``) long enough for windows,
    probed here (container headers only: milliseconds a file, a ranged read or two on S3), so that
    a job of a few long videos starts on its windows at once instead of first starting face workers
    to probe them. A source that cannot be probed is left to the face stage, which reports it."""
    import concurrent.futures as cf

    from workflows.annotate.decode import VideoReader, is_image_uri

    policy = cfg.decode.policy()

    def probe(s: Any) -> dict[str, Any] | None:
        if is_image_uri(s.uri):
            return None
        try:
            with VideoReader(s.uri, policy, cfg.decode.limits) as reader:
                p = reader.probe
        except Exception:  # noqa: BLE001 - a bad file or a storage error: the face stage reports it
            return None
        if len(windows_of(p.duration_s, cfg.decode.window_s)) < 2:
            return None
        return windowed_row(s.video_id, s.uri, p, str(policy))

    with cf.ThreadPoolExecutor(max_workers=max(1, min(threads, len(sources)))) as pool:
        rows = [r for r in pool.map(probe, sources) if r is not None]
    return {r["video_id"]: r for r in rows}


class WorkerLost(Exception):
    """The worker running a window or a merge died (a native crash, the OOM killer, a lost node)."""


class WindowBackend(Protocol):
    """What :func:`run_windows` needs from an executor. Handles are opaque and hashable."""

    capacity: int  # windows in flight at once (about two per face worker)

    def window(self, video_id: str, uri: str, start_s: float, end_s: float | None) -> Any: ...

    def finish(self, row: dict[str, Any], windows: list[Any]) -> Any: ...

    def wait(self, handles: list[Any]) -> list[Any]:
        """Some of ``handles`` that are done (at least one; blocks until then)."""

    def check(self, handle: Any) -> None:
        """Raises :class:`WorkerLost` when a window's worker died; a window's value stays put."""

    def result(self, handle: Any) -> dict[str, Any]:
        """A finished video's result row; raises :class:`WorkerLost`."""

    def close(self) -> None: ...


@dataclasses.dataclass
class _Video:
    row: dict[str, Any]
    windows: list[tuple[float, float | None]]
    done: list[Any]
    tries: collections.Counter = dataclasses.field(default_factory=collections.Counter)


def run_windows(rows: list[dict[str, Any]], window_s: float, workers: int, backend: WindowBackend,
                tries: int) -> Iterator[dict[str, Any]]:
    """The result rows of the videos the face stage found long enough for windows (``rows``: their
    ``windowed`` rows; ``workers``: face workers, see :func:`windows_of`), as they finish. A window or
    merge is tried up to ``tries`` times; a video one of whose parts fails every try yields
    ``{"video_id": ..., "lost": True}`` for the caller to record like any video its workers died on."""
    videos: dict[str, _Video] = {}
    queue: collections.deque[tuple[str, int]] = collections.deque()
    for row in rows:
        spans = windows_of(row.get("duration_s"), window_s, workers)
        videos[row["video_id"]] = _Video(row, spans, [None] * len(spans))
        queue.extend((row["video_id"], k) for k in range(len(spans)))
    log.info("%d long video(s) in %d time windows of about %g s", len(rows), len(queue), window_s)
    in_flight: dict[Any, tuple[str, int]] = {}  # handle -> (video, window index; -1: the merge)
    lost: set[str] = set()
    total, read, last_log = len(queue), 0, time.monotonic()
    try:
        while queue or in_flight:
            while queue and sum(k >= 0 for _, k in in_flight.values()) < max(1, backend.capacity):
                vid, k = queue.popleft()
                if vid not in lost:
                    v = videos[vid]
                    start, end = v.windows[k]
                    in_flight[backend.window(vid, v.row["video_uri"], start, end)] = (vid, k)
            for handle in backend.wait(list(in_flight)):
                vid, k = in_flight.pop(handle)
                v = videos[vid]
                if vid in lost:
                    continue
                try:
                    if k >= 0:
                        backend.check(handle)
                    else:
                        result = backend.result(handle)
                except WorkerLost as e:
                    v.tries[k] += 1
                    what = f"window {k + 1}/{len(v.windows)}" if k >= 0 else "merge"
                    if v.tries[k] >= tries:
                        log.warning("the %s of %s lost its worker %d time(s); giving up on the video: %s",
                                    what, v.row["video_uri"], v.tries[k], e)
                        lost.add(vid)
                        v.done = []
                        yield {"video_id": vid, "lost": True}
                    elif k >= 0:
                        log.warning("the %s of %s lost its worker (%s); retrying it alone", what, v.row["video_uri"], e)
                        queue.appendleft((vid, k))
                    else:
                        in_flight[backend.finish(v.row, v.done)] = (vid, -1)
                    continue
                if k < 0:
                    del videos[vid]
                    yield result
                    continue
                v.done[k] = handle
                read += 1
                if time.monotonic() - last_log > 5 or read == total:
                    log.info("time windows %d/%d read", read, total)
                    last_log = time.monotonic()
                if all(d is not None for d in v.done):
                    in_flight[backend.finish(v.row, v.done)] = (vid, -1)
    finally:
        backend.close()
