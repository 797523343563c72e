"""``mien forget``: remove every row of some videos from an annotate output, and keep them out.

A request names videos by ``video_id`` or by URI; a video id stands for its URI too (every video
at that URI is forgotten, and a new file there is not annotated). What it does, in this order:

1. **Deny first.** The videos go on the output's own deny-list (``_privacy/forgotten.jsonl``,
   :mod:`workflows.corpus.privacy`) before anything is removed, under a lease of its own
   (``_runs/<id>.lease``): no later ``mien annotate`` brings them back, and a rerun of an
   interrupted forget finishes it. Then the leases are read: while another live run writes to the
   output, forget stops there (:class:`ForgetRefused`) — that run may have read the deny-list
   before it changed, and its rewrites could bring rows back.
2. **Replace.** One committed chunk of this forget run gives each video a newer ``error`` row
   (``error_kind`` ``forgotten``, no URI, no faces): every older row of those videos is now a
   replaced row, which every reader skips, so nothing of them shows from here on, in one atomic
   write. (Uncommitted parts of runs that are gone are removed first, as ``mien annotate`` does.)
3. **Run records.** The entries naming the videos' URIs leave ``runs/*.json`` (``errors``,
   ``rejected``, a single-file ``input``), while their rows still name the URIs for a rerun.
4. **Drop.** Every part holding their rows is rewritten without them, as the writer drops replaced
   rows: faces and tracks first, the videos part last, its commit record (``mien.part_rows``)
   without those videos. A chunk's faces part then always holds between what its current rows
   and what its whole record count, so no reader ever sees a damaged chunk, and no current row
   loses its faces (:func:`workflows.corpus.reader._count_problem`). A chunk left empty is
   deleted (faces and tracks first). Damaged chunks and ``_damaged/`` copies are rewritten the
   same way; a part of theirs that cannot be read is deleted when a readable part of its chunk
   names one of the videos, and reported otherwise (mien cannot tell what it holds).
5. **Close.** The chunk of step 2 is deleted (faces and tracks first).

Stopped anywhere, the output stays exact for every reader: before 2 it is untouched, from 2 on
the videos read as ``forgotten`` errors until the rerun ends, and every other video keeps its
rows. What forget cannot reach: MLflow's copies of the run records, exports and reports made
before, object versions kept by a versioned bucket (``docs/OUTPUT.md``, "What is stored").
"""

from __future__ import annotations

import collections
import dataclasses
import datetime as dt
import io
import json
import uuid
from collections.abc import Iterable
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from workflows.core import storage
from workflows.corpus import schema
from workflows.corpus.lease import RunLease, read_leases
from workflows.corpus.privacy import forgotten_uri, normalize_uri, record_forgotten
from workflows.corpus.reader import (
    DAMAGED_DIR,
    PART_ROWS_KEY,
    AnnotationOutput,
    OutputError,
    _bad_bytes,
    list_parts,
)
from workflows.corpus.writer import TABLE_DIRS, AnnotationSink

FORGOTTEN_KIND = "forgotten"
PLACEHOLDER = "(forgotten)"  # what replaces a run record's string naming a forgotten video
PASSES = 3  # drop passes before giving up on rows that keep coming back (another process rewriting)


class ForgetRefused(OutputError):
    """Another live run writes to the output; the message names it and what to do."""


