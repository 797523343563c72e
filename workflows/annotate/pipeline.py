"""``mien annotate``: corpus → faces → MLLM → Parquet, resumable, on a local or remote Ray.

    discover ─► decode+sample ─► faces ─► (tracks) ─► mllm ─► sink
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import datetime as dt
import json
import logging
import os
import platform
import sys
import threading
import time
import uuid
from collections.abc import Iterable
from typing import Any

from workflows.annotate.decode import DecodeLimits, SamplingPolicy
from workflows.core import storage
from workflows.core.cluster import ClusterConfig
from workflows.core.config import bounded
from workflows.core.tracking import MlflowConfig, Tracker, config_params, resolve_tracking_uri
from workflows.faces import FaceConfig

log = logging.getLogger(__name__)


@dataclasses.dataclass
class DecodeConfig:
    sampling: str = "fps:2"  # all | keyframes | fps:N | uniform:K
    seek_min_gap_s: float = 1.0  # seek when the next sampled frame is at least this far ahead
    # Decoder threads per video. A face actor owns one CPU; FFmpeg's default (0) starts one
    # thread per core of the node in every actor, N actors x N threads on N cores.
    threads: int = 1
    # Long videos in time windows decoded by different face workers at once (workflows/annotate/
    # windows.py): a video of at least 2 x window_s runs as floor(duration / window_s) windows;
    # 0 = off. The result equals a whole read's. Chosen by measurement (docs/PERFORMANCE.md, "Long videos").
    window_s: float = 60.0
    limits: DecodeLimits = dataclasses.field(default_factory=DecodeLimits)

    def policy(self) -> SamplingPolicy:
        return SamplingPolicy.parse(self.sampling)

    def validate(self) -> list[str]:
        try:
            self.policy()
        except ValueError as e:
            return [f"sampling: {e}"]
        if self.window_s < 0 or self.window_s != self.window_s:
            return [f"window_s: must be >= 0 seconds (0 = no time windows), got {self.window_s}"]
        return []


@dataclasses.dataclass
class ModelRef:
    uri: str = "default"  # model dir, s3://..., models:/name@alias, or "default"
    device: str = "auto"  # auto | cpu | cuda
    batch_size: int = 32  # faces per forward pass
    au_threshold: float = 0.5  # au_active = au_probs >= this; a description states an AU active from here too
    # Descriptions with FE<->AU reasoning, switched on for this run: off | per_track | fraction | all
    # (one LLM decode of up to generation.max_new_tokens tokens per described face: on CPU this
    # dominates the run's time; see model/README.md).
    describe: str = "off"
    # Any other model setting for this run, as dotted keys of the model's architecture, e.g.
    # [prior_weight=0.3, generation.max_new_tokens=32]; checked against the model before the run.
    overrides: list[str] = dataclasses.field(default_factory=list)

    def load_overrides(self) -> list[str]:
        """What the MLLM stage passes to ``model.load_model(overrides=...)``."""
        extra = [] if self.describe == "off" else ["generation.enabled=true", f"generation.mode={self.describe}"]
        return [*extra, *self.overrides]

    def validate(self) -> list[str]:
        p = []
        if self.describe not in ("off", "per_track", "fraction", "all"):
            p.append(f"describe: one of off, per_track, fraction, all; got {self.describe!r}")
        if self.device not in ("auto", "cpu", "cuda") and not self.device.startswith("cuda:"):
            p.append(f"device: must be auto, cpu or cuda[:N], got {self.device!r}")
        if self.batch_size < 1:
            p.append("batch_size: must be >= 1")
        if not 0.0 < self.au_threshold < 1.0:
            p.append("au_threshold: must be in (0, 1)")
        return p


@dataclasses.dataclass
class StageResources:
    concurrency: int = bounded(0, hi=100_000)  # actors in the pool; 0 = size from the cluster
    num_cpus: float = 1.0  # per actor (fractional allowed)
    num_gpus: float = bounded(0.0, lo=-1)  # per actor (fractional allowed); -1 = 1 when the cluster has GPUs
    batch_size: int = 1  # videos per call

    def validate(self) -> list[str]:
        return [] if self.batch_size >= 1 else ["batch_size: must be >= 1"]


@dataclasses.dataclass
class RayConfig(ClusterConfig):
    """The cluster connection (``address``, ``num_cpus``) plus the annotate actor pools."""

    max_task_retries: int = bounded(2, hi=100)  # per batch, after a worker crash; then the videos are retried alone
    crash_passes: int = bounded(2, hi=100)  # extra passes for videos lost to crashes, one video per MLLM call
    faces: StageResources = dataclasses.field(default_factory=StageResources)
    mllm: StageResources = dataclasses.field(
        default_factory=lambda: StageResources(num_cpus=0.25, num_gpus=-1.0, batch_size=4))
    # Run the MLLM inside the face actors (one pool, no MLLM actor) when it needs no GPU:
    # "auto" = only for the default model (its scoring is a light numpy prior; a model
    # directory may load an LLM into every face actor); "always" = whenever no GPU is asked;
    # "never" = two pools. Measured on 2 CPUs: the first video 2x sooner, throughput the same
    # within noise (docs/PERFORMANCE.md).
    fuse_stages: str = "auto"

    def validate(self) -> list[str]:
        ok = ("auto", "always", "never")
        return [] if self.fuse_stages in ok else [f"fuse_stages: must be one of {', '.join(ok)}, "
                                                  f"got {self.fuse_stages!r}"]


@dataclasses.dataclass
class OutputConfig:
    crops: bool = True  # keep the aligned face crop (JPEG) in faces/ for retraining and reports
    jpeg_quality: int = 90
    flush_every_videos: int = 64
    flush_every_s: float = 30.0
    # The run's lease on the output (workflows/corpus/lease.py) is refreshed every ttl/8 s; a run
    # killed on another machine counts as gone this long after its last refresh (one on this
    # machine at once), and one that cannot refresh it for ttl/2 stops before its next commit.
    lease_ttl_s: float = 120.0
    # off | strict: no face crop is written, whatever `crops` says (workflows/corpus/privacy.py;
    # docs/OUTPUT.md, "What is stored (and privacy mode)").
    privacy: str = "off"
    # Who writes faces/ and tracks/: "workers" (the stage that finishes a batch of videos writes its
    # chunk's parts itself and sends the driver a status row per video; the driver only commits, and
    # merges the chunks every flush_every_videos videos) or "driver" (every face row crosses to the
    # driver, which writes chunks of flush_every_videos videos). Same output contract and exactly-once
    # rules, both tested under concurrent runs and node loss (tests/reliability); docs/SCALING.md.
    sink: str = "workers"

    def validate(self) -> list[str]:
        from workflows.corpus.privacy import PRIVACY_MODES

        p = [] if 1 <= self.jpeg_quality <= 100 else ["jpeg_quality: must be in 1..100"]
        if self.privacy not in PRIVACY_MODES:
            p.append(f"privacy: must be one of {', '.join(PRIVACY_MODES)}, got {self.privacy!r}")
        if self.sink not in ("driver", "workers"):
            p.append(f"sink: must be driver or workers, got {self.sink!r}")
        return p + ([] if self.lease_ttl_s > 0 else [f"lease_ttl_s: must be > 0, got {self.lease_ttl_s}"])


@dataclasses.dataclass
class AssetsConfig:
    dir: str | None = None  # pre-staged assets (mien assets fetch --to URI); else MIEN_ASSETS_DIR


@dataclasses.dataclass
class IngestConfig:
    allowed_roots: list[str] = dataclasses.field(default_factory=list)  # for manifest entries
    # Videos never to annotate, by video_id or URI; deny_list_file: a text file of them, one a line
    # (local or s3://). The output's own list (`mien forget`) applies too (workflows/corpus/privacy.py).
    deny_list: list[str] = dataclasses.field(default_factory=list)
    deny_list_file: str | None = None
    # Videos annotated per pipeline run: the driver holds one chunk of sources at a time (the plan
    # waits on local disk; workflows/annotate/plan.py). Raised to 16 per actor on large clusters.
    chunk_videos: int = bounded(10_000, lo=1)


@dataclasses.dataclass
class ExecutorConfig:
    """Where the stages run. ``auto`` picks ``local`` (worker processes on this machine, no Ray)
    for a small job with no cluster address and a CPU model that fuses with the face stage, and
    Ray otherwise; ``local`` and ``ray`` force one. The output and its contract are the same."""

    kind: str = "auto"  # auto | local | ray
    # auto: at most this many videos to do run locally. Measured on 2 cores (docs/PERFORMANCE.md,
    # "Small jobs"): local is ~2x faster than Ray still at 60 videos; larger jobs keep Ray until the
    # local path has carried the reliability suite at that size.
    local_max_videos: int = 64
    local_workers: int = 0  # worker processes; 0 = one per CPU (ray.num_cpus when set), at most one per video
    # Worker i on core i of those this process may use, when the job has one worker per core (Linux):
    # 16 clips on 2 cores took 26.0 s pinned against 34.9 s not (median of 5 alternating rounds, #22).
    pin_workers: bool = True

    def validate(self) -> list[str]:
        ok = ("auto", "local", "ray")
        return [] if self.kind in ok else [f"kind: must be one of {', '.join(ok)}, got {self.kind!r}"]


@dataclasses.dataclass
class AnnotateConfig:
    decode: DecodeConfig = dataclasses.field(default_factory=DecodeConfig)
    faces: FaceConfig = dataclasses.field(default_factory=FaceConfig)
    model: ModelRef = dataclasses.field(default_factory=ModelRef)
    ray: RayConfig = dataclasses.field(default_factory=RayConfig)
    output: OutputConfig = dataclasses.field(default_factory=OutputConfig)
    assets: AssetsConfig = dataclasses.field(default_factory=AssetsConfig)
    mlflow: MlflowConfig = dataclasses.field(default_factory=lambda: MlflowConfig(experiment="mien-annotate"))
    ingest: IngestConfig = dataclasses.field(default_factory=IngestConfig)
    executor: ExecutorConfig = dataclasses.field(default_factory=ExecutorConfig)

    def validate(self) -> list[str]:
        return self.mlflow.unused_settings("annotate", ("registered_model", "alias", "run_id"))


@dataclasses.dataclass
class AnnotateSummary:
    run_id: str
    output: str
    dry_run: bool = False  # planned only (--dry-run): nothing ran, nothing was written
    planned_chunks: int = 0
    videos_total: int = 0
    videos_skipped: int = 0
    # Videos left alone because their current row is an error of the file itself: kind -> videos.
    errors_not_retried: dict[str, int] = dataclasses.field(default_factory=dict)
    # Left to other live runs on the same output (claimed by them first): run -> videos.
    videos_elsewhere: dict[str, int] = dataclasses.field(default_factory=dict)
    denied: int = 0  # on the deny-list (ingest.deny_list, ingest.deny_list_file, `mien forget`): not annotated
    videos_ok: int = 0
    videos_error: int = 0
    faces: int = 0
    tracks: int = 0
    wall_s: float = 0.0
    errors: list[dict[str, str]] = dataclasses.field(default_factory=list)
    rejected: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    # Files under the input that are not media, per extension (ingest.Discovery.skipped_non_media).
    skipped_non_media: dict[str, int] = dataclasses.field(default_factory=dict)
    fe_counts: dict[str, int] = dataclasses.field(default_factory=dict)
    au_counts: dict[str, int] = dataclasses.field(default_factory=dict)
    model_id: str | None = None
    # Every component's licence and whether it allows commercial use (workflows.core.licences).
    licences: list[dict[str, str]] = dataclasses.field(default_factory=list)
    # Where the time went: seconds inside each stage summed over videos (busy time of the
    # pools), seconds from pipeline start to the first finished video (actor start-up and
    # model loads), and the pool sizes used.
    decode_faces_s: float = 0.0
    decode_faces_cpu_s: float = 0.0
    mllm_s: float = 0.0
    first_result_s: float | None = None
    plan: dict[str, Any] = dataclasses.field(default_factory=dict)
    executor: str | None = None  # local | ray (None: nothing to do)
    # Long videos read in time windows by several face workers at once (decode.window_s).
    windowed_videos: int = 0
    windows: int = 0
    # Where the wall time went, phase by phase (Stopwatch): start-up, discovery, model check,
    # resume check, cluster start, first result, steady state, sink, run JSON, MLflow.
    breakdown: dict[str, float] = dataclasses.field(default_factory=dict)

    def utilisation(self) -> dict[str, float | None]:
        """Busy fraction of each stage's actor pool over the run's wall time (1.0 = every
        actor busy all the time; low values mean start-up, stragglers or a starved stage)."""
        from workflows.annotate.stages import PIPELINE, pipeline_stages

        busy: dict[str, float] = {cls.pool: 0.0 for cls in PIPELINE}
        for cls in pipeline_stages(bool((self.plan.get("mllm") or {}).get("fused"))):
            busy[cls.pool] += sum(getattr(self, f) for f in cls.busy_fields)
        out: dict[str, float | None] = {}
        for pool, seconds in busy.items():
            n = (self.plan.get(pool) or {}).get("concurrency")
            out[pool] = seconds / (self.wall_s * n) if n and self.wall_s else None
        return out

    def pools_line(self) -> str:
        """Actor pools, how busy they were, and the first result's latency, in one line."""
        util = self.utilisation()
        unit = "local worker process(es)" if self.executor == "local" else "actor(s)"
        pools = "; ".join(
            f"{stage} {p['concurrency']} {unit} x {p['num_cpus']:g} CPU"
            + (f" x {p['num_gpus']:g} GPU" if p.get("num_gpus") else "")
            + (f", {util[stage]:.0%} busy" if util.get(stage) is not None else "")
            for stage, p in self.plan.items() if p.get("concurrency"))
        if (self.plan.get("mllm") or {}).get("fused"):
            pools += " (the MLLM runs inside the face " + ("workers)" if self.executor == "local" else "actors)")
        first = f"; first video after {self.first_result_s:.1f} s" if self.first_result_s is not None else ""
        return pools + first

    def breakdown_line(self) -> str:
        """Where the wall time went, phase by phase (``mien -v annotate``)."""
        return ", ".join(f"{k.removesuffix('_s').replace('_', ' ')} {v:.1f} s" for k, v in self.breakdown.items())

    def render(self, verbose: bool = False) -> str:
        from workflows.annotate.ingest import printable

        if self.dry_run:
            todo = self.videos_total - self.videos_skipped - sum(self.errors_not_retried.values()) - self.denied
            where = f" on the {self.executor} executor" if self.executor else ""
            lines = [f"dry run -> {self.output}: nothing was run or written",
                     f"videos: {todo} to annotate{where} in {self.planned_chunks} chunk(s), "
                     f"{self.videos_skipped} already done (of {self.videos_total})"]
        else:
            lines = [f"run {self.run_id} -> {self.output}",
                     f"videos: {self.videos_ok} ok, {self.videos_error} error, {self.videos_skipped} already done "
                     f"(of {self.videos_total}); faces {self.faces}, tracks {self.tracks}; {self.wall_s:.1f} s"]
        if self.skipped_non_media:
            lines.append(f"skipped {sum(self.skipped_non_media.values())} non-media file(s): "
                         + ", ".join(f"{ext} {n}" for ext, n in self.skipped_non_media.items()))
        if self.denied:
            lines.append(f"{self.denied} video(s) on the deny-list not annotated (ingest.deny_list, "
                         f"ingest.deny_list_file, {self.output}/_privacy/forgotten.jsonl)")
        if self.errors_not_retried:
            lines.append(f"{sum(self.errors_not_retried.values())} video(s) not retried: their earlier error is in "
                         f"the file itself (" + ", ".join(f"{k} {n}" for k, n in self.errors_not_retried.items())
                         + "); --retry-errors tries them again (e.g. after raising a decode limit)")
        for run, n in self.videos_elsewhere.items():
            lines.append(f"{n} video(s) left to {run}, which is annotating them into this output now; once it "
                         f"ends, run this command again to pick up any it did not finish (if it died on another "
                         f"machine, its lease expires output.lease_ttl_s after its last heartbeat)")
        if self.fe_counts:
            total = sum(self.fe_counts.values())
            dist = ", ".join(f"{k} {v / total:.0%}" for k, v in
                             sorted(self.fe_counts.items(), key=lambda kv: -kv[1]))
            lines.append(f"expressions (faces): {dist}")
        if self.au_counts and self.faces:
            top = sorted(self.au_counts.items(), key=lambda kv: -kv[1])[:5]
            lines.append("top AUs (share of faces active): " +
                         ", ".join(f"{k} {v / self.faces:.0%}" for k, v in top))
        if self.plan:
            lines.append(f"pools: {self.pools_line()}")
        if self.windowed_videos:
            lines.append(f"long videos: {self.windowed_videos} read in {self.windows} time windows "
                         f"(decode.window_s) by several face workers at once")
        if verbose and self.breakdown:
            lines.append(f"time ({self.executor or 'nothing to run'}): {self.breakdown_line()}")
        for e in self.errors[:20]:  # file names and messages are user data: no control characters
            lines.append(f"  error {printable(e['video_uri'])}: [{e['error_kind']}] {printable(e['error'])}")
        if len(self.errors) > 20:
            lines.append(f"  ... and {len(self.errors) - 20} more error(s) (videos/ status=error)")
        for r in self.rejected[:20]:
            where = f"manifest line {r['line']}" if r["line"] else "input"
            lines.append(f"  rejected {where} {r['entry']!r}: {r['reason']}")
        if len(self.rejected) > 20:
            lines.append(f"  ... and {len(self.rejected) - 20} more rejected input(s) "
                         f"(runs/{self.run_id}.json)")
        return "\n".join(lines)


