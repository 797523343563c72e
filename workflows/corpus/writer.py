"""Write annotations as Parquet parts with commit semantics that keep every reader exact: after
a crash, with several runs writing to one output at once, and when a ``--force`` run is
interrupted at any moment.

**Commit.** Each flush writes ``faces/<part>`` and ``tracks/<part>`` first and
``videos/<part>`` last (``<part>`` = ``<run_id>-<seq:05d>.parquet``): a videos part is the
commit marker of its chunk. With ``output.sink=workers`` the worker that finishes a batch of
videos writes ``faces/<part>`` and ``tracks/<part>`` itself (``<run_id>-w<random>.parquet``) and
the driver, given only a status row per video, writes the videos part (:meth:`AnnotationSink.commit`);
a chunk whose rows never reached the driver stays uncommitted and is removed at the run's end
(:meth:`AnnotationSink.remove_own_uncommitted`) or, after a crash, by the next run; committed worker
chunks are merged into large ones (:meth:`AnnotationSink.compact`). Either way a videos part is the
commit marker of its chunk, and readers see only committed chunks
(:class:`~workflows.corpus.reader.AnnotationOutput`). Every write replaces one whole object
atomically (local: temporary file + rename; S3: one PUT).

**Several runs, one output.** Shards of a corpus run side by side on one output root, and a
second run may be started while the first still runs, on this machine or another. Each run holds
a lease, ``_runs/<run_id>.lease``, refreshed by its driver (:mod:`workflows.corpus.lease`: plain
object writes, no locks, so it works on S3 too), and the lease bounds what others may do:

* a faces/tracks part without its videos part is removed (:meth:`AnnotationSink.remove_orphans`)
  only when the run named by its file name has no live lease: it crashed. A live run's chunk in
  flight is left alone (before leases, a starting shard deleted the other shard's chunk in
  flight, which then committed ``ok`` rows whose faces were gone).
* the videos a run sets out to annotate are claimed; a later run leaves the ones claimed by a
  live run to it (:meth:`~workflows.corpus.lease.RunLease.claim`): the same input started twice
  is annotated once, disjoint shards both run in full, and overlapping shards share the overlap.
  Leaving them rather than refusing to start keeps the second run useful (its summary names the
  run it left them to, and how to proceed if that one died); claims only save work, exactness
  does not rest on them (see "Replacing rows" below).
* a run that could not refresh its lease for half its time to live may already count as dead to
  another run, which may have removed its uncommitted parts: it stops before its next commit
  (:class:`~workflows.corpus.lease.LeaseLost`), and takes back a commit it made while that
  happened.

**Replacing rows: nothing is deleted before its replacement is committed.** A video's current
row is its newest committed row, with that row's faces and tracks only (the reader). So
``--force`` does not delete first: it annotates again and commits like any run, and the rows
it replaced are dropped afterwards (:meth:`AnnotationSink.drop_replaced`: faces and tracks
parts first, the videos part last, each rewritten without those rows). Killed, interrupted by
Ctrl-C, a full disk or a lasting S3 error at any point, the output keeps, for every video, its
old row and faces or its new ones, never a mix; replaced rows left behind are invisible to
readers and dropped by the next run on the output. A run stamps its rows at least 1 ms after the
newest row that existed when it started (:meth:`AnnotationSink.commit_time`), so its rows
replace older ones even when its machine's clock is behind. Two runs that annotated the same
video (they started at the same moment) are resolved the same way: the later row wins.

**Damaged parts.** A chunk whose part is truncated, overwritten or disagrees with its commit
record is left out by every reader, and its videos count as not annotated
(:attr:`~workflows.corpus.reader.AnnotationOutput.damaged`), so a plain rerun annotates them
again. The videos part records each video's faces and tracks rows in its footer for that check
(``mien.part_rows``). Once no video depends on a damaged chunk any more (its videos have newer
rows), :meth:`AnnotationSink.drop_replaced` moves its files to ``_damaged/<table>/`` (out of the
way of pandas and DuckDB too, kept for a post-mortem): nothing is moved before the replacement
is committed.

**Killed writes.** Temporary files of local writes and incomplete S3 multipart uploads older
than the lease time to live are removed when a run starts
(:meth:`AnnotationSink.remove_stale_temporaries`); younger ones may be a live run's write.
"""

from __future__ import annotations

import datetime as dt
import io
import json
import logging
import time
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from workflows.core import faults, storage
from workflows.corpus import schema
from workflows.corpus.lease import LEASE_DIR, LeaseLost, RunLease, read_leases, remove_lease
from workflows.corpus.reader import DAMAGED_DIR, PART_ROWS_KEY, AnnotationOutput, run_of_part

