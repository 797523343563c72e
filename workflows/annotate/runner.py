"""The one place Ray Data appears in the annotate pipeline: the actor-pool plan and the mapping
of plain stages onto Ray Data ``map_batches`` with resources from config. The cluster
connection itself is :mod:`workflows.core.cluster`."""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Iterator
from typing import Any

log = logging.getLogger(__name__)


def stage_plan(cfg: Any, resources: dict[str, Any], n_videos: int | None = None,
               nodes: list[dict[str, float]] | None = None) -> dict[str, dict[str, Any]]:
    """Concrete actor-pool sizes and per-actor resources for both stages; auto-sized pools
    never exceed ``n_videos`` (an actor that gets no video costs a process and model loads).

    Face actors are packed node by node (``nodes``: each alive node's resources; default one
    node holding ``resources``): on every node that could host an MLLM actor its CPUs are kept
    free, plus a 0.1-CPU reserve, because Ray Data waits forever, silently, for an actor that
    fits on no node. The face actors' CPU share is the smallest a node affords, so that on
    identical nodes exactly the planned number lands on each.
    """
    cpus = float(resources.get("CPU", 1.0))
    gpus = float(resources.get("GPU", 0.0))
    m = cfg.ray.mllm
    mllm_gpus = m.num_gpus if m.num_gpus >= 0 else (1.0 if gpus >= 1 else 0.0)
    mllm_n = m.concurrency or (max(1, int(gpus // mllm_gpus)) if mllm_gpus > 0 else 1)
    mllm_cpus = m.num_cpus
    fuse = cfg.ray.fuse_stages
    fused = mllm_gpus == 0 and not m.concurrency and (
        fuse == "always" or (fuse == "auto" and cfg.model.uri == "default"))
    if fused:  # no MLLM actors: the face actors run it
        mllm_n = 0
    f = cfg.ray.faces
    nodes = [n for n in (nodes or [{"CPU": cpus, "GPU": gpus}]) if float(n.get("CPU", 0)) > 0] or [{"CPU": cpus}]
    faces_n, faces_cpus, shares = 0, f.num_cpus, []
    for node in nodes:
        if mllm_gpus > 0:
            hosts = min(mllm_n, int(float(node.get("GPU", 0.0)) // mllm_gpus))
        else:
            hosts = mllm_n
        free = float(node["CPU"]) - hosts * mllm_cpus
        # One face actor per CPU left (rounded: 2 CPUs minus a 0.25-CPU MLLM actor is 2 face
        # actors, not 1 — truncating left one of two cores idle).
        n = math.floor(free / max(f.num_cpus, 0.05) + 0.5) if free > 0.1 else 0
        if n:
            faces_n += n
            shares.append((free - 0.1) / n)
    if not f.concurrency:
        faces_n = max(1, faces_n)
        faces_cpus = max(0.05, math.floor(min([f.num_cpus, *shares]) * 100) / 100)
        if n_videos:
            faces_n = min(faces_n, n_videos)
    else:
        faces_n = f.concurrency
    if not m.concurrency and n_videos:
        mllm_n = min(mllm_n, n_videos)
    return {
        "faces": {"concurrency": faces_n, "num_cpus": faces_cpus, "num_gpus": f.num_gpus,
                  "batch_size": f.batch_size},
        "mllm": {"concurrency": mllm_n, "num_cpus": mllm_cpus, "num_gpus": mllm_gpus,
                 "batch_size": m.batch_size, "fused": fused},
    }


def _pool(stage: dict[str, Any]) -> Any:
    """A fixed-size actor pool; ``max_tasks_in_flight`` 1 isolates videos from each other: a
    worker that dies then takes only the one task it was running down with it."""
    from ray.data import ActorPoolStrategy

    return ActorPoolStrategy(size=stage["concurrency"],
                             max_tasks_in_flight_per_actor=stage.get("max_tasks_in_flight"))


def isolated(plan: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The plan for crash passes: one video per MLLM call and one task in flight per actor, so
    a video that kills its worker again cannot take innocent videos with it."""
    return {"faces": {**plan["faces"], "max_tasks_in_flight": 1},
            "mllm": {**plan["mllm"], "batch_size": 1, "max_tasks_in_flight": 1}}


def run_pipeline(sources: list[dict[str, str]], cfg: Any, run_id: str, plan: dict[str, dict[str, Any]],
                 progress: bool = True, output_uri: str = "") -> Iterator[dict[str, Any]]:
    """Stream per-video result rows of the annotate pipeline as they finish (``output_uri``: where the
    workers write their chunks with ``output.sink=workers``)."""
    import ray.data

    from workflows.annotate.stages import pipeline_stages

    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = progress
    ctx.enable_operator_progress_bars = progress
    ctx.execution_options.preserve_order = False
    # A video whose worker keeps crashing (segfault in a native library, OOM) must not stop
    # the job: its block is dropped after bounded retries, and the driver retries or records
    # the videos that never came back.
    ctx.max_errored_blocks = -1
    retries = {"max_restarts": -1, "max_task_retries": cfg.ray.max_task_retries}
    ds = ray.data.from_items(sources, override_num_blocks=max(1, len(sources)))
    def stage(ds: Any, cls: type, args: tuple, p: dict[str, Any]) -> Any:
        # Ray 2.60 deprecates the free-form remote args but has no named parameter for actor
        # restarts / task retries, and its default (retry forever) would let one video that
        # kills its worker stall the job. The warning would print on every job; Ray 2.64 removes
        # the form, so an upgrade fails here, loudly, in tests/integration/test_annotate.py.
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="`ray_remote_args` is deprecated")
            return ds.map_batches(cls, fn_constructor_args=args, batch_size=p["batch_size"], compute=_pool(p),
                                  num_cpus=p["num_cpus"], num_gpus=p["num_gpus"] or None,
                                  batch_format="default", **retries)

    for cls in pipeline_stages(bool(plan["mllm"].get("fused"))):
        ds = stage(ds, cls, cls.constructor_args(cfg, run_id, output_uri), plan[cls.pool])
    for batch in ds.iter_batches(batch_size=1, batch_format="pyarrow"):
        yield from batch.to_pylist()


class RayWindows:
    """The time windows of long videos (:mod:`workflows.annotate.windows`) on Ray actors of the
    stage classes, sized like the pipeline's pools: the face actors read windows, the MLLM actors
    (the same actors when the stages are fused) merge and score each video. A window's faces stay in
    the object store until its video's merge takes them; the driver only sees each window's status."""

    def __init__(self, cfg: Any, run_id: str, plan: dict[str, dict[str, Any]], output_uri: str):
        import ray

        from workflows.annotate.stages import DecodeFacesStage, FusedStage, MllmStage

        fused = bool(plan["mllm"].get("fused"))

        def actors(cls: type, p: dict[str, Any]) -> list[Any]:
            # Restarted after a crash; the call it was running is retried on it (max_task_retries),
            # then reported lost, and the scheduler tries that window alone again. (Without Ray's
            # retries, a call sent to an actor still restarting fails at once.)
            remote = ray.remote(_windowed(cls)).options(num_cpus=p["num_cpus"], num_gpus=p["num_gpus"] or None,
                                                        max_restarts=-1, max_task_retries=cfg.ray.max_task_retries)
            return [remote.remote(*cls.constructor_args(cfg, run_id, output_uri))
                    for _ in range(max(1, int(p["concurrency"] or 1)))]

        self._faces = actors(FusedStage if fused else DecodeFacesStage, plan["faces"])
        self._mllm = self._faces if fused else actors(MllmStage, plan["mllm"])
        self._load = [0] * len(self._faces), [0] * len(self._mllm)
        self._where: dict[Any, tuple[int, int]] = {}  # handle -> (pool 0 faces / 1 mllm, actor)
        self._rows: dict[Any, Any] = {}  # a window's status ref -> the ref of its row (faces included)
        self._merging: dict[Any, list[Any]] = {}  # a merge's ref -> its windows' status refs
        self.capacity = 2 * len(self._faces)

    def _pick(self, pool: int) -> int:
        load = self._load[pool]
        i = min(range(len(load)), key=load.__getitem__)
        load[i] += 1
        return i

    def window(self, video_id: str, uri: str, start_s: float, end_s: float | None) -> Any:
        i = self._pick(0)
        status, row = self._faces[i].window.options(num_returns=2).remote(video_id, uri, start_s, end_s)
        self._where[status], self._rows[status] = (0, i), row
        return status

    def finish(self, row: dict[str, Any], windows: list[Any]) -> Any:
        i = self._pick(1)
        ref = self._mllm[i].process_windows.remote(row, *[self._rows[h] for h in windows])
        self._where[ref] = (1, i)
        self._merging[ref] = windows  # their rows are released once the merge succeeds (a failed one is retried)
        return ref

    def wait(self, handles: list[Any]) -> list[Any]:
        import ray

        ready, _ = ray.wait(handles, num_returns=1)
        for h in ready:
            pool, i = self._where.pop(h)
            self._load[pool][i] -= 1
        return ready

    def _get(self, handle: Any) -> Any:
        import ray
        from ray.exceptions import RayError

        from workflows.annotate.windows import WorkerLost

        windows = self._merging.pop(handle, [])
        try:
            value = ray.get(handle)
        except RayError as e:
            self._rows.pop(handle, None)
            raise WorkerLost(f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from None
        for h in windows:
            self._rows.pop(h, None)
        return value

    def check(self, handle: Any) -> None:
        self._get(handle)

    def result(self, handle: Any) -> dict[str, Any]:
        return self._get(handle)

    def close(self) -> None:
        import ray

        for actor in {id(a): a for a in self._faces + self._mllm}.values():
            ray.kill(actor)
        self._rows.clear()
        self._merging.clear()


def _windowed(cls: type) -> type:
    """``cls`` with a ``window`` method that returns a window's status apart from its row, so the
    driver can learn that a window is done (or its worker died) without fetching its faces."""
    if not hasattr(cls, "process_window"):
        return cls

    class Windowed(cls):  # type: ignore[misc, valid-type]
        def window(self, video_id: str, uri: str, start_s: float, end_s: float | None) -> tuple[str, dict]:
            row = self.process_window(video_id, uri, start_s, end_s)
            return row["status"], row

    Windowed.__name__ = Windowed.__qualname__ = f"Windowed{cls.__name__}"
    return Windowed