def new_run_id() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ") + "-" + uuid.uuid4().hex[:8]


class Stopwatch:
    """Seconds per phase of one run, in the order they happened: the summary's breakdown of the
    wall time (``-v``) and ``timings.breakdown`` in the run JSON."""

    def __init__(self) -> None:
        self._t = time.perf_counter()
        self.phases: dict[str, float] = {}

    def lap(self, name: str) -> None:
        """Book the time since the previous lap to phase ``name``."""
        now = time.perf_counter()
        self.phases[name] = self.phases.get(name, 0.0) + now - self._t
        self._t = now


# How long the end of a run waits for MLflow before it exits without it: the output and its run
# JSON are complete by then, and a slow or unreachable tracking server must not hold the job.
MLFLOW_WAIT_S = 120.0


# Error kinds that are the file itself: the same bytes fail the same way on every try, so a rerun
# skips them (a changed file has a new video_id and is done again); ``--retry-errors`` retries them
# anyway, e.g. after raising a decode limit. Every other error (a crashed or starved worker,
# storage, access, a stage exception) is retried by a plain rerun.
SETTLED_ERROR_KINDS = frozenset({
    "invalid_data", "no_video_stream", "empty_file", "invalid_dimensions", "no_frames", "truncated",
    "decode_error", "not_a_file", "too_small", "too_large", "too_long", "too_many_frames", "timeout"})