@dataclasses.dataclass
class ForgetReport:
    """What :func:`forget` did; :meth:`render` is what ``mien forget`` prints."""

    root: str
    run_id: str
    video_ids: list[str] = dataclasses.field(default_factory=list)  # the videos found and forgotten
    unknown: list[str] = dataclasses.field(default_factory=list)  # requested ids/URIs without any row
    denied_added: int = 0  # lines added to the output's deny-list
    removed: dict[str, int] = dataclasses.field(default_factory=lambda: dict.fromkeys(TABLE_DIRS, 0))
    parts_rewritten: int = 0
    parts_deleted: int = 0
    damaged_files: int = 0  # _damaged/ copies rewritten or deleted
    run_entries: int = 0  # entries removed or blanked in runs/*.json
    unreadable: list[str] = dataclasses.field(default_factory=list)  # may hold rows; could not be read
    overlapping: list[str] = dataclasses.field(default_factory=list)  # runs that started while forgetting

    def render(self) -> str:
        lines = []
        if self.video_ids:
            r = self.removed
            lines.append(f"forgot {len(self.video_ids)} video(s) in {self.root}: {', '.join(self.video_ids)}")
            lines.append(f"  removed: videos {r['videos']} row(s), faces {r['faces']}, tracks {r['tracks']} "
                         f"({self.parts_rewritten} part(s) rewritten, {self.parts_deleted} deleted); "
                         f"{DAMAGED_DIR}/ {self.damaged_files} file(s); runs/*.json {self.run_entries} entries")
        for key in self.unknown:
            lines.append(f"no rows of {key} in {self.root}: nothing to remove")
        lines.append(f"deny-list: {forgotten_uri(self.root)} "
                     f"({self.denied_added} new line(s)); `mien annotate` on this output skips these videos")
        for uri in self.unreadable:
            lines.append(f"  cannot read {uri}: it may hold rows of these videos; it is damaged and of no use "
                         f"to mien: delete it")
        for run in self.overlapping:
            lines.append(f"{run} started on this output while forgetting; once it has ended, rerun this "
                         f"command to make sure none of the rows came back")
        lines.append("not reached: MLflow's copies of the run records, exports and reports made before, and "
                     "object versions a versioned bucket keeps (docs/OUTPUT.md, \"What is stored\")")
        return "\n".join(lines)


def new_forget_id() -> str:
    """A run id for a forget: sorted by start time with the annotate runs' ids."""
    return dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ") + "-forget" + uuid.uuid4().hex[:8]


def forget(output_uri: str, video_ids: Iterable[str] = (), video_uris: Iterable[str] = (),
           lease_ttl_s: float = 120.0) -> ForgetReport:
    """Forget the videos named by ``video_ids`` and ``video_uris`` in the output at ``output_uri``
    (module docstring). Raises :class:`ForgetRefused` while another live run writes to it, and
    OutputError when it is not an annotate output."""
    root = storage.absolute(output_uri).rstrip("/")
    AnnotationOutput(root)  # an annotate output, or OutputError naming what it is
    report = ForgetReport(root, new_forget_id())
    ids, uris = list(dict.fromkeys(video_ids)), list(dict.fromkeys(normalize_uri(u) for u in video_uris))
    with RunLease(root, report.run_id, lease_ttl_s, input_uri="mien forget") as lease:
        targets, found = _resolve(root, ids, uris)
        report.video_ids = sorted(targets)
        named = {u for us in found.values() for u in us}  # every URI the targets' rows name
        report.unknown = [i for i in ids if i not in targets] + [u for u in uris if u not in named]
        report.denied_added = record_forgotten(root, [*((v, u) for v in sorted(targets)
                                                        for u in (sorted(found[v]) if v in found else [None])),
                                                      *((i, None) for i in ids if i not in targets),
                                                      *((None, u) for u in uris if u not in named)])
        others = _other_live_runs(root, report.run_id)
        if others:
            raise ForgetRefused(
                f"{'; '.join(others)} {'is' if len(others) == 1 else 'are'} writing to {root} now, and forgetting "
                "while another run rewrites parts could bring rows back. The videos are on the output's deny-list "
                "already (no run started from now on annotates them); once that run has ended (or been stopped), "
                "rerun this command to remove their rows")
        sink = AnnotationSink(root, report.run_id, lease=lease)
        sink.remove_orphans()  # parts interrupted runs (a forget too) never committed: as annotate does
        if targets:
            _replace(sink, targets)
            # While rows still name the URIs: a rerun after an interruption still knows them.
            report.run_entries = _scrub_run_records(root, named | set(uris))
            for _ in range(PASSES):
                if not _drop(root, report, targets, {f"{report.run_id}-00000.parquet"}):
                    break
            else:
                raise OSError(f"rows of {', '.join(sorted(targets))} keep reappearing in {root}: another process is "
                              "rewriting its parts; rerun this command when it is alone on the output")
            _delete_chunk(root, f"{report.run_id}-00000.parquet", report, count=False)
        else:
            report.run_entries = _scrub_run_records(root, set(uris))
        report.overlapping = _other_live_runs(root, report.run_id)
    return report