log = logging.getLogger(__name__)
TABLE_DIRS = ("faces", "tracks", "videos")


class AnnotationSink:
    """Buffers per-video results and writes them as committed Parquet parts.

    ``lease``: the run's :class:`~workflows.corpus.lease.RunLease`, checked before and after
    every commit (``mien annotate`` always passes one; tests and benchmarks writing chunks
    directly may not)."""

    def __init__(self, output_uri: str, run_id: str, flush_every_videos: int = 64,
                 flush_every_s: float = 30.0, lease: RunLease | None = None):
        self.root = output_uri.rstrip("/")
        self.run_id = run_id
        self.flush_every_videos = flush_every_videos
        self.flush_every_s = flush_every_s
        self.lease = lease
        self._faults = faults.injected_faults("commit")
        self._floor_ms: int | None = None  # newest commit time found in the output at the start
        self._rows: dict[str, list[pa.Table]] = {k: [] for k in TABLE_DIRS}
        self._buffered_videos = 0
        self._seq = 0
        self._last_flush = time.monotonic()
        self.parts_written = 0
        self.bytes_written = 0

    # -- preparing a run --------------------------------------------------------------
    def prepare(self, temporaries_older_than_s: float) -> AnnotationOutput | None:
        """Tidy the output before this run writes (module docstring): remove what crashed runs left
        (uncommitted parts, their leases, stale temporaries) and drop replaced rows. Returns the output
        as the tidying read it (no URIs in its row index) when that rewrote and moved nothing, so the
        resume check need not read every videos part again; else None."""
        self.remove_orphans()
        self.remove_stale_temporaries(temporaries_older_than_s)
        output = AnnotationOutput(self.root, must_exist=False, row_uris=False)
        return None if self._drop_replaced(output)[1] else output

    def remove_orphans(self) -> list[str]:
        """Delete faces/tracks parts whose chunk never committed its videos part, of runs that are
        gone (no live lease), and those runs' leases. Returns the removed parts."""
        output = AnnotationOutput(self.root, must_exist=False)
        uncommitted = [uri for name in ("faces", "tracks") for uri in output.uncommitted_parts(name)]
        # Leases are read after the listing: a run writes its lease before its first part, so
        # the lease of any run whose part was listed is read too, unless that run has ended.
        leases = read_leases(self.root)
        dead = {run_id: why for run_id, rec in leases.items() if (why := rec.dead_because()) is not None}
        live = set(leases) - set(dead)
        removed, in_flight = [], []
        for uri in uncommitted:
            if run_of_part(uri) in live:
                in_flight.append(uri)
                continue
            storage.remove(uri)
            removed.append(uri)
        if removed:
            log.warning("removed %d uncommitted part(s) left by an interrupted run", len(removed))
        if in_flight:
            log.info("%d uncommitted part(s) belong to live run(s) %s: left alone", len(in_flight),
                     ", ".join(sorted({run_of_part(u) for u in in_flight})))
        for run_id, why in dead.items():  # after its parts: an interrupted clean-up is redone
            log.warning("run %s on this output is gone (%s): removing its lease", run_id, why)
            remove_lease(self.root, run_id)
        return removed

    def remove_stale_temporaries(self, older_than_s: float) -> list[str]:
        """Delete the temporary files (S3: incomplete multipart uploads) of killed writes older than
        ``older_than_s`` seconds, in the root and each folder this writer writes to."""
        removed = [t for sub in ("", *TABLE_DIRS, "runs", LEASE_DIR)
                   for t in storage.remove_stale_temporaries(storage.join(self.root, sub) if sub else self.root,
                                                             older_than_s)]
        if removed:
            log.warning("removed %d temporary file(s) of killed writes: %s", len(removed), ", ".join(removed))
        return removed

    def drop_replaced(self) -> int:
        """Rewrite the parts holding ``ok`` rows a newer row of the same video replaced (a
        ``--force`` rerun, overlapping runs) without those rows and their faces and tracks.

        Readers skip those rows already, so this only makes the files exact for readers that
        bypass mien (pandas, DuckDB): faces and tracks parts go first and the videos part last,
        and a replaced row stays replaced, so stopping anywhere loses nothing. Runs rewriting one
        part at once can at worst bring back replaced rows, which the next run drops again.
        Damaged chunks are not rewritten: once no video depends on one, its files move to
        ``_damaged/`` (:meth:`set_aside_damaged`). Returns the number of videos rows dropped."""
        return self._drop_replaced(AnnotationOutput(self.root, must_exist=False, row_uris=False))[0]

    def _drop_replaced(self, output: AnnotationOutput) -> tuple[int, int]:
        """:meth:`drop_replaced` on ``output`` as read: the videos rows dropped, and the files rewritten,
        removed or moved (0: the output is as it was read)."""
        self._floor_ms = output.latest_finished_ms()
        dropped = changed = 0
        for part, rows in sorted(output.replaced_ok_rows().items()):
            for name in TABLE_DIRS:  # videos last
                uri = storage.join(self.root, name, part)
                fs, path = storage.filesystem(uri)
                try:
                    t = storage.with_retries(pq.read_table)(path, filesystem=fs)
                except FileNotFoundError:
                    continue
                pairs = zip(t.column("video_id").to_pylist(), t.column("run_id").to_pylist(), strict=True)
                keep = [p not in rows for p in pairs]
                if all(keep):
                    continue
                if name == "videos" and not any(keep):  # nothing current left: the chunk goes, commit marker first
                    for gone in ("videos", "faces", "tracks"):
                        storage.remove(storage.join(self.root, gone, part))
                else:
                    self._write_table(uri, t.filter(pa.array(keep, pa.bool_())))
                changed += 1
                dropped += keep.count(False) if name == "videos" else 0
        if dropped:
            log.info("dropped %d replaced videos row(s) with their faces and tracks", dropped)
        return dropped, changed + len(self.set_aside_damaged(output))

    def set_aside_damaged(self, output: AnnotationOutput) -> list[str]:
        """Move the files of every damaged chunk of ``output`` that no video depends on any more
        to ``_damaged/<table>/<part>.damaged``; returns the moved parts.

        Faces and tracks go first and the videos part last, so an interrupted move leaves a chunk
        that is still left out or already sound, and the next run finishes it."""
        moved = []
        for part, waiting in sorted(output.damaged_chunks().items()):
            if waiting:
                continue
            for name in TABLE_DIRS:  # videos last
                src = storage.join(self.root, name, part)
                if not storage.exists(src):
                    continue
                aside = storage.join(self.root, DAMAGED_DIR, name)
                storage.makedirs(aside)
                fs, path = storage.filesystem(src)
                storage.with_retries(fs.mv)(path, storage.filesystem(storage.join(aside, f"{part}.damaged"))[1])
                moved.append(src)
        if moved:
            log.warning("moved %d part(s) of damaged chunk(s) no video depends on any more to %s: %s",
                        len(moved), storage.join(self.root, DAMAGED_DIR), ", ".join(moved))
        return moved

    def done_video_ids(self) -> set[str]:
        """Videos whose current row is ``ok``: a rerun skips them (resume)."""
        return set(AnnotationOutput(self.root, must_exist=False).committed_videos()["video_id"])

    def commit_time(self) -> dt.datetime:
        """``finished_at`` for a row of this run: now, but never before 1 ms after the newest row
        the output held when the run started (:meth:`drop_replaced` reads it), so that this run's
        rows are the newest of their videos (module docstring)."""
        now = dt.datetime.now(dt.UTC)
        if self._floor_ms is None:
            return now
        return max(now, dt.datetime.fromtimestamp((self._floor_ms + 1) / 1000, dt.UTC))

    # -- writing ----------------------------------------------------------------------
    def add(self, videos: pa.Table, faces: pa.Table, tracks: pa.Table, n_videos: int) -> None:
        self._rows["videos"].append(videos)
        self._rows["faces"].append(faces)
        self._rows["tracks"].append(tracks)
        self._buffered_videos += n_videos
        if (self._buffered_videos >= self.flush_every_videos
                or time.monotonic() - self._last_flush >= self.flush_every_s):
            self.flush()

    def flush(self) -> None:
        if not self._buffered_videos:
            return
        part = f"{self.run_id}-{self._seq:05d}.parquet"
        tables = {name: pa.concat_tables(self._rows[name]) if self._rows[name] else schema.TABLES[name].empty_table()
                  for name in TABLE_DIRS}
        for name in ("faces", "tracks"):
            self._write_table(storage.join(self.root, name, part), tables[name])
        self.commit(part, tables["videos"], {name: _rows_per_video(tables[name]) for name in ("faces", "tracks")})
        self._rows = {k: [] for k in TABLE_DIRS}
        self._seq += 1
        self._buffered_videos = 0
        self._last_flush = time.monotonic()

    def commit(self, part: str, videos: pa.Table, record: dict[str, dict[str, int]]) -> None:
        """Commit the chunk ``part`` whose faces and tracks parts are written (by :meth:`flush`, or by
        the workers themselves with ``output.sink=workers``): write its videos part, with ``record``
        (each video's faces and tracks rows; readers check the parts against it from their footers,
        workflows.corpus.reader) in its footer."""
        videos = videos.replace_schema_metadata(
            {**(videos.schema.metadata or {}), PART_ROWS_KEY: json.dumps(record, sort_keys=True).encode()})
        for uri in videos.column("video_uri").to_pylist():
            faults.exit_if_injected(self._faults, str(uri))
            faults.pause_if_injected(self._faults, str(uri))
        commit = storage.join(self.root, "videos", part)
        if self.lease is not None:
            self.lease.check()
        self._write_table(commit, videos)  # the commit
        if self.lease is not None:
            try:
                self.lease.check()
            except LeaseLost:  # it may have been taken for dead while committing
                storage.remove(commit)
                raise
        self.parts_written += 1

    def compact(self, parts: list[str], merged: str, merge: Any = None) -> None:
        """Replace this run's committed chunks ``parts`` (one per worker batch with
        ``output.sink=workers``) by one chunk ``merged``, so the output keeps few large parts.

        ``merge`` (:func:`merge_chunks`, or the same run where the data is, e.g. a Ray task) writes the
        merged faces and tracks parts and returns the merged videos rows, each 1 ms newer than the row
        it copies; they are committed here (lease checked), which makes the originals replaced rows,
        invisible to every reader. Then each original's videos part is deleted (its commit marker:
        nothing current is in it any more) and its faces and tracks parts, now uncommitted parts of
        this run. Stopped anywhere, every video has exactly one current row with its faces."""
        videos, record = (merge or merge_chunks)(self.root, parts, merged)
        self.commit(merged, videos, record)
        for part in parts:
            for name in ("videos", "faces", "tracks"):
                storage.remove(storage.join(self.root, name, part))

    def remove_own_uncommitted(self) -> list[str]:
        """Delete this run's faces/tracks parts that no videos part commits: chunks workers wrote for
        videos whose rows never reached the driver (a worker killed after writing, a batch run twice
        after a node loss), once this run has committed everything it will."""
        output = AnnotationOutput(self.root, must_exist=False)
        mine = [uri for name in ("faces", "tracks") for uri in output.uncommitted_parts(name)
                if run_of_part(uri) == self.run_id]
        for uri in mine:
            storage.remove(uri)
        if mine:
            log.info("removed %d part(s) of this run that were written but never committed", len(mine))
        return mine

    def _write_table(self, uri: str, t: pa.Table) -> None:
        self.bytes_written += write_part(uri, t)