def annotate(input_uri: str, output_uri: str, cfg: AnnotateConfig, force: bool = False,
             limit: int | None = None, progress: bool = True, startup_s: float | None = None,
             retry_errors: bool = False, dry_run: bool = False) -> AnnotateSummary:
    """Run the pipeline; returns the summary. Raises InputError / PermissionError for an
    unusable input root or output and ModelDirError for an unusable model (the CLI turns them
    into a message and exit code). ``startup_s``: the caller's start-up time (process start and
    imports) for the breakdown. A rerun skips videos whose current row is ``ok`` or an error of
    the file itself (:data:`SETTLED_ERROR_KINDS`; ``retry_errors`` retries those, ``force`` redoes
    everything). ``dry_run``: plan only (what would run, counted), and write nothing.

    The input is planned in one streamed pass (:mod:`workflows.annotate.plan`) and annotated a
    chunk of ``ingest.chunk_videos`` at a time, so the driver's memory does not grow with the corpus."""
    import tempfile

    from workflows.annotate.ingest import iter_discover
    from workflows.annotate.plan import Plan, Resume
    from workflows.corpus.lease import RunLease
    from workflows.corpus.privacy import read_deny_list
    from workflows.corpus.writer import AnnotationSink

    t0 = time.perf_counter()
    clock = Stopwatch()
    if startup_s is not None:
        clock.phases["startup_s"] = startup_s
    run_id = new_run_id()
    # Actors do not share the driver's working directory: paths the user gave are fixed here.
    output_uri = storage.absolute(output_uri)
    cfg.model.uri = storage.absolute(cfg.model.uri)
    summary = AnnotateSummary(run_id=run_id, output=output_uri, dry_run=dry_run)
    if cfg.output.privacy == "strict" and cfg.output.crops:  # strict wins: the MLLM stage writes no crop
        log.info("output.privacy=strict: no face crops are written (output.crops=true is overridden)")
        cfg.output.crops = False
    storage.check_writable(output_uri)
    # The tracking store opens (imports, tables, experiment) while the job runs, not after it.
    tracking = _Background(_open_tracking, cfg) if cfg.mlflow.enabled and not dry_run and not cfg.model.uri.startswith(
        ("models:/", "runs:/")) else None
    found = iter_discover(input_uri, cfg.ingest.allowed_roots or None)  # an unusable input fails here
    clock.lap("discover_s")
    summary.licences = _check_model(cfg)
    clock.lap("model_check_s")
    # Other runs may write to this output at the same time (shards, a second start): the lease
    # keeps them from removing each other's chunks in flight, and --force deletes nothing before
    # its new rows are committed (workflows/corpus/writer.py). A dry run takes none: it writes nothing.
    leasing = contextlib.nullcontext() if dry_run else RunLease(output_uri, run_id, cfg.output.lease_ttl_s,
                                                                 input_uri=input_uri, force=force)
    with leasing as lease, tempfile.TemporaryDirectory(prefix=f"mien-plan-{run_id}-") as spill:
        sink = AnnotationSink(output_uri, run_id, cfg.output.flush_every_videos, cfg.output.flush_every_s,
                              lease=lease)
        # The output as the tidying read it, when that changed nothing: the resume check reuses its row index.
        tidied = sink.prepare(temporaries_older_than_s=cfg.output.lease_ttl_s) if not dry_run else None
        # The deny-list is read after the lease is taken: a `mien forget` either sees this run or is seen.
        deny = read_deny_list(output_uri, cfg.ingest.deny_list, cfg.ingest.deny_list_file)
        # The output as it is after prepare's rewrites (prepare's own read when it rewrote nothing);
        # only the keys of the videos it settles (16 bytes each) stay for the pass, not its row index.
        resume = None if force else Resume.read(output_uri, () if retry_errors else SETTLED_ERROR_KINDS, tidied)
        del tidied  # its row index goes before the pass
        work = Plan.build(found, spill, resume=resume,
                          denied=(lambda s: deny.denies(s.video_id, s.uri)) if deny else None, limit=limit)
        summary.videos_total, summary.videos_skipped = work.counts.total, work.counts.skipped
        summary.errors_not_retried = dict(work.counts.settled.most_common())
        summary.denied = work.counts.denied
        summary.rejected = [dataclasses.asdict(r) for r in found.rejected]
        summary.skipped_non_media = found.skipped_non_media
        if summary.denied:
            log.warning("%d video(s) on the deny-list (ingest.deny_list, ingest.deny_list_file, `mien forget`) are "
                        "not annotated", summary.denied)
        log.info("%d video(s) found, %d already annotated, %d to do; run %s", work.counts.total,
                 summary.videos_skipped, work.counts.todo, run_id)
        clock.lap("resume_check_s")
        if dry_run:
            if work.counts.todo:
                summary.executor, why = choose_executor(cfg, work.counts.todo)
                log.info("executor: %s (%s)", summary.executor, why)
            for chunk in work.chunks(cfg.ingest.chunk_videos):  # read back as a run reads them
                summary.planned_chunks += 1
                del chunk  # before the next is read, as a run does
            summary.wall_s = time.perf_counter() - t0
            summary.breakdown = dict(clock.phases)
            return summary
        plan: dict[str, Any] = {}
        if work.counts.todo:
            plan = _run(work, cfg, run_id, sink, lease, summary, progress, clock)
        sink.flush()
        sink.drop_replaced()  # the rows this run replaced, now that its own are committed
        clock.lap("sink_s")
        summary.wall_s = time.perf_counter() - t0
        summary.breakdown = dict(clock.phases)  # the run JSON's: up to the run JSON itself
        _write_run_json(output_uri, input_uri, cfg, summary, plan, sink)
        clock.lap("run_json_s")
    if cfg.mlflow.enabled:
        _finish_tracking(cfg, summary, output_uri, input_uri, tracking)
        clock.lap("mlflow_s")
    summary.breakdown = dict(clock.phases)  # the printed summary's: everything but the exit
    return summary