def _resolve(root: str, ids: list[str], uris: list[str]) -> tuple[set[str], dict[str, set[str]]]:
    """The videos to forget and ``video_id -> URIs`` their rows name (all of them: rows written by
    other tools may disagree), from every
    readable videos part and ``_damaged/`` copy: the ids given, every video at a URI given or of
    an id given, and the videos of an interrupted forget (their ``forgotten`` rows)."""
    pairs: set[tuple[str, str | None]] = set()
    left: set[str] = set()
    for uri in [*list_parts(root, "videos"), *_damaged_files(root, "videos")]:
        try:
            t = _read(uri, ["video_id", "video_uri", "error_kind"])
        except Exception as e:  # noqa: BLE001 - an unreadable part is handled where rows are dropped
            if not _bad_bytes(e):
                raise
            continue
        pairs |= set(zip(t.column("video_id").to_pylist(), t.column("video_uri").to_pylist(), strict=True))
        left |= set(t.filter(pc.equal(t.column("error_kind"), FORGOTTEN_KIND)).column("video_id").to_pylist())
    wanted_uris = set(uris) | {u for v, u in pairs if v in ids and u is not None}
    targets = {v for v, u in pairs if v in ids or u in wanted_uris} | left
    found: dict[str, set[str]] = {}
    for v, u in pairs:
        if v in targets and u is not None:
            found.setdefault(v, set()).add(u)
    return targets, found


def _other_live_runs(root: str, run_id: str) -> list[str]:
    return [rec.describe() for rid, rec in sorted(read_leases(root).items())
            if rid != run_id and rec.dead_because() is None]


def _replace(sink: AnnotationSink, targets: set[str]) -> None:
    """Step 2: commit one chunk with a newer ``forgotten`` error row for each target."""
    latest = AnnotationOutput(sink.root).latest_finished_ms()
    now = dt.datetime.now(dt.UTC)
    stamp = now if latest is None else max(now, dt.datetime.fromtimestamp((latest + 1) / 1000, dt.UTC))
    rows = [{"video_id": v, "video_uri": None, "status": "error", "error_kind": FORGOTTEN_KIND,
             "error": f"being removed by `mien forget` (run {sink.run_id}); if that was interrupted, run it again",
             "n_frames": 0, "n_faces": 0, "n_tracks": 0, "run_id": sink.run_id, "finished_at": stamp}
            for v in sorted(targets)]
    sink.add(schema.table("videos", rows), schema.FACES.empty_table(), schema.TRACKS.empty_table(), len(rows))
    sink.flush()


def _damaged_files(root: str, name: str) -> list[str]:
    try:
        return storage.list_files(storage.join(root, DAMAGED_DIR, name))
    except FileNotFoundError:
        return []


def _read(uri: str, columns: list[str] | None = None) -> pa.Table:
    fs, path = storage.filesystem(uri)
    return storage.with_retries(pq.read_table)(path, filesystem=fs, columns=columns)


def _chunks(root: str) -> dict[tuple[str, str], dict[str, str]]:
    """``(where, part) -> {table: uri}`` of every part file: ``where`` is ``""`` for the live
    folders and ``_damaged`` for the copies there (named ``<part>.damaged``)."""
    chunks: dict[tuple[str, str], dict[str, str]] = collections.defaultdict(dict)
    for name in TABLE_DIRS:
        for uri in list_parts(root, name):
            chunks[("", uri.rsplit("/", 1)[-1])][name] = uri
        for uri in _damaged_files(root, name):
            chunks[(DAMAGED_DIR, uri.rsplit("/", 1)[-1].removesuffix(".damaged"))][name] = uri
    return chunks


