"""The work of one ``mien annotate`` run, planned in one streamed pass over its input.

A corpus of millions of videos is never held as objects on the driver: the input is read a
batch of manifest lines (or listing entries) at a time (:func:`workflows.annotate.ingest.iter_discover`),
each source is checked against the output (resume: ``ok`` rows and errors of the file itself),
the deny-list and ``--limit``, and the ones to do are appended to a local Arrow IPC file (a few
hundred bytes a video on disk). The run then reads them back :meth:`Plan.chunks` at a time, each
chunk dispatched largest file first (:func:`largest_first`), so the driver holds one chunk of
sources, never the corpus. What stays in memory grows only slowly with the corpus: a hash per
manifest entry (duplicates) and the output's done ``video_id`` set (resume), tens of bytes a
video (measured in ``bench/bench_plan.py``, docs/SCALING.md).

The counts a run reports (found, already done, not retried, denied) are complete when the pass
ends, before anything runs, so progress shows ``done / total`` and the executor is chosen on the
true number of videos to do.
"""

from __future__ import annotations

import collections
import dataclasses
import os
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import pyarrow as pa

from workflows.annotate.ingest import VideoSource

# Sources written to the plan file per record batch.
SPILL_BATCH = 4096
SPILL_SCHEMA = pa.schema([
    ("video_id", pa.string()), ("uri", pa.string()), ("size", pa.int64()), ("fingerprint", pa.string()),
    ("meta", pa.map_(pa.string(), pa.string())),
])


def largest_first(sources: Iterable[Any]) -> list[Any]:
    """Dispatch order: largest file first, unknown sizes last, listing order among equals.

    Actors take videos in this order, so a long video listed last would otherwise run alone at
    the end of the job while every other actor idles (`bench/bench_order.py` measures it). File
    size stands in for decode+face work, which grows with duration."""
    return sorted(sources, key=lambda s: -(s.size or 0))


@dataclasses.dataclass
class PlanCounts:
    """What the pass found: ``total`` sources (after ``--limit``), of which ``skipped`` are done,
    ``settled`` are errors of the file itself not retried (kind -> videos), ``denied`` are on the
    deny-list, and ``todo`` are to annotate."""

    total: int = 0
    skipped: int = 0
    settled: collections.Counter[str] = dataclasses.field(default_factory=collections.Counter)
    denied: int = 0
    todo: int = 0


class Plan:
    """The sources a run annotates, spilled to ``path`` (build with :meth:`build`)."""

    def __init__(self, path: str, counts: PlanCounts):
        self.path = path
        self.counts = counts

    @classmethod
    def build(cls, sources: Iterable[VideoSource], directory: str, *, done: set[str] | frozenset[str] = frozenset(),
              settled: dict[str, str] | None = None, denied: Callable[[VideoSource], bool] | None = None,
              limit: int | None = None) -> Plan:
        """Stream ``sources`` once into ``directory``/plan.arrow: the first ``limit`` are counted,
        and those neither ``done``, ``settled`` (video_id -> error kind) nor ``denied`` are kept."""
        settled = settled or {}
        counts = PlanCounts()
        path = os.path.join(directory, "plan.arrow")
        batch: list[VideoSource] = []
        with pa.OSFile(path, "wb") as sink, pa.ipc.new_file(sink, SPILL_SCHEMA) as writer:
            for s in sources:
                if limit is not None and counts.total >= limit:
                    break
                counts.total += 1
                if s.video_id in done:
                    counts.skipped += 1
                elif s.video_id in settled:
                    counts.settled[settled[s.video_id]] += 1
                elif denied is not None and denied(s):
                    counts.denied += 1
                else:
                    counts.todo += 1
                    batch.append(s)
                    if len(batch) >= SPILL_BATCH:
                        writer.write_batch(_to_batch(batch))
                        batch = []
            if batch:
                writer.write_batch(_to_batch(batch))
        return cls(path, counts)

    def chunks(self, size: int) -> Iterator[list[VideoSource]]:
        """The planned sources, ``size`` at a time, in input order; each chunk largest first."""
        chunk: list[VideoSource] = []
        with pa.memory_map(self.path) as source:
            reader = pa.ipc.open_file(source)
            for i in range(reader.num_record_batches):
                for row in reader.get_batch(i).to_pylist():
                    meta = tuple(row["meta"]) if row["meta"] is not None else None
                    chunk.append(VideoSource(row["video_id"], row["uri"], row["size"], row["fingerprint"], meta))
                    if len(chunk) >= size:
                        yield largest_first(chunk)
                        chunk = []
        if chunk:
            yield largest_first(chunk)


def _to_batch(sources: list[VideoSource]) -> pa.RecordBatch:
    return pa.RecordBatch.from_pydict({
        "video_id": [s.video_id for s in sources], "uri": [s.uri for s in sources],
        "size": [s.size for s in sources], "fingerprint": [s.fingerprint for s in sources],
        "meta": [list(s.meta) if s.meta is not None else None for s in sources]}, schema=SPILL_SCHEMA)
