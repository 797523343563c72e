"""The work of one ``mien annotate`` run, planned in one streamed pass over its input.

A corpus of millions of videos is never held as objects on the driver: the input is read a
batch of manifest lines (or listing entries) at a time (:func:`workflows.annotate.ingest.iter_discover`),
each source is checked against the output (resume: ``ok`` rows and errors of the file itself),
the deny-list and ``--limit``, and the ones to do are appended to a local Arrow IPC file (a few
hundred bytes a video on disk). The run then reads them back :meth:`Plan.chunks` at a time, each
chunk dispatched largest file first (:func:`largest_first`), so the driver holds one chunk of
sources, never the corpus. What stays in memory grows only slowly with the corpus: a hash per
manifest entry (duplicates) and, for resume, a 16-byte key per video the output already settles
(:class:`Resume`; the output's row index it comes from is released before the pass). Measured in
``bench/bench_plan.py``, docs/SCALING.md.

The counts a run reports (found, already done, not retried, denied) are complete when the pass
ends, before anything runs, so progress shows ``done / total`` and the executor is chosen on the
true number of videos to do.
"""

from __future__ import annotations

import collections
import dataclasses
import os
from collections.abc import Callable, Collection, Iterable, Iterator
from typing import Any

import numpy as np
import pyarrow as pa

from workflows.annotate.ingest import VideoSource
from workflows.corpus.reader import AnnotationOutput, video_keys

# Sources checked against the output and written to the plan file per record batch.
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


@dataclasses.dataclass
class Resume:
    """The videos a rerun leaves out, as sorted 128-bit BLAKE2b keys of their ids (16 bytes a
    video, where a Python set of ``str`` took ~110): ``done`` holds the committed ``ok`` videos,
    ``errors`` those whose current row is a settled error, ``codes[i]`` the kind of ``errors[i]``
    (``kinds[codes[i] - 1]``). Each batch of sources is looked up at once (:meth:`lookup`, a binary
    search). The keys of done videos are sorted in place: building them holds nothing else.

    Two distinct ids share a key with probability 2^-128: over 10^7 committed videos and 10^7
    sources, the chance that any source is taken for a done video is ~10^14 / 2^128 ~ 3e-25 (a
    skipped video would never be annotated, so a 64-bit key, ~5e-6, would not do)."""

    DONE = 0

    done: np.ndarray  # dtype S16, sorted
    errors: np.ndarray  # dtype S16, sorted
    codes: np.ndarray  # int16, in the order of errors
    kinds: tuple[str, ...]

    @classmethod
    def read(cls, output_uri: str, settled_kinds: Collection[str], output: AnnotationOutput | None = None) -> Resume:
        """What a rerun on ``output_uri`` leaves out: its committed videos, and those whose current
        row is an error of a kind in ``settled_kinds`` ("" when none was recorded). ``output``: the
        output already read (``sink.prepare()``'s, when it changed nothing), else it is read here.

        The output's row index (:class:`~workflows.corpus.reader.AnnotationOutput`) is gone when this
        returns (unless the caller holds ``output``), and the pages Arrow's pool kept from its thousands
        of small reads go back to the OS: the pass that follows holds the keys alone."""
        if output is None:
            output = AnnotationOutput(output_uri, must_exist=False, row_uris=False)
        resume = cls._of(output.current_states(), settled_kinds)
        del output
        pa.default_memory_pool().release_unused()
        return resume

    @classmethod
    def _of(cls, states: tuple[int, Iterable[pa.Table]], settled_kinds: Collection[str]) -> Resume:
        """From :meth:`~workflows.corpus.reader.AnnotationOutput.current_states`: the done videos' keys
        written into one array as the tables come, a batch of Python strings at a time."""
        rows, batches = states
        settled = set(settled_kinds)
        codes_of: dict[str, int] = {}  # error kind -> its code, in order of appearance
        done = np.empty(rows, "S16")
        n_done = 0
        errors: list[str] = []
        codes: list[int] = []
        for batch in batches:
            ok = []
            for video_id, status, kind in zip(*(batch.column(c).to_pylist() for c in batch.column_names),
                                              strict=True):
                if status == "ok":
                    ok.append(video_id)
                elif (kind or "") in settled:
                    errors.append(video_id)
                    codes.append(codes_of.setdefault(kind or "", len(codes_of) + 1))
            done[n_done:n_done + len(ok)] = video_keys(ok)
            n_done += len(ok)
        done = done[:n_done]
        done.sort()
        error_keys = video_keys(errors)
        order = np.argsort(error_keys, kind="stable")
        return cls(done, error_keys[order], np.array(codes, np.int16)[order], tuple(codes_of))

    def lookup(self, video_ids: list[str]) -> np.ndarray:
        """Per id: -1 when the output does not settle it, else its code (``DONE``, or an error's)."""
        found = np.full(len(video_ids), -1, np.int16)
        if not video_ids or not (len(self.done) or len(self.errors)):
            return found
        keys = video_keys(video_ids)
        for sorted_keys, codes in ((self.errors, self.codes), (self.done, None)):
            if len(sorted_keys):
                at = np.minimum(np.searchsorted(sorted_keys, keys), len(sorted_keys) - 1)
                hit = sorted_keys[at] == keys
                found[hit] = self.DONE if codes is None else codes[at[hit]]
        return found


class Plan:
    """The sources a run annotates, spilled to ``path`` (build with :meth:`build`)."""

    def __init__(self, path: str, counts: PlanCounts):
        self.path = path
        self.counts = counts

    @classmethod
    def build(cls, sources: Iterable[VideoSource], directory: str, *, resume: Resume | None = None,
              denied: Callable[[VideoSource], bool] | None = None, limit: int | None = None) -> Plan:
        """Stream ``sources`` once into ``directory``/plan.arrow: the first ``limit`` are counted,
        and those neither left out by ``resume`` (done, or a settled error) nor ``denied`` are kept."""
        counts = PlanCounts()
        kinds = resume.kinds if resume is not None else ()
        path = os.path.join(directory, "plan.arrow")
        batch: list[VideoSource] = []
        with pa.OSFile(path, "wb") as sink, pa.ipc.new_file(sink, SPILL_SCHEMA) as writer:
            def check() -> None:
                codes = resume.lookup([s.video_id for s in batch]) if resume is not None else [-1] * len(batch)
                todo = []
                for s, code in zip(batch, codes, strict=True):
                    if code == Resume.DONE:
                        counts.skipped += 1
                    elif code > 0:
                        counts.settled[kinds[code - 1]] += 1
                    elif denied is not None and denied(s):
                        counts.denied += 1
                    else:
                        todo.append(s)
                counts.todo += len(todo)
                if todo:
                    writer.write_batch(_to_batch(todo))
                batch.clear()

            for s in sources:
                if limit is not None and counts.total >= limit:
                    break
                counts.total += 1
                batch.append(s)
                if len(batch) >= SPILL_BATCH:
                    check()
            check()
        return cls(path, counts)

    def chunks(self, size: int) -> Iterator[list[VideoSource]]:
        """The planned sources, ``size`` at a time, in input order; each chunk largest first."""
        chunk: list[VideoSource] = []
        # Read, not memory-mapped: the pages of a mapped plan count in the driver's RSS until the
        # pass ends (~150 bytes a video), where a read batch is freed with its chunk.
        with pa.OSFile(self.path) as source:
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
