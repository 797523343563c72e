"""The in-process executor for small local jobs: the same stages as the Ray pipeline
(:mod:`workflows.annotate.stages`), run in a small pool of worker processes on this machine.

A job of a few clips on a laptop or in a notebook spends most of its Ray run starting Ray, its
actors and the object store (docs/PERFORMANCE.md, "Small jobs"); here a worker process starts
in about the time Python takes to import the face libraries. The contract is the Ray
pipeline's: the driver receives the same per-video result rows and commits them through the
same sink, so resume, exactly-once and the error rows are unchanged. A worker that dies (a
native crash, the OOM killer) takes only the videos it had in flight: the driver's crash passes
retry them one at a time (``runner.isolated`` plans), and a video that kills every worker it
meets becomes a ``worker_crash`` row, as under Ray.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import logging
import multiprocessing
import os
import sys
from collections.abc import Iterator
from typing import Any

from workflows.core.cluster import NATIVE_NOTICES

log = logging.getLogger(__name__)

# The stage of this worker process, built on its first video (its models load once per process).
_STAGE: Any = None


class LocalStartError(RuntimeError):
    """The stages could not be built in a worker (a model or asset that fails to load)."""


def local_workers(cfg: Any) -> int:
    """Worker processes the machine affords: ``executor.local_workers``, else one per CPU
    (``ray.num_cpus`` when set)."""
    return int(cfg.executor.local_workers or cfg.ray.num_cpus or os.cpu_count() or 1)


def local_plan(cfg: Any, n_videos: int) -> dict[str, dict[str, Any]]:
    """The plan in the shape of ``runner.stage_plan``: one fused face+MLLM stage, one worker
    process per CPU (``ray.num_cpus`` when set), never more than there are videos."""
    workers = max(1, min(local_workers(cfg), n_videos))
    return {"faces": {"concurrency": workers, "num_cpus": 1.0, "num_gpus": 0.0, "batch_size": 1},
            "mllm": {"concurrency": 0, "num_cpus": 0.0, "num_gpus": 0.0, "batch_size": 1, "fused": True}}


def run_local(rows: list[dict[str, str]], cfg: Any, run_id: str,
              plan: dict[str, dict[str, Any]], output_uri: str = "") -> Iterator[dict[str, Any]]:
    """Stream per-video result rows (``stages.RESULT_FIELDS``) as the workers finish them.

    Videos whose worker died are not yielded: the caller's crash passes retry them. In an
    isolated plan (``max_tasks_in_flight`` 1) one worker takes one video at a time and a fresh
    worker replaces a dead one, so a crash names its video and spares the rest."""
    faces = plan["faces"]
    if faces.get("max_tasks_in_flight") == 1:
        for row in rows:
            yield from _run_pool([row], cfg, run_id, 1, output_uri)
        return
    yield from _run_pool(rows, cfg, run_id, faces["concurrency"], output_uri)


def _run_pool(rows: list[dict[str, str]], cfg: Any, run_id: str, workers: int,
              output_uri: str) -> Iterator[dict[str, Any]]:
    pool = _worker_pool(min(workers, len(rows)), cfg.executor.pin_workers)
    finished = False
    try:
        quiet = not logging.getLogger("workflows").isEnabledFor(logging.DEBUG)  # mien -v: everything
        todo = iter(rows)
        in_flight: set[cf.Future] = set()

        def submit_next() -> None:
            row = next(todo, None)
            if row is not None:
                in_flight.add(pool.submit(_process, cfg, run_id, output_uri, row["video_id"], row["uri"], quiet))

        # A bounded window, in dispatch order: the driver holds a few videos' results at a time,
        # however many videos the job has, and a slow sink holds the workers back.
        for _ in range(2 * workers):
            submit_next()
        while in_flight:
            done, in_flight = cf.wait(in_flight, return_when=cf.FIRST_COMPLETED)
            for future in done:
                try:
                    yield future.result()
                except cf.process.BrokenProcessPool:
                    # A worker died: every video still in flight is lost with the pool; those
                    # already yielded are committed. The caller retries the rest.
                    log.warning("a local worker process died; its videos are retried one at a time")
                    return
                submit_next()
        finished = True
    finally:
        # Stopped early (SIGTERM, Ctrl-C, an error): no waiting for the videos in flight, whose
        # results would be dropped anyway; the workers end with this process (_exit_with_parent).
        pool.shutdown(wait=finished, cancel_futures=True)


def _worker_pool(workers: int, pin: bool = False) -> cf.ProcessPoolExecutor:
    # spawn, not fork: the driver has threads (the lease heartbeat, MLflow) and native libraries
    # loaded, which a forked child would inherit in an undefined state.
    workers = max(1, workers)
    ctx = multiprocessing.get_context("spawn")
    cores = _pin_cores(workers) if pin else []
    return cf.ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_start_worker,
                                  initargs=(os.getpid(), cores, ctx.Value("i", 0) if cores else None))


def _pin_cores(workers: int) -> list[int]:
    """The cores the workers are pinned to, one each (``executor.pin_workers``): those this process
    may use, sorted, when the job has exactly one worker per core. None otherwise: with more workers
    two would share a core and halve each other; with fewer, a second job would pin its workers to
    the same first cores while the others idle. Nor where the platform cannot pin (no
    ``os.sched_setaffinity``: macOS, Windows)."""
    if not hasattr(os, "sched_setaffinity"):
        return []
    cores = sorted(os.sched_getaffinity(0))
    return cores if len(cores) == workers else []


def _start_worker(parent_pid: int, cores: list[int], started: Any) -> None:
    """Each worker process, as it starts: pinned to its own core when ``cores`` are given (the
    face libraries' dozen threads per frame then stay on one core's caches instead of migrating),
    and bound to the driver's life."""
    if cores:
        with started.get_lock():
            i = started.value
            started.value += 1
        os.sched_setaffinity(0, {cores[i % len(cores)]})
    _exit_with_parent(parent_pid)