def _drop(root: str, report: ForgetReport, targets: set[str], skip: set[str]) -> bool:
    """Step 4 over every chunk but ``skip``; True when it found rows of ``targets`` to drop. Only
    the ``video_id`` column and the commit record of every part are read; a part is read whole
    (faces carry crops) only when it is rewritten."""
    value_set = pa.array(sorted(targets), pa.string())
    found = False
    for (where, part), files in sorted(_chunks(root).items()):
        if part in skip and not where:
            continue
        held: dict[str, bool | None] = {}  # table -> whether its part holds rows of targets; None: unreadable
        record: dict[str, dict[str, int]] = {}
        for name, uri in files.items():
            try:
                t = _read(uri, ["video_id"])
            except Exception as e:  # noqa: BLE001 - bad bytes: decided below, with the chunk
                if not _bad_bytes(e):
                    raise
                held[name] = None
                continue
            held[name] = bool(pc.any(pc.is_in(t.column("video_id"), value_set)).as_py())
            if name == "videos":
                record = json.loads((t.schema.metadata or {}).get(PART_ROWS_KEY) or b"{}")
        in_record = bool(targets & {v for counts in record.values() for v in counts})
        if not (in_record or any(held.values())):
            if held.get("videos") is None and None in held.values():  # nothing readable says what it holds
                report.unreadable += [files[n] for n, h in held.items() if h is None]
            continue
        found = True
        if not where and held.get("videos", False) is None:
            # A damaged chunk whose commit record is unreadable: of no use to any reader (its videos
            # are annotated again by the next run), and its parts name these videos: all of it goes.
            _delete_chunk(root, part, report, count=True)
            continue
        rows_left = 0
        for name in TABLE_DIRS:  # faces and tracks first, the videos part last
            if name not in files:
                continue
            if held[name] is None:  # cannot be rewritten, and a readable part of its chunk names these videos
                storage.remove(files[name])
                report.damaged_files += 1 if where else 0
                report.parts_deleted += 0 if where else 1
                continue
            if not held[name] and not (name == "videos" and in_record):
                rows_left += _rows(files[name])
                continue  # nothing of these videos in this part
            t = _read(files[name])
            kept = t.filter(pc.invert(pc.is_in(t.column("video_id"), value_set)))
            rows_left += kept.num_rows
            if name == "videos" and record:
                kept = kept.replace_schema_metadata({**(t.schema.metadata or {}), PART_ROWS_KEY: json.dumps(
                    {k: {v: n for v, n in counts.items() if v not in targets} for k, counts in record.items()},
                    sort_keys=True).encode()})
            if where:  # a copy kept for a post-mortem: rewritten, or deleted once nothing is left
                if kept.num_rows:
                    _write(files[name], kept)
                else:
                    storage.remove(files[name])
                report.damaged_files += 1
                continue
            _write(files[name], kept)
            report.removed[name] += t.num_rows - kept.num_rows
            report.parts_rewritten += 1
        if not where and "videos" in files and rows_left == 0:
            _delete_chunk(root, part, report, count=True)
    return found


def _rows(uri: str) -> int:
    fs, path = storage.filesystem(uri)
    return storage.with_retries(pq.read_metadata)(path, filesystem=fs).num_rows


def _delete_chunk(root: str, part: str, report: ForgetReport, *, count: bool) -> None:
    """Delete a chunk without rows: faces and tracks first, its videos part (the commit) last."""
    for name in TABLE_DIRS:
        uri = storage.join(root, name, part)
        if storage.exists(uri):
            storage.remove(uri)
            if count:
                report.parts_deleted += 1


def _write(uri: str, t: pa.Table) -> None:
    buf = io.BytesIO()
    pq.write_table(t, buf, compression="zstd")
    storage.write_bytes(uri, buf.getvalue())


def _scrub_run_records(root: str, needles: set[str]) -> int:
    """Step 3: remove the entries of ``runs/*.json`` that name a forgotten video's URI (list
    items: ``errors``, ``rejected``; other strings, like a single-file ``input``, become
    :data:`PLACEHOLDER`). Returns how many entries changed. Its id stays where a user put it (a
    configured deny-list): an id reveals nothing without the file."""
    try:
        uris = storage.list_files(storage.join(root, "runs"), (".json",))
    except FileNotFoundError:
        return 0
    changed = 0
    for uri in uris:
        try:
            doc = json.loads(storage.read_text(uri))
        except ValueError:
            continue  # not a run record mien can read (`mien inspect --check` names it)
        scrubbed, n = _scrub(doc, needles)
        if n:
            storage.write_text(uri, json.dumps(scrubbed, indent=2))
            changed += n
    return changed


def _scrub(value: Any, needles: set[str]) -> tuple[Any, int]:
    if isinstance(value, str):
        return (PLACEHOLDER, 1) if value in needles else (value, 0)
    if isinstance(value, list):
        kept, n = [], 0
        for item in value:
            if isinstance(item, str) and item in needles or isinstance(item, dict) and any(
                    isinstance(v, str) and v in needles for v in item.values()):
                n += 1  # an entry about a forgotten video
                continue
            item, k = _scrub(item, needles)
            kept.append(item)
            n += k
        return kept, n
    if isinstance(value, dict):
        out, n = {}, 0
        for key, item in value.items():
            out[key], k = _scrub(item, needles)
            n += k
        return out, n
    return value, 0