class _Background:
    """A function running in a daemon thread: waiting for it is bounded, and a hung call (an
    unreachable tracking server) never keeps the process from exiting."""

    def __init__(self, fn: Any, *args: Any) -> None:
        self.error: BaseException | None = None
        self._fn, self._args = fn, args
        self._thread = threading.Thread(target=self._main, name=f"mien-{fn.__name__}", daemon=True)
        self._thread.start()

    def _main(self) -> None:
        with contextlib.suppress(OSError, AttributeError):  # Linux: a thread is a task with its own nice value
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 10)  # the workers' CPU comes first
        try:
            self._fn(*self._args)
        except BaseException as e:  # noqa: BLE001 - reported by whoever waits
            self.error = e

    def wait(self, timeout_s: float) -> bool:
        """True when the call has ended (see ``error``) within ``timeout_s``."""
        self._thread.join(timeout_s)
        return not self._thread.is_alive()


def _open_tracking(cfg: AnnotateConfig) -> None:
    from workflows.core.tracking import ensure_experiment

    m = cfg.mlflow
    ensure_experiment(m.experiment, resolve_tracking_uri(m.tracking_uri), m.artifact_location)


def _finish_tracking(cfg: AnnotateConfig, summary: AnnotateSummary, output_uri: str, input_uri: str,
                     opening: _Background | None) -> None:
    """Log the finished run to MLflow, waiting at most :data:`MLFLOW_WAIT_S` in all."""
    deadline = time.monotonic() + MLFLOW_WAIT_S
    if opening is not None and opening.wait(MLFLOW_WAIT_S) and opening.error is not None:
        log.debug("opening the tracking store failed", exc_info=opening.error)  # _log_mlflow says why
    logging_run = _Background(_log_mlflow, cfg, summary, output_uri, input_uri)
    if not logging_run.wait(max(0.0, deadline - time.monotonic())):
        log.warning("MLflow logging did not finish within %.0f s (tracking server slow or unreachable); the output "
                    "and runs/%s.json are complete; exiting without it", MLFLOW_WAIT_S, summary.run_id)