def _exit_with_parent(parent_pid: int) -> None:
    """A worker ends when the driver does, however it ends (kill -9, a fault, SIGTERM): an orphan
    would keep working for nobody and hold the driver's stdout/stderr pipes open."""
    import threading
    import time

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(0.5)
        os._exit(1)

    threading.Thread(target=watch, name="mien-parent-watch", daemon=True).start()


def _stage(cfg: Any, run_id: str, output_uri: str, quiet: bool) -> Any:
    """This worker process's fused stage, built on its first call (its models load once per process)."""
    global _STAGE
    from workflows.annotate.stages import FusedStage

    if _STAGE is None:
        with _native_stderr_held(quiet) as held:
            try:
                _STAGE = FusedStage(*FusedStage.constructor_args(cfg, run_id, output_uri))
            except Exception as e:  # noqa: BLE001 - re-raised on the driver with its cause named
                error = e
            else:
                error = None
        if error is not None:
            raise LocalStartError(f"the annotate stages failed to start in a local worker: "
                                  f"{type(error).__name__}: {error}" + (f"\n{held.text}" if held.text else "")) from None
    return _STAGE


def _process(cfg: Any, run_id: str, output_uri: str, video_id: str, uri: str, quiet: bool = True) -> dict[str, Any]:
    """One video, in a worker process: decode + faces + MLLM, the fused stage's result row."""
    from workflows.annotate.stages import RESULT_FIELDS

    out = _stage(cfg, run_id, output_uri, quiet)({"video_id": [video_id], "uri": [uri]})
    return {k: out[k][0] for k in RESULT_FIELDS}


def _window(cfg: Any, run_id: str, output_uri: str, video_id: str, uri: str, start_s: float, end_s: float | None,
            quiet: bool) -> dict[str, Any]:
    return _stage(cfg, run_id, output_uri, quiet).process_window(video_id, uri, start_s, end_s)


def _windows(cfg: Any, run_id: str, output_uri: str, row: dict[str, Any], windows: list[dict[str, Any]],
             quiet: bool) -> dict[str, Any]:
    return _stage(cfg, run_id, output_uri, quiet).process_windows(row, *windows)


class LocalWindows:
    """The time windows of long videos (:mod:`workflows.annotate.windows`) in a pool of worker
    processes: each reads windows and merges videos. A worker that dies breaks the pool: the windows
    it had in flight are reported lost (the scheduler retries them) and a fresh pool takes over."""

    def __init__(self, cfg: Any, run_id: str, plan: dict[str, dict[str, Any]], output_uri: str):
        self._args = (cfg, run_id, output_uri)
        self._workers = max(1, int(plan["faces"]["concurrency"]))
        self._pin = bool(cfg.executor.pin_workers)
        self._quiet = not logging.getLogger("workflows").isEnabledFor(logging.DEBUG)
        self._pool = _worker_pool(self._workers, self._pin)
        self._pool_of: dict[cf.Future, cf.ProcessPoolExecutor] = {}
        self.capacity = 2 * self._workers

    def _submit(self, fn: Any, *args: Any) -> cf.Future:
        future = self._pool.submit(fn, *self._args, *args, self._quiet)
        self._pool_of[future] = self._pool
        return future

    def window(self, video_id: str, uri: str, start_s: float, end_s: float | None) -> cf.Future:
        return self._submit(_window, video_id, uri, start_s, end_s)

    def finish(self, row: dict[str, Any], windows: list[cf.Future]) -> cf.Future:
        return self._submit(_windows, row, [w.result() for w in windows])

    def wait(self, handles: list[cf.Future]) -> list[cf.Future]:
        done, _ = cf.wait(handles, return_when=cf.FIRST_COMPLETED)
        return list(done)

    def result(self, handle: cf.Future) -> dict[str, Any]:
        from workflows.annotate.windows import WorkerLost

        pool = self._pool_of.pop(handle, None)
        try:
            return handle.result()
        except cf.process.BrokenProcessPool as e:
            if pool is self._pool:  # the first loss seen from this pool replaces it
                self._pool.shutdown(wait=False, cancel_futures=True)
                self._pool = _worker_pool(self._workers, self._pin)
            raise WorkerLost(f"a local worker process died ({e})") from None

    def check(self, handle: cf.Future) -> None:
        self.result(handle)

    def close(self) -> None:
        # Nothing is in flight after the last video; when stopped early, nobody waits for the rest.
        self._pool.shutdown(wait=False, cancel_futures=True)


class _Held:
    text = ""


@contextlib.contextmanager
def _native_stderr_held(quiet: bool) -> Iterator[_Held]:
    """While the face libraries load, hold what is written to stderr and let through all but
    the native start-up notices (MediaPipe's, LiteRT's and OpenCV's: a dozen lines per worker
    that bury mien's own messages). Everything held is in ``.text`` for an error message when
    loading fails; with ``quiet`` False (``mien -v``) nothing is held."""
    held = _Held()
    if not quiet:
        yield held
        return
    import tempfile

    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as buf:
        os.dup2(buf.fileno(), 2)
        try:
            yield held
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            buf.seek(0)
            held.text = buf.read().decode(errors="replace").strip()
            kept = [line for line in held.text.splitlines() if not line.startswith(NATIVE_NOTICES)]
            if kept:
                print("\n".join(kept), file=sys.stderr, flush=True)