def merge_chunks(root: str, parts: list[str], merged: str) -> tuple[pa.Table, dict[str, dict[str, int]]]:
    """Write the faces and tracks of the chunks ``parts`` of ``root`` as the parts ``merged``; return
    their videos rows (``finished_at`` 1 ms later: they replace the originals) and the commit record.
    Faces and tracks are read and written as whole Parquet tables, never row by row."""
    tables: dict[str, list[pa.Table]] = {name: [] for name in TABLE_DIRS}
    for part in parts:
        for name in TABLE_DIRS:
            fs, path = storage.filesystem(storage.join(root, name, part))
            t = storage.with_retries(pq.read_table)(path, filesystem=fs).replace_schema_metadata(None)
            tables[name].append(t.cast(schema.TABLES[name]) if t.schema != schema.TABLES[name] else t)
    merged_tables = {name: pa.concat_tables(ts) for name, ts in tables.items()}
    for name in ("faces", "tracks"):
        write_part(storage.join(root, name, merged), merged_tables[name])
    videos = merged_tables["videos"]
    later = pa.array([None if t is None else t + dt.timedelta(milliseconds=1)
                      for t in videos.column("finished_at").to_pylist()], videos.schema.field("finished_at").type)
    videos = videos.set_column(videos.schema.get_field_index("finished_at"), "finished_at", later)
    return videos, {name: _rows_per_video(merged_tables[name]) for name in ("faces", "tracks")}


def write_part(uri: str, t: pa.Table) -> int:
    """Write ``t`` as one Parquet part at ``uri`` (one whole-object write); returns its bytes."""
    buf = io.BytesIO()
    pq.write_table(t, buf, compression="zstd")
    data = buf.getvalue()
    storage.write_bytes(uri, data)
    return len(data)


def _rows_per_video(t: pa.Table) -> dict[str, int]:
    counts = t.column("video_id").value_counts()
    return {str(v): int(n) for v, n in zip(counts.field("values").to_pylist(), counts.field("counts").to_pylist(),
                                           strict=True)}