def _check_model(cfg: AnnotateConfig) -> list[dict[str, str]]:
    """Refuse an unusable model directory (missing, pickled, checksum mismatch) here, in one
    line, instead of in every MLLM actor's constructor on the cluster. Raises ModelDirError.
    Returns the run's licences (:func:`_licences`)."""
    uri = cfg.model.uri
    slow = "on CPU each takes seconds and they dominate the run (--set model.describe=off switches them off)"
    local = not storage.is_remote(uri) and not uri.startswith(("models:/", "runs:/"))
    if uri != "default" and local and not os.path.exists(storage.strip_file_scheme(uri)) and (
            cfg.ray.address or os.environ.get("RAY_ADDRESS")):
        log.info("model %s is not on this machine; the cluster's MLLM workers will load it", uri)
        if cfg.model.describe != "off":
            log.warning("descriptions are on (model.describe=%s): one LLM decode per described face; %s",
                        cfg.model.describe, slow)
        return _licences(cfg, None)
    from model import open_model, verify_model_files
    from model.annotator import describe_cost
    from model.checkpoint import apply_overrides
    from model.config import config_from_dict

    directory, manifest = open_model(uri)  # opened (and a plain VLM checkpoint hashed) once
    # a bad key or value fails here, with every problem named, not in every actor
    model_cfg = config_from_dict(apply_overrides(manifest["architecture"], cfg.model.load_overrides()),
                                 source=f"model {uri} with model.overrides / model.describe")
    if directory is not None:  # parts and components: every file the actors' load_model checks, checked here
        verify_model_files(directory, manifest, vlm_source=model_cfg.vlm.source,
                           absent_ok=bool(cfg.ray.address or os.environ.get("RAY_ADDRESS")))
    if model_cfg.generation.enabled:  # the run's option, or the model's own setting
        log.warning("descriptions are on (model.describe=%s): %s; %s", cfg.model.describe,
                    describe_cost(model_cfg.generation, cfg.model.batch_size), slow)
    from model.model_dir import model_licences

    return _licences(cfg, model_licences(manifest, directory))


def _licences(cfg: AnnotateConfig, components: list[Any] | None) -> list[dict[str, str]]:
    """The licences of what this run uses: the model's ``components`` (None: a model not on this machine,
    known only by its URI) and an insightface pack when the face stage runs one; a warning for each that
    does not allow commercial use."""
    from workflows.core.licences import Component, card_licence, face_components, to_dicts, warn

    if components is None:
        components = [*face_components(), Component("model", cfg.model.uri, "")]
    if cfg.faces.backend == "insightface":
        pack = cfg.faces.insightface.pack
        components.append(Component("insightface_pack", pack, "" if storage.is_remote(pack) else card_licence(pack)))
    warn(components, f"model {cfg.model.uri}")
    return to_dicts(components)


def choose_executor(cfg: AnnotateConfig, n_videos: int) -> tuple[str, str]:
    """``("local" | "ray", why)`` for a job of ``n_videos`` (see :class:`ExecutorConfig`)."""
    kind = cfg.executor.kind
    if kind != "auto":
        return kind, f"executor.kind={kind}"
    if cfg.ray.address or os.environ.get("RAY_ADDRESS"):
        return "ray", "a Ray cluster address is set"
    ray = sys.modules.get("ray")  # never imported here for the question
    if ray is not None and getattr(ray, "is_initialized", lambda: False)():
        return "ray", "this process is connected to Ray already"
    if n_videos > cfg.executor.local_max_videos:
        return "ray", f"{n_videos} videos > executor.local_max_videos={cfg.executor.local_max_videos}"
    fuse = cfg.ray.fuse_stages
    if fuse == "never" or (fuse == "auto" and cfg.model.uri != "default"):
        return "ray", "the model runs in its own MLLM pool (ray.fuse_stages)"
    wants_gpu = cfg.ray.mllm.num_gpus > 0 or cfg.model.device.startswith("cuda") or (
        cfg.ray.mllm.num_gpus < 0 and _local_gpus())
    if wants_gpu or cfg.ray.faces.num_gpus > 0:
        return "ray", "the job asks for a GPU"
    return "local", f"a small job ({n_videos} video(s) <= executor.local_max_videos) without a cluster"


def _local_gpus() -> bool:
    """Whether this machine shows an NVIDIA GPU to this process (no CUDA library is loaded)."""
    import glob

    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None and visible.strip() in ("", "-1"):
        return False
    return bool(glob.glob("/dev/nvidia[0-9]*"))


def _run(work: Any, cfg: AnnotateConfig, run_id: str, sink: Any, lease: Any, summary: AnnotateSummary,
         progress: bool, clock: Stopwatch) -> dict[str, Any]:
    """Annotate the planned videos (``work``: a :class:`~workflows.annotate.plan.Plan`) a chunk at a
    time; returns the stage plan."""
    from workflows.annotate import plan as planning
    from workflows.annotate import runner, windows

    total = work.counts.todo
    executor, why = choose_executor(cfg, total)
    summary.executor = executor
    log.info("executor: %s (%s)", executor, why)
    tries = cfg.ray.crash_passes + 1  # a window or a merge of a long video is tried this often
    if executor == "local":
        from workflows.annotate import local

        plan = local.local_plan(cfg, total)

        def execute(rows: list[dict[str, str]], plan: dict[str, Any]) -> Iterable[dict[str, Any]]:
            return local.run_local(rows, cfg, run_id, plan, sink.root)

        def execute_windows(rows: list[dict[str, Any]]) -> Iterable[dict[str, Any]]:
            workers = local.local_workers(cfg)
            n = _count_windows(rows, cfg, workers)
            summary.windows += n
            backend = local.LocalWindows(cfg, run_id, local.local_plan(cfg, n), sink.root)
            return windows.run_windows(rows, cfg.decode.window_s, workers, backend, tries)
    else:
        from workflows.core import cluster

        resources = cfg.ray.connect()
        clock.lap("cluster_start_s")
        plan = runner.stage_plan(cfg, resources, total, cluster.node_resources())

        def execute(rows: list[dict[str, str]], plan: dict[str, Any]) -> Iterable[dict[str, Any]]:
            return runner.run_pipeline(rows, cfg, run_id, plan, progress, sink.root)

        def execute_windows(rows: list[dict[str, Any]]) -> Iterable[dict[str, Any]]:
            nodes = cluster.node_resources()
            workers = runner.stage_plan(cfg, resources, None, nodes)["faces"]["concurrency"]
            n = _count_windows(rows, cfg, workers)
            summary.windows += n
            backend = runner.RayWindows(cfg, run_id, runner.stage_plan(cfg, resources, n, nodes), sink.root)
            return windows.run_windows(rows, cfg.decode.window_s, workers, backend, tries)
    summary.plan = plan
    log.info("stage plan: %s", plan)
    compactor = _Compactor(sink, run_id, cfg.output.flush_every_videos, executor)
    # Each chunk is one pipeline run (its actors start anew): at least 16 videos per face actor.
    chunk_videos = max(cfg.ingest.chunk_videos, 16 * sum(int(p.get("concurrency") or 0) for p in plan.values()))
    t_start = time.perf_counter()
    fe_counts: collections.Counter[str] = collections.Counter()
    au_counts: collections.Counter[str] = collections.Counter()
    elsewhere: collections.Counter[str] = collections.Counter()
    done = 0
    last_log = 0.0
    pending: dict[str, Any] = {}  # the chunk's videos not yet committed
    windowed: dict[str, dict[str, Any]] = {}  # long videos the face stage only probed: read in windows

    def take(rows: list[dict[str, Any]]) -> None:
        """Commit finished videos (a chunk a worker wrote, or one video's row); a long video's
        ``windowed`` row waits for its windows instead."""
        nonlocal done, last_log
        windowed.update((r["video_id"], r) for r in rows if r["status"] == "windowed")
        rows = [r for r in rows if r["status"] != "windowed"]
        if not rows:
            return  # a chunk part holding only probed videos has no row: removed at the end, uncommitted
        for r in rows:
            r["meta"] = pending.pop(r["video_id"]).meta  # stays on the driver, as do the manifest's columns
        done += len(rows)
        if summary.first_result_s is None:
            summary.first_result_s = time.perf_counter() - t_start
            clock.lap("first_result_s")
        if rows[0].get("part"):
            _commit_chunk(rows[0]["part"], rows, run_id, sink, summary, fe_counts, au_counts)
            compactor.add(rows[0]["part"], len(rows))
            last_log = _progress(summary, done, total, last_log)
        else:
            last_log = _consume(rows[0], run_id, sink, summary, fe_counts, au_counts, done, total, last_log)

    for chunk in work.chunks(chunk_videos):
        held = lease.claim([s.video_id for s in chunk])
        if held:
            chunk = [s for s in chunk if s.video_id not in held]
            runs = {rec.run_id: rec for rec in held.values()}
            mine = collections.Counter(runs[rec.run_id].describe() for rec in held.values())
            elsewhere.update(mine)
            total -= len(held)
            log.warning("%d video(s) are claimed by other live run(s) on this output and left to them: %s",
                        len(held), "; ".join(mine))
        pending = {s.video_id: s for s in chunk}
        windowed = {}
        if cfg.decode.window_s and len(pending) <= 4 * int(plan["faces"]["concurrency"] or 1):
            # A few videos: those long enough for windows are probed here and go straight to them (many
            # videos keep the face workers busy anyway: there the face stage probes them).
            windowed = windows.probe_long(list(pending.values()), cfg)
        passes = plan
        for attempt in range(cfg.ray.crash_passes + 1):
            todo = [s for s in pending.values() if s.video_id not in windowed]
            if not todo:
                break
            if attempt:
                log.warning("%d video(s) lost to crashed workers; retrying them one at a time (pass %d/%d)",
                            len(todo), attempt, cfg.ray.crash_passes)
                passes = runner.isolated(passes)
            rows = [{"video_id": s.video_id, "uri": s.uri} for s in planning.largest_first(todo)]
            written: dict[str, list[dict[str, Any]]] = {}  # chunks workers wrote, until all their rows are in
            for row in execute(rows, passes):
                if row["video_id"] not in pending or row["video_id"] in windowed:
                    # A block re-executed after a node or object loss can deliver a video twice;
                    # the first result is already in the sink (a chunk written twice: the second is
                    # never committed, and removed at the end).
                    log.warning("ignoring a second result for video %s", row["video_id"])
                    continue
                if not row.get("part"):
                    take([row])
                    continue
                chunk_rows = written.setdefault(row["part"], [])
                chunk_rows.append(row)
                if len(chunk_rows) < int(row["part_videos"]):
                    continue
                del written[row["part"]]
                if all(r["video_id"] in pending and r["video_id"] not in windowed for r in chunk_rows):
                    take(chunk_rows)  # else some of its videos were committed from another chunk meanwhile
            if written:  # chunks some of whose rows never came (a block lost half-way): their videos go again
                log.warning("%d chunk(s) written by workers came back incomplete; their videos are retried",
                            len(written))
        if windowed:
            summary.windowed_videos += len(windowed)
            for row in execute_windows(list(windowed.values())):
                if row.get("lost") or row["video_id"] not in pending:
                    continue  # a lost video stays pending: recorded below like any its workers died on
                take([row])
        for s in pending.values():  # still missing: every attempt crashed its worker
            row = {"video_id": s.video_id, "video_uri": s.uri, "status": "error", "error_kind": "worker_crash",
                   "error": f"the worker processing this video died on every try ({cfg.ray.crash_passes + 1} "
                            + ("pass(es); a native crash or out of memory); see the run's stderr"
                               if executor == "local" else
                               f"pass(es) x {cfg.ray.max_task_retries + 1} tries; a native crash or out of "
                               f"memory); see the Ray logs"),
                   "faces_ipc": None, "tracks_ipc": None, "n_frames": 0, "meta": s.meta}
            done += 1
            last_log = _consume(row, run_id, sink, summary, fe_counts, au_counts, done, total, last_log)
        # Released before the next chunk is read: the driver holds one chunk of sources, not two.
        chunk, todo, rows, pending = [], [], [], {}
    summary.videos_elsewhere = dict(elsewhere)
    if cfg.output.sink == "workers":
        compactor.flush()
        sink.remove_own_uncommitted()
    clock.lap("steady_state_s")
    summary.fe_counts = dict(fe_counts)
    summary.au_counts = dict(au_counts)
    return plan


def _count_windows(rows: list[dict[str, Any]], cfg: AnnotateConfig, workers: int) -> int:
    from workflows.annotate.windows import windows_of

    return sum(len(windows_of(r["duration_s"], cfg.decode.window_s, workers)) for r in rows)


def _consume(row: dict[str, Any], run_id: str, sink: Any, summary: AnnotateSummary,
             fe_counts: collections.Counter, au_counts: collections.Counter, done: int, total: int,
             last_log: float) -> float:
    """Fold one finished video whose faces and tracks came to the driver (``output.sink=driver``, or a
    video every worker died on) into the sink and the summary; returns the last progress-log time."""
    from workflows.annotate.stages import read_ipc
    from workflows.corpus import schema

    faces_blob, tracks_blob = row.pop("faces_ipc", None), row.pop("tracks_ipc", None)
    faces = read_ipc(faces_blob) if faces_blob and row["status"] == "ok" else schema.FACES.empty_table()
    tracks = read_ipc(tracks_blob) if tracks_blob and row["status"] == "ok" else schema.TRACKS.empty_table()
    row.setdefault("fe_counts", None)
    if not row["fe_counts"]:  # counted here when the worker did not (a row the driver made)
        row["fe_counts"] = collections.Counter(faces.column("fe_label").to_pylist())
        row["au_counts"] = collections.Counter(a for x in faces.column("au_active").to_pylist() for a in x or [])
    row["faces_rows"], row["tracks_rows"] = len(faces), len(tracks)
    sink.add(_fold(row, run_id, sink, summary, fe_counts, au_counts), faces, tracks, 1)
    return _progress(summary, done, total, last_log)


class _Compactor:
    """Merges the chunks the workers committed (one per worker batch) into chunks of about
    ``every`` videos (``output.flush_every_videos``, the driver sink's chunk size), so an output of
    short clips does not end as thousands of small parts (:meth:`AnnotationSink.compact`). On Ray
    the faces and tracks are merged in a task, next to the data, not in the driver."""

    def __init__(self, sink: Any, run_id: str, every: int, executor: str):
        self.sink, self.run_id, self.every, self.executor = sink, run_id, max(1, every), executor
        self.parts: list[str] = []
        self.videos = 0
        self.seq = 0
        self._remote: Any = None  # the Ray task, made once

    def add(self, part: str, videos: int) -> None:
        self.parts.append(part)
        self.videos += videos
        if self.videos >= self.every:
            self.flush()

    def flush(self) -> None:
        if len(self.parts) > 1:
            merged = f"{self.run_id}-c{self.seq:05d}.parquet"
            self.sink.compact(self.parts, merged, self._merge())
            self.seq += 1
        self.parts, self.videos = [], 0

    def _merge(self) -> Any:
        from workflows.corpus.writer import merge_chunks

        if self.executor != "ray":
            return merge_chunks
        import ray

        if self._remote is None:
            self._remote = ray.remote(num_cpus=0, max_retries=3)(merge_chunks)
        return lambda root, parts, merged: ray.get(self._remote.remote(root, parts, merged))


def _commit_chunk(part: str, rows: list[dict[str, Any]], run_id: str, sink: Any, summary: AnnotateSummary,
                  fe_counts: collections.Counter, au_counts: collections.Counter) -> None:
    """Commit a chunk a worker wrote (``output.sink=workers``): its videos rows, from the workers'
    status rows, with the record of each video's faces and tracks rows (workflows/corpus/writer.py)."""
    import pyarrow as pa

    videos = pa.concat_tables([_fold(r, run_id, sink, summary, fe_counts, au_counts) for r in rows])
    record = {name: {r["video_id"]: int(r[f"{name}_rows"]) for r in rows if r["status"] == "ok"
                     and int(r[f"{name}_rows"] or 0)} for name in ("faces", "tracks")}
    sink.commit(part, videos, record)
    sink.bytes_written += sum(int(r.get("part_bytes") or 0) for r in rows)


def _fold(row: dict[str, Any], run_id: str, sink: Any, summary: AnnotateSummary, fe_counts: collections.Counter,
          au_counts: collections.Counter) -> Any:
    """Count one finished video into the summary; returns its videos row (a one-row table)."""
    import json

    import pyarrow as pa

    from workflows.corpus import schema

    row["run_id"] = run_id
    row["finished_at"] = sink.commit_time()
    if row["status"] != "ok":
        row.update(n_faces=0, n_tracks=0)
        summary.videos_error += 1
        summary.errors.append({k: str(row.get(k)) for k in ("video_uri", "error_kind", "error")})
    else:
        summary.videos_ok += 1
        summary.faces += int(row["faces_rows"] or 0)
        summary.tracks += int(row["tracks_rows"] or 0)
        for counts, key in ((fe_counts, "fe_counts"), (au_counts, "au_counts")):
            value = row.get(key) or {}
            counts.update(json.loads(value) if isinstance(value, str) else value)
    summary.model_id = row.get("model_id") or summary.model_id
    for key in ("decode_faces_s", "decode_faces_cpu_s", "mllm_s"):
        v = row.get(key)
        if isinstance(v, int | float) and v == v:
            setattr(summary, key, getattr(summary, key) + float(v))
    return pa.Table.from_pylist([_video_record(row, schema.VIDEOS)], schema=schema.VIDEOS)


def _progress(summary: AnnotateSummary, done: int, total: int, last_log: float) -> float:
    now = time.perf_counter()
    if now - last_log > 5 or done == total:
        log.info("videos %d/%d done (%d error), faces %d", done, total, summary.videos_error, summary.faces)
        last_log = now
    return last_log


def _video_record(row: dict[str, Any], sch: Any) -> dict[str, Any]:
    """Coerce a result row to the videos schema: Ray turns missing numbers into NaN and
    integers into floats on the way through the object store."""
    import math

    import pyarrow as pa

    out: dict[str, Any] = {}
    for field in sch:
        v = row.get(field.name)
        if isinstance(v, float) and math.isnan(v):
            v = None
        if v is not None and pa.types.is_integer(field.type):
            v = int(v)
        elif v is not None and pa.types.is_floating(field.type):
            v = float(v)
        elif v is not None and pa.types.is_string(field.type):
            v = str(v)
        out[field.name] = v
    return out


def _write_run_json(output_uri: str, input_uri: str, cfg: AnnotateConfig, summary: AnnotateSummary,
                    plan: dict[str, Any], sink: Any) -> None:
    """``runs/<run_id>.json``, URI credentials masked (the config's mlflow.tracking_uri, manifest entries)."""
    from workflows.core import assets
    from workflows.core.config import to_dict
    from workflows.core.redact import redact

    used = [n for n in assets.MODEL_ASSETS]
    doc = {
        "run_id": summary.run_id, "input": input_uri, "output": output_uri,
        "started_at": summary.run_id.split("-")[0], "config": to_dict(cfg),
        "model_id": summary.model_id,
        "assets": {n: {"package": assets.ASSETS[n].package, "member": assets.ASSETS[n].member,
                       "sha256": assets.ASSETS[n].sha256} for n in used},
        "licences": summary.licences,
        "counts": {"videos_total": summary.videos_total, "videos_skipped": summary.videos_skipped,
                   "errors_not_retried": summary.errors_not_retried,
                   "videos_elsewhere": sum(summary.videos_elsewhere.values()), "denied": summary.denied,
                   "videos_ok": summary.videos_ok, "videos_error": summary.videos_error,
                   "faces": summary.faces, "tracks": summary.tracks,
                   "rejected_manifest_lines": len(summary.rejected),
                   "skipped_non_media": summary.skipped_non_media},
        "timings": {"wall_s": summary.wall_s,
                    "videos_per_s": (summary.videos_ok + summary.videos_error) / summary.wall_s
                    if summary.wall_s else None,
                    "faces_per_s": summary.faces / summary.wall_s if summary.wall_s else None,
                    "decode_faces_s": summary.decode_faces_s, "decode_faces_cpu_s": summary.decode_faces_cpu_s,
                    "mllm_s": summary.mllm_s,
                    "first_result_s": summary.first_result_s, "utilisation": summary.utilisation(),
                    "executor": summary.executor, "breakdown": summary.breakdown},
        "stage_plan": plan, "errors": summary.errors, "rejected": summary.rejected,
        "fe_counts": summary.fe_counts, "au_counts": summary.au_counts,
        "parts_written": sink.parts_written, "bytes_written": sink.bytes_written,
        "host": {"python": platform.python_version(), "platform": platform.platform()},
    }
    storage.write_text(storage.join(output_uri, "runs", f"{summary.run_id}.json"),
                       json.dumps(redact(doc), indent=2, default=str))


def _log_mlflow(cfg: AnnotateConfig, summary: AnnotateSummary, output_uri: str, input_uri: str) -> None:
    try:
        from workflows.core.config import to_dict

        m = cfg.mlflow
        with Tracker.start(resolve_tracking_uri(m.tracking_uri), m.experiment, run_name=summary.run_id,
                           artifact_location=m.artifact_location) as run:
            run.log_params(config_params(to_dict(cfg)))
            run.set_tags({"mien.run_id": summary.run_id, "mien.output": output_uri, "mien.input": input_uri,
                          "mien.model_id": str(summary.model_id)})
            run.log_metrics({
                "videos_ok": summary.videos_ok, "videos_error": summary.videos_error,
                "videos_skipped": summary.videos_skipped, "faces": summary.faces, "tracks": summary.tracks,
                "wall_s": summary.wall_s,
                "videos_per_s": (summary.videos_ok + summary.videos_error) / max(summary.wall_s, 1e-9),
                "faces_per_s": summary.faces / max(summary.wall_s, 1e-9)})
            run.log_dict(json.loads(storage.read_text(
                storage.join(output_uri, "runs", f"{summary.run_id}.json"))), f"runs/{summary.run_id}.json")
    except Exception as e:  # noqa: BLE001 - tracking must not fail a finished annotation
        log.warning("MLflow logging failed (%s: %s); the output is complete", type(e).__name__, e)
