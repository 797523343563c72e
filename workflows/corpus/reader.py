"""Read an annotate output root: ``videos/``, ``faces/``, ``tracks/`` Parquet parts and ``runs/*.json``.

The one reader of annotate outputs: inspect / report / render / exports, training and
evaluation data (:meth:`AnnotationOutput.faces_of`), the retrain cycle (committed videos since
a watermark, :func:`discover_outputs`) and the writer's resume all read through it, so all of
them see the same thing:

* committed parts only: a faces/tracks part counts once the videos part of the same name
  exists (:mod:`workflows.corpus.writer`);
* one current row per video, its newest (``finished_at``, then ``run_id``), whatever its
  status: a ``--force`` rerun's row replaces the older one, and of two concurrent runs that
  both annotated a video the later row wins; and the faces and tracks of that row only. Rows a
  newer row replaced stay on disk until the writer drops them (an interrupted ``--force``, runs
  that overlapped); every read here skips them (:meth:`AnnotationOutput.read_part`);
* no damaged part: when the output is first read, every committed part is checked from its
  footer alone (it parses, and its row count is what the commit record says: the videos part
  stores the faces and tracks rows of each video in its footer, ``mien.part_rows``). A chunk
  with a bad part (truncated, overwritten, not Parquet, a row count that disagrees) is left out
  and listed in :attr:`AnnotationOutput.damaged`, and its videos count as not annotated: a
  plain ``mien annotate`` rerun annotates exactly them again, then moves the chunk's files to
  ``_damaged/`` (:meth:`workflows.corpus.writer.AnnotationSink.drop_replaced`). Its rows still
  rank against newer ones, so no older row of those videos comes back in the meantime. Corrupt
  data pages behind a sound footer show only when read: :class:`DamagedPartError`, naming the
  part and the repair.

Works the same on a local path and on ``s3://`` (every read goes through
:mod:`workflows.core.storage`). Faces parts can be large (they carry JPEG crops), so nothing here
reads a whole table unless asked: callers name the columns they need, and
:meth:`AnnotationOutput.faces_by_video` streams one video at a time with at most a few parts
in memory.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import logging
import os
import shlex
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from workflows.core import storage
from workflows.corpus import schema

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger(__name__)

PART_ROWS_KEY = b"mien.part_rows"  # videos part footer: {"faces"|"tracks": {video_id: rows}} of its chunk
DAMAGED_DIR = "_damaged"  # where the writer moves a damaged chunk's files once no video needs them
FOOTER_THREADS = 16  # footer reads in flight on object storage (one round trip each)
# Videos parts whose key columns are copied into one table as the row index is read: thousands of
# tables of a chunk each (64 rows) left the allocator's pages a third full (bench/bench_plan.py).
COMPACT_PARTS = 16
_ROW_KEYS = ["video_id", "video_uri", "status", "error_kind", "run_id", "finished_at"]
# Dictionary-encoded in the row index, with the index type each needs: status and error_kind take a
# handful of values, run_id one per run.
_CODED_KEYS = {"status": pa.int8(), "error_kind": pa.int8(), "run_id": pa.int32()}
_warned: set[str] = set()  # damaged parts this process has warned about: an output is opened many times


class OutputError(ValueError):
    """A problem the user can fix: not an annotate output, unknown video, missing source file."""


class DamagedPartError(OutputError):
    """A part whose bytes are bad (not Parquet, cut short, corrupt pages); the message names the
    part and the repair."""

    def __init__(self, uri: str, reason: str, repair: str):
        super().__init__(f"{uri} is damaged ({reason}); {repair}")
        self.uri, self.reason = uri, reason


@dataclasses.dataclass(frozen=True)
class DamagedPart:
    """A part file mien does not trust, and the videos of its chunk.

    ``video_ids``: the chunk's videos per its commit record (the videos part of the same name);
    when that is the unreadable file, the videos its faces and tracks parts name (a video of that
    chunk without faces cannot be named; it has no readable row, so a rerun annotates it too)."""

    uri: str
    table: str  # videos | faces | tracks
    reason: str
    video_ids: tuple[str, ...]

    @property
    def part(self) -> str:
        """The file name, shared by the chunk's three parts."""
        return self.uri.rsplit("/", 1)[-1]

    def to_dict(self) -> dict[str, Any]:
        return {"part": f"{self.table}/{self.part}", "uri": self.uri, "reason": self.reason,
                "video_ids": list(self.video_ids)}


def run_of_part(uri: str) -> str:
    """The run that wrote a part: its file name is ``<run_id>-<seq:05d>.parquet``."""
    return uri.rsplit("/", 1)[-1].removesuffix(".parquet").rsplit("-", 1)[0]


def _bad_bytes(e: BaseException) -> bool:
    """True when ``e`` says a file's bytes are bad (not Parquet, cut short, corrupt pages), not that
    storage failed to serve them: a 403 or an outage is no damage and propagates."""
    return isinstance(e, pa.ArrowException) or (type(e) is OSError and not storage.is_transient(e))


def _footer(uri: str) -> int | str:
    """A part's row count from its Parquet footer (one small read), or why there is none: ``missing``
    or the parser's complaint. Only the count is kept: a wide table's footer object takes ~100 kB,
    and an output of 100k videos has thousands of parts."""
    fs, path = storage.filesystem(uri)
    try:
        return storage.with_retries(pq.read_metadata)(path, filesystem=fs).num_rows
    except FileNotFoundError:
        return "missing"
    except Exception as e:
        if _bad_bytes(e):
            return f"unreadable: {e}"
        raise


def _read_file(path: str, fs: Any, columns: list[str]) -> pa.Table:
    """``columns`` of one Parquet file. Through ``ParquetFile``, not the dataset reader: reading the
    thousands of small parts of a large output, the dataset reader's per-file machinery doubled the
    driver's resident memory (``bench/bench_plan.py``)."""
    with pq.ParquetFile(path, filesystem=fs) as f:
        return f.read(columns=columns)


def list_parts(root: str, name: str) -> list[str]:
    """URIs of every Parquet part of ``root/name`` (``videos`` | ``faces`` | ``tracks``), committed
    or not, sorted; none when the folder does not exist."""
    try:
        return storage.list_files(storage.join(root, name), (".parquet",))
    except FileNotFoundError:
        return []


def _source_key(uri: str) -> str:
    uri = uri.rstrip("/")
    return uri if storage.is_remote(uri) else os.path.abspath(storage.strip_file_scheme(uri))


def discover_outputs(uri: str) -> list[str]:
    """Annotate output roots at or under ``uri``: every directory holding a ``videos/`` Parquet part.

    ``s3://bucket/annotations/`` with one output per night gives each night's root (local roots
    as absolute paths). Raises FileNotFoundError when ``uri`` does not exist or holds no annotate
    output."""
    files = storage.list_files(uri, suffixes=(".parquet",))
    roots = sorted({f.rsplit("/", 2)[0] for f in files if f.rsplit("/", 2)[-2:-1] == ["videos"]})
    if not roots:
        raise FileNotFoundError(f"{uri}: no mien annotate output (no videos/*.parquet) at or under it")
    return [_source_key(r) for r in roots]


class AnnotationOutput:
    """One annotate output root (local path or ``s3://bucket/prefix``).

    ``must_exist=False`` (the writer preparing a run) accepts a root without ``videos/``: it
    reads as an output with no committed part. ``row_uris=False`` leaves ``video_uri`` out of the
    row index (the resume check needs none, and URIs are its largest column): :meth:`committed_videos`
    and the DataFrame views then refuse to run.
    """

    def __init__(self, root: str, *, must_exist: bool = True, row_uris: bool = True):
        self.root = root.rstrip("/") or root
        self._row_keys = _ROW_KEYS if row_uris else [k for k in _ROW_KEYS if k != "video_uri"]
        if must_exist and not storage.exists(storage.join(self.root, "videos")):
            if not storage.exists(self.root):
                raise OutputError(f"output not found: {root}")
            raise OutputError(f"{root} is not a mien annotate output (it has no videos/ directory); "
                              f"give the --output directory of `mien annotate`")
        self._parts: dict[str, list[str]] = {}
        self._videos: pa.Table | None = None
        self._index: pa.Table | None = None  # the row index (:meth:`_index_table`)
        self._row_index: pd.DataFrame | None = None  # the same as a DataFrame, made on first use (:meth:`_rows`)
        self._readable_videos: list[str] = []  # videos parts, in listing order, that read
        self._video_names: set[str] = set()  # file names of every videos part: committed chunks
        self._damaged: list[DamagedPart] = []
        self._waiting: dict[str, set[str]] = {}  # damaged chunk -> videos that still depend on it
        self._replaced: set[tuple[str, str]] | None = None
        self._video_parts: dict[str, dict[str, list[int]]] = {}

    # -- parts ------------------------------------------------------------------------
    def parts(self, name: str) -> list[str]:
        """URIs of the committed Parquet parts of ``videos`` | ``faces`` | ``tracks``, sorted, without
        damaged chunks (:attr:`damaged`; their videos part stays among ``videos`` if it reads).

        As in :mod:`workflows.corpus.writer`, a faces/tracks part counts only once the videos part of the
        same name exists: without it, it is a run's chunk in progress or the leftover of a crashed
        run (the next annotate run deletes it), and its rows would be counted twice after the rerun.
        """
        if name not in self._parts:
            if name == "videos":
                self._verify()
                self._parts[name] = self._readable_videos
                return self._parts[name]
            uris, skipped = self._listing(name)
            self._verify()
            uris = [u for u in uris if u.rsplit("/", 1)[-1] not in self._waiting]
            if skipped:
                log.warning("ignoring %d uncommitted %s part(s): a run in progress, or left by an interrupted "
                            "run (no videos part of the same name; the next `mien annotate` on this output "
                            "deletes them): %s", len(skipped), name, ", ".join(skipped))
            self._parts[name] = uris
        return self._parts[name]

    def uncommitted_parts(self, name: str) -> list[str]:
        """URIs of the ``faces`` | ``tracks`` parts without their videos part (never cached: the
        writer deletes them)."""
        return self._listing(name)[1]

    def _listing(self, name: str) -> tuple[list[str], list[str]]:
        """(committed, uncommitted) parts of ``name``."""
        uris = list_parts(self.root, name)
        if name == "videos":
            return uris, []
        # Listed after them (a chunk committed meanwhile counts as committed), not read: an unreadable
        # videos part still claims its chunk's parts.
        committed = (self._video_names if self._index is not None
                     else {u.rsplit("/", 1)[-1] for u in list_parts(self.root, "videos")})
        return ([u for u in uris if u.rsplit("/", 1)[-1] in committed],
                [u for u in uris if u.rsplit("/", 1)[-1] not in committed])

    def read_part(self, uri: str, columns: list[str] | None = None, filters: Any = None, *,
                  row_numbers: bool = False) -> pa.Table:
        """One part with ``columns``; columns a part lacks (older writers) come back as nulls.

        Faces and tracks rows of a replaced videos row (module docstring) are left out.
        ``row_numbers`` adds ``row``: each row's position in the part file, for reading it back
        by position (not with ``filters``)."""
        if row_numbers and filters is not None:
            raise ValueError("row_numbers are positions in the part file; they cannot be combined with filters")
        name = uri.rstrip("/").rsplit("/", 2)[-2]
        fs, path = storage.filesystem(uri)
        try:
            names = storage.with_retries(pq.read_schema)(path, filesystem=fs).names
            present = set(names)
            wanted = columns if columns is not None else names
            have = [c for c in wanted if c in present]
            replaced = self.replaced_rows() if name in ("faces", "tracks") else set()
            keys = ["video_id", "run_id"] if replaced and {"video_id", "run_id"} <= present else []
            read = list(dict.fromkeys(have + keys))
            t = (storage.with_retries(pq.read_table)(path, filesystem=fs, columns=read, filters=filters)
                 if filters is not None else storage.with_retries(_read_file)(path, fs, read))
        except Exception as e:
            if not _bad_bytes(e):
                raise
            raise DamagedPartError(uri, str(e), f"move it to {storage.join(self.root, DAMAGED_DIR, name)}/ and rerun "
                                                f"`{self.repair_command({run_of_part(uri)})}`: the videos of its "
                                                "chunk are annotated again") from e
        if row_numbers:
            t = t.append_column("row", pa.array(np.arange(len(t), dtype=np.int64)))
        if keys and len(t):
            pairs = zip(t.column("video_id").to_pylist(), t.column("run_id").to_pylist(), strict=True)
            t = t.filter(pa.array([p not in replaced for p in pairs], pa.bool_()))
        contract = schema.TABLES.get(name)
        for c in wanted:
            if c not in present:
                typ = contract.field(c).type if contract is not None and c in contract.names else pa.null()
                t = t.append_column(pa.field(c, typ), pa.nulls(len(t), typ))
        return t.select([*wanted, "row"] if row_numbers else wanted)

    def read(self, name: str, columns: list[str] | None = None, filters: Any = None) -> pa.Table:
        """All parts of one table concatenated (use for videos/tracks, or faces with few columns)."""
        tables = [self.read_part(u, columns, filters) for u in self.parts(name)]
        if not tables:
            empty = schema.TABLES[name].empty_table()
            return empty.select(columns) if columns is not None else empty
        return pa.concat_tables(tables, promote_options="permissive")

    # -- videos -----------------------------------------------------------------------
    def videos(self) -> pa.Table:
        """Every videos row (one per video and run), replaced ones included."""
        if self._videos is None:
            self._videos = self.read("videos")
        return self._videos

    def _rows(self) -> pd.DataFrame:
        """Key columns of every videos row, in :meth:`videos` order, with ``part`` (its file name),
        ``finished_ms`` (None when unknown), ``current`` (it is its video's newest row: latest
        ``finished_at``, then greatest ``run_id``; rows without ``finished_at`` rank oldest) and
        ``damaged`` (its chunk is damaged). Made from :meth:`_index_table` on first use."""
        if self._row_index is None:
            self._need_uris()
            self._row_index = _index_frame(_decoded(self._index_table()))
        return self._row_index

    def _need_uris(self) -> None:
        if "video_uri" not in self._row_keys:
            raise RuntimeError("this AnnotationOutput was opened with row_uris=False: its row index has no video_uri")

    def _index_table(self) -> pa.Table:
        """The columns of :meth:`_rows` as Arrow, ``part`` and :data:`_CODED_KEYS` dictionary-encoded
        (``video_uri`` only with ``row_uris``): what the resume check and the writer's tidying of a
        large output read, without a DataFrame or a Python object per row."""
        self._verify()
        assert self._index is not None
        return self._index

    def _verify(self) -> None:
        """Read the videos rows and check every committed part from its footer, once (module
        docstring): fills the row index, :attr:`damaged` and the damaged chunks' waiting videos."""

        if self._index is not None:
            return
        # Faces and tracks footers are read before the videos rows they are checked against: a
        # --force run drops replaced rows from faces/tracks parts before the videos part, so an
        # older faces footer never holds fewer rows than a newer videos part's current rows need.
        footers = self._sibling_footers([u.rsplit("/", 1)[-1] for u in list_parts(self.root, "videos")])
        video_uris = list_parts(self.root, "videos")
        names = {u.rsplit("/", 1)[-1] for u in video_uris}
        footers |= self._sibling_footers(sorted(names - {part for _, part in footers}))
        bad: dict[str, list[tuple[str, str, str]]] = {}  # part -> (table, uri, reason)
        # Per part: its key columns (Arrow, concatenated once) and, by its commit record, the faces and
        # tracks rows of its chunk (``high``; -1: an older writer's part recorded none) and of the videos
        # it holds a row of (``low``; then of those whose current row it holds).
        part_names = [u.rsplit("/", 1)[-1] for u in video_uris]
        tables: list[pa.Table] = []  # compacted COMPACT_PARTS parts at a time
        small: list[pa.Table] = []
        reads = np.zeros(len(video_uris), dtype=bool)  # its videos part reads
        high = np.full((len(video_uris), 2), -1, np.int64)  # [part, faces|tracks]
        low = np.zeros((len(video_uris), 2), np.int64)
        sizes: list[int] = []  # rows of each readable part
        readable = []
        for no, uri in enumerate(video_uris):
            try:
                t = self.read_part(uri, self._row_keys)
            except DamagedPartError as e:
                bad.setdefault(part_names[no], []).append(("videos", uri, f"unreadable: {e.reason}"))
                continue
            readable.append(uri)
            raw = (t.schema.metadata or {}).get(PART_ROWS_KEY)
            record = json.loads(raw) if raw else None
            reads[no] = True
            ids = t.column("video_id").to_pylist()
            for i, name in enumerate(("faces", "tracks")):
                if record is not None:
                    counts = record.get(name, {})
                    high[no, i], low[no, i] = sum(counts.values()), sum(counts.get(v, 0) for v in ids)
            finished = pc.cast(t.column("finished_at").cast(pa.timestamp("ms", tz="UTC")), "int64")
            t = t.drop_columns(["finished_at"]).replace_schema_metadata(None).append_column("finished_ms", finished)
            for name, index_type in _CODED_KEYS.items():  # a few distinct values each: not a string a row
                coded = pc.dictionary_encode(t.column(name)).cast(pa.dictionary(index_type, pa.string()))
                t = t.set_column(t.schema.get_field_index(name), name, coded)
            small.append(t)
            sizes.append(len(t))
            if len(small) == COMPACT_PARTS:
                tables.append(pa.concat_tables(small).combine_chunks())
                small = []
        tables += small
        index = pa.concat_tables(tables) if tables else pa.table(
            {**{k: pa.array([], pa.dictionary(_CODED_KEYS[k], pa.string()) if k in _CODED_KEYS else pa.string())
                for k in self._row_keys if k != "finished_at"},
             "finished_ms": pa.array([], pa.int64())})
        parts = np.repeat(np.flatnonzero(reads).astype(np.int32), sizes)  # each row's part number
        del tables, small
        pa.default_memory_pool().release_unused()  # the pages of thousands of small reads, before the sort
        current = _newest_per_video(index)
        self._drop_replaced_rows(low, video_uris, parts, current, index.column("video_id"))
        for no in np.flatnonzero(reads).tolist():
            part = part_names[no]
            for i, name in enumerate(("faces", "tracks")):
                reason = _count_problem(footers[(name, part)], int(low[no, i]),
                                        None if high[no, i] < 0 else int(high[no, i]), part)
                if reason is not None:
                    bad.setdefault(part, []).append((name, storage.join(self.root, name, part), reason))
        damaged = np.isin(parts, [no for no, part in enumerate(part_names) if part in bad])
        vids = index.column("video_id")
        ok = current & _mask(pc.equal(index.column("status"), "ok"))
        damaged_parts, waiting = [], {}
        for part, problems in sorted(bad.items()):
            no = part_names.index(part)
            if reads[no]:  # its videos part reads: the commit record names the chunk's videos
                mine = parts == no
                ids = set(vids.filter(pa.array(mine)).to_pylist())
                waiting[part] = set(vids.filter(pa.array(mine & ok)).to_pylist())
            else:
                ids = set()
                for name in ("faces", "tracks"):
                    footer = footers[(name, part)]
                    if isinstance(footer, str):
                        if footer != "missing":
                            problems.append((name, storage.join(self.root, name, part), footer))
                        continue
                    fs, path = storage.filesystem(storage.join(self.root, name, part))
                    try:
                        ids |= set(storage.with_retries(pq.read_table)(path, filesystem=fs, columns=["video_id"])
                                   .column("video_id").to_pylist())
                    except Exception as e:
                        if not _bad_bytes(e):
                            raise
                        problems.append((name, storage.join(self.root, name, part), f"unreadable: {e}"))
                done = ok & ~damaged & _mask(pc.is_in(vids, value_set=pa.array(sorted(ids), pa.string())))
                waiting[part] = ids - set(vids.filter(pa.array(done)).to_pylist())
            damaged_parts += [DamagedPart(uri, name, reason, tuple(sorted(ids))) for name, uri, reason in problems]
        self._readable_videos, self._video_names, self._damaged, self._waiting = (readable, names, damaged_parts,
                                                                                  waiting)
        self._index = index.append_column(
            "part", pa.DictionaryArray.from_arrays(parts, pa.array(part_names, pa.string()))).append_column(
            "current", pa.array(current)).append_column("damaged", pa.array(damaged))
        fresh = [d for d in self._damaged if d.uri not in _warned]
        if fresh:
            _warned.update(d.uri for d in fresh)
            log.warning("%s", self.damage_message())

    @staticmethod
    def _drop_replaced_rows(low: np.ndarray, video_uris: list[str], parts: np.ndarray, current: np.ndarray,
                            ids: pa.ChunkedArray) -> None:
        """From ``low`` (per part, the faces and tracks rows its commit record gives the videos it holds
        a row of), take those of its rows a newer row replaced: it is left with the rows of the videos
        whose current row it holds. Replaced rows are few (videos annotated again), so their parts'
        records are read again rather than a count kept per row."""
        old = np.flatnonzero(~current)
        for no, group in itertools.groupby(zip(parts[old].tolist(), ids.take(pa.array(old)).to_pylist(),
                                               strict=True), key=lambda pair: pair[0]):
            fs, path = storage.filesystem(video_uris[no])
            try:
                raw = (storage.with_retries(pq.read_schema)(path, filesystem=fs).metadata or {}).get(PART_ROWS_KEY)
            except FileNotFoundError:  # another run's tidying removed it meanwhile: none of its rows is current
                raw = None
            record = json.loads(raw) if raw else {}
            for _, video_id in group:
                for i, name in enumerate(("faces", "tracks")):
                    low[no, i] -= record.get(name, {}).get(video_id, 0)

    def _sibling_footers(self, parts: list[str]) -> dict[tuple[str, str], int | str]:
        """``(faces|tracks, part) -> row count or why there is none`` (:func:`_footer`) of each named
        chunk, in parallel on object storage."""
        keys = [(name, part) for part in parts for name in ("faces", "tracks")]
        uris = [storage.join(self.root, name, part) for name, part in keys]
        if storage.is_remote(self.root) and len(uris) > 1:
            with ThreadPoolExecutor(min(FOOTER_THREADS, len(uris))) as pool:
                return dict(zip(keys, pool.map(_footer, uris), strict=True))
        return {k: _footer(u) for k, u in zip(keys, uris, strict=True)}

    # -- damaged parts ----------------------------------------------------------------
    @property
    def damaged(self) -> list[DamagedPart]:
        """Every damaged part of a committed chunk (module docstring); empty for a sound output."""
        self._verify()
        return self._damaged

    def damaged_chunks(self) -> dict[str, set[str]]:
        """Part file name of each damaged chunk -> the videos that still depend on it: those whose
        current ``ok`` row it holds or, when its videos part does not read, the ones its
        faces/tracks parts name that have no sound ``ok`` row elsewhere. A chunk none depends on
        any more moves out of the way (the writer does that): its error rows carry no faces, and a
        video left without a row is simply annotated again."""
        self._verify()
        return {part: set(ids) for part, ids in self._waiting.items()}

    def repair_command(self, runs: set[str]) -> str:
        """The ``mien annotate`` command that repairs parts written by ``runs``: their input when
        the runs' records name one, ``IN`` otherwise."""
        inputs = {str(doc["input"]) for doc in self.runs() if doc.get("run_id") in runs and doc.get("input")}
        source = shlex.quote(inputs.pop()) if len(inputs) == 1 else "IN"
        return f"mien annotate --input {source} --output {shlex.quote(self.root)}"

    def repair_advice(self) -> str:
        """The repair of :attr:`damaged`, in one sentence: the rerun that annotates the affected
        videos again (empty for a sound output)."""
        if not self.damaged:
            return ""
        waiting = set().union(*self._waiting.values())
        if not waiting:
            return (f"no video depends on them any more; the next `mien annotate` on this output moves them to "
                    f"{storage.join(self.root, DAMAGED_DIR)}/")
        command = self.repair_command({run_of_part(d.uri) for d in self.damaged})
        return (f"rerun `{command}` to re-annotate the {len(waiting)} affected video(s) (nothing else is redone); "
                f"it then moves the damaged files to {storage.join(self.root, DAMAGED_DIR)}/")

    def damage_message(self) -> str:
        """What is damaged and the repair, in one paragraph (the warning every command prints)."""
        if not self.damaged:
            return ""
        waiting = set().union(*self._waiting.values())
        listing = "; ".join(f"{d.table}/{d.part} ({d.reason})" for d in self.damaged)
        effect = f", so {len(waiting)} video(s) count as not annotated" if waiting else ""
        return f"{self.root}: {len(self.damaged)} damaged part(s) left out{effect}: {listing}; {self.repair_advice()}"

    def latest_finished_ms(self) -> int | None:
        """Commit time of the newest videos row (ms since the epoch, UTC); None when there is none."""
        return pc.max(self._index_table().column("finished_ms")).as_py()

    def replaced_rows(self) -> set[tuple[str, str]]:
        """``(video_id, run_id)`` of every videos row a newer row of the same video replaced: their
        faces and tracks are never read (:meth:`read_part`)."""
        if self._replaced is None:
            index = self._index_table()
            current = index.column("current").to_numpy()
            old = _pairs(index, ~current)  # few: the rows of videos annotated again
            again = _mask(pc.is_in(index.column("video_id"), value_set=pa.array(sorted({v for v, _ in old}), pa.string())))
            self._replaced = old - _pairs(index, current & again)
        return self._replaced

    def replaced_ok_rows(self) -> dict[str, set[tuple[str, str]]]:
        """Part file name -> ``(video_id, run_id)`` of its replaced ``ok`` rows: what the writer
        drops (replaced error rows carry no faces and stay as history, ``attempts``). Damaged
        chunks are not rewritten: the writer moves them aside whole (:meth:`damaged_chunks`)."""
        index = self._index_table()
        rows = index.filter(pa.array(~index.column("current").to_numpy() & _mask(pc.equal(index.column("status"), "ok"))
                                     & ~index.column("damaged").to_numpy()))
        found: dict[str, set[tuple[str, str]]] = {}
        for vid, run, part in zip(*(rows.column(c).to_pylist() for c in ("video_id", "run_id", "part")), strict=True):
            found.setdefault(part, set()).add((vid, run))
        return found

    def current_videos(self) -> list[dict[str, Any]]:
        """One row per ``video_id``: its newest row (module docstring), ``ok`` or ``error``.

        Each row gets ``attempts``: how many rows the video has across runs. An ``ok`` row of a
        damaged chunk reads as an ``error`` of kind ``damaged_part`` that names the part and the
        repair: its faces and tracks are left out.
        """
        index = self._rows()
        attempts = index["video_id"].value_counts().to_dict()
        best = [r for r, current in zip(self.videos().to_pylist(), index["current"], strict=True) if current]
        damaged = {d.part: d for d in reversed(self.damaged)}
        for r, part in zip(best, index["part"][index["current"]], strict=True):
            r["attempts"] = attempts[r["video_id"]]
            if part in damaged and r["status"] == "ok":  # not annotated until a rerun redoes it
                d = damaged[part]
                r.update(status="error", error_kind="damaged_part",
                         error=f"{d.table}/{d.part} is damaged ({d.reason}); rerun "
                               f"`{self.repair_command({r['run_id']})}` to annotate it again")
        return sorted(best, key=lambda r: (r["status"] != "error", str(r["video_uri"])))

    def find_video(self, key: str) -> dict[str, Any]:
        """The current row of the video named by ``key``: a video_id, a unique id prefix, its
        URI, or its file name with or without its extension. Raises :class:`OutputError` when
        nothing or several match."""
        videos = self.current_videos()
        for test in (lambda r: r["video_id"] == key, lambda r: r["video_uri"] == key,
                     lambda r: r["video_id"].startswith(key),
                     lambda r: str(r["video_uri"]).rsplit("/", 1)[-1] == key,
                     lambda r: os.path.splitext(str(r["video_uri"]).rsplit("/", 1)[-1])[0] == key):
            hits = [r for r in videos if test(r)]
            if len(hits) == 1:
                return hits[0]
            if len(hits) > 1:
                listing = ", ".join(f"{r['video_id']} ({r['video_uri']})" for r in hits[:5])
                raise OutputError(f"{key!r} matches {len(hits)} videos: {listing}; give the full video_id")
        raise OutputError(f"no video {key!r} in {self.root} ({len(videos)} videos; "
                          f"`mien inspect {self.root} --videos` lists them)")

    def committed_videos(self, since_ms: int | None = None) -> pd.DataFrame:
        """The current ``ok`` row of every video whose current row is ``ok`` and in a sound chunk
        (one per video; module docstring) as a DataFrame: ``video_id``, ``video_uri``, ``run_id``,
        ``finished_ms`` (commit time, ms since the epoch, UTC) and ``part`` (the part's file name).
        With ``since_ms`` (a watermark), only rows finished after it.

        A videos part is the commit marker of the faces part of the same name
        (:mod:`workflows.corpus.writer`), so faces are only ever read through these rows
        (:meth:`faces_of`). Rows without ``finished_at`` (not written by ``mien annotate``) cannot
        be placed against a watermark and are skipped with a warning.
        """
        self._need_uris()
        columns = ["video_id", "video_uri", "run_id", "finished_ms", "part"]
        rows = self._index_table().filter(pa.array(self._committed())).select(columns)
        if since_ms is not None:
            rows = rows.filter(pc.greater(rows.column("finished_ms"), since_ms))
        return _index_frame(_decoded(rows)).astype({"finished_ms": "int64"})

    def current_states(self, batch_rows: int = 4096) -> tuple[int, Iterator[pa.Table]]:
        """``video_id``, ``status`` and ``error_kind`` of every video with a committed ``ok`` row
        (:meth:`committed_videos`) or whose current row is an ``error``: what a rerun checks its input
        against (resume). Their number, and Arrow tables filtered from ``batch_rows`` rows of the row
        index at a time: no copy of the index, no DataFrame, no Python object per video beyond a batch."""
        index = self._index_table()
        keep = self._committed() | (index.column("current").to_numpy()
                                    & _mask(pc.equal(index.column("status"), "error")))
        columns = index.select(["video_id", "status", "error_kind"])
        batches = (columns.slice(start, batch_rows).filter(pa.array(keep[start:start + batch_rows]))
                   for start in range(0, len(index), batch_rows))
        return int(keep.sum()), batches

    def _committed(self) -> np.ndarray:
        """Mask of the row index's committed ``ok`` rows: current, ``ok``, in a sound chunk and with a
        ``finished_at`` (:meth:`committed_videos`); warns of the ok rows without one."""
        index = self._index_table()
        ok = (index.column("current").to_numpy() & ~index.column("damaged").to_numpy()
              & _mask(pc.equal(index.column("status"), "ok")))
        unfinished = ok & _mask(pc.is_null(index.column("finished_ms")))
        if unfinished.any():
            log.warning("%s: skipping %d ok videos row(s) without finished_at (not written by mien annotate?)",
                        self.root, int(unfinished.sum()))
        return ok & ~unfinished

    # -- faces ------------------------------------------------------------------------
    def faces_of(self, videos: pd.DataFrame | None = None,
                 keep_video: Callable[[str], bool] | None = None) -> pd.DataFrame:
        """Every column of the faces of committed ``videos`` rows (:meth:`committed_videos`; default:
        all of them) as a DataFrame, what
        :func:`workflows.training.instructions.instructions_from_annotations` takes.

        Only rows of the same part, video and run as a ``videos`` row are read, so faces of a
        crashed run never come back. Map columns (``fe_probs``, ``au_probs``, ``au_evidence``,
        ``fe_prior``) come back as dicts, ``track_id`` as str (None when untracked), and
        ``video_uri`` is joined from ``videos``. ``keep_video(video_id)`` narrows ``videos`` first.
        Empty DataFrame when there are no faces.
        """
        import pandas as pd

        if videos is None:
            videos = self.committed_videos()
        if keep_video is not None and len(videos):
            videos = videos[videos["video_id"].map(keep_video)]
        written = {u.rsplit("/", 1)[-1]: u for u in self.parts("faces")}
        frames = []
        for part, rows in videos.groupby("part", sort=True):
            if part not in written:
                continue  # a chunk without faces writes an empty part; older outputs may lack it
            t = self.read_part(written[part])
            if not t.num_rows:
                continue
            wanted = set(zip(rows["video_id"], rows["run_id"], strict=True))
            pairs = zip(t.column("video_id").to_pylist(), t.column("run_id").to_pylist(), strict=True)
            t = t.filter(pa.array([p in wanted for p in pairs], pa.bool_()))
            if not t.num_rows:
                continue
            df = t.to_pandas(maps_as_pydicts="lossy")
            if "track_id" in t.column_names:  # as text, never widened to float by a null
                df["track_id"] = pd.Series(pc.cast(t.column("track_id"), pa.string()).to_pylist(),
                                           index=df.index, dtype=object)
            frames.append(df)
        if not frames:
            return pd.DataFrame()
        faces = pd.concat(frames, ignore_index=True)
        uris = dict(zip(videos["video_id"], videos["video_uri"], strict=True))
        faces["video_uri"] = faces["video_id"].map(uris)
        return faces

    def video_parts(self, name: str = "faces") -> dict[str, list[int]]:
        """``video_id -> indices into parts(name)`` of the parts holding its rows (reads only ids)."""
        if name not in self._video_parts:
            index: dict[str, list[int]] = {}
            for i, uri in enumerate(self.parts(name)):
                ids = self.read_part(uri, ["video_id"]).column("video_id")
                for vid in pc.unique(ids).to_pylist():
                    index.setdefault(vid, []).append(i)
            self._video_parts[name] = index
        return self._video_parts[name]

    def rows_of_video(self, video_id: str, name: str = "faces", columns: list[str] | None = None) -> pa.Table:
        """Rows of one video from ``faces`` or ``tracks``, sorted by time then track."""
        parts = self.parts(name)
        tables = [self.read_part(parts[i], columns, filters=[("video_id", "=", video_id)])
                  for i in self.video_parts(name).get(video_id, [])]
        if not tables:
            empty = schema.TABLES[name].empty_table()
            return empty.select(columns) if columns is not None else empty
        t = pa.concat_tables(tables, promote_options="permissive")
        return _sort_rows(t, name)

    def faces_by_video(self, columns: list[str], name: str = "faces") -> Iterator[tuple[str, pa.Table]]:
        """``(video_id, rows)`` for every video with rows, each sorted by time then track.

        Parts are read one at a time; a video's rows are yielded once the last part holding
        them has been read (a video normally lives in one part, so little is held back).
        """
        cols = list(dict.fromkeys(["video_id", *columns]))
        where = self.video_parts(name)
        last_part = {vid: max(idx) for vid, idx in where.items()}
        pending: dict[str, list[pa.Table]] = {}
        for i, uri in enumerate(self.parts(name)):
            t = self.read_part(uri, cols)
            if not len(t):
                continue
            t = t.sort_by("video_id")  # then each video is one run of rows: slice, never filter
            runs = pc.run_end_encode(t.column("video_id").combine_chunks())
            start = 0
            for vid, end in zip(runs.values.to_pylist(), runs.run_ends.to_pylist(), strict=True):
                pending.setdefault(vid, []).append(t.slice(start, end - start))
                start = end
                if last_part[vid] == i:
                    rows = pa.concat_tables(pending.pop(vid), promote_options="permissive")
                    yield vid, _sort_rows(rows, name).select(columns)

    # -- runs -------------------------------------------------------------------------
    def runs(self) -> list[dict[str, Any]]:
        """Every ``runs/<run_id>.json`` document, oldest first; unreadable ones are skipped."""
        try:
            uris = storage.list_files(storage.join(self.root, "runs"), (".json",))
        except FileNotFoundError:
            return []
        docs = []
        for uri in uris:
            try:
                doc = json.loads(storage.read_text(uri))
            except (OSError, ValueError) as e:
                log.warning("skipping unreadable run file %s (%s)", uri, e)
                continue
            doc.setdefault("run_id", uri.rsplit("/", 1)[-1].removesuffix(".json"))
            docs.append(doc)
        return sorted(docs, key=lambda d: str(d.get("run_id")))


KEY_BATCH = 4096  # ids turned into keys at a time


def video_keys(video_ids: list[str]) -> np.ndarray:
    """128-bit BLAKE2b keys of ``video_ids`` (dtype ``S16``): equal for equal ids, and for two distinct
    ids with probability 2^-128. Sorted and compared as fixed-width bytes, where the ids' strings
    would take several times the memory."""
    return np.frombuffer(b"".join(hashlib.blake2b(v.encode(), digest_size=16).digest() for v in video_ids), "S16")


def _newest_per_video(index: pa.Table) -> np.ndarray:
    """Mask of the rows of ``index`` that are their video's newest: latest ``finished_ms`` (None ranks
    oldest), then greatest ``run_id``. The rows are sorted by the first 64 bits of their ids'
    :func:`video_keys` (8 bytes a row; no string is copied or sorted); only the rows whose hash another
    row shares (a video with several rows, or a collision) are then ranked by id, time and run."""
    n = len(index)
    ids = index.column("video_id")
    hashes = np.empty(n, np.uint64)
    for start in range(0, n, KEY_BATCH):  # Python strings of a slice at a time
        hashes[start:start + KEY_BATCH] = video_keys(ids.slice(start, KEY_BATCH).to_pylist()).view(np.uint64)[::2]
    order = np.argsort(hashes)
    hashes = hashes[order]
    same = hashes[:-1] == hashes[1:]  # rows i and i+1 of the sorted order share a hash
    del hashes
    current = np.ones(n, dtype=bool)
    if not same.any():
        return current  # every video has one row
    shared = np.zeros(n, dtype=bool)
    shared[:-1] |= same
    shared[1:] |= same
    rows = np.sort(order[shared])
    sub = index.select(["video_id", "finished_ms", "run_id"]).take(pa.array(rows))
    keys = pa.table({"v": sub.column("video_id"), "t": _filled(sub.column("finished_ms"), -1),
                     "r": _ranks(sub.column("run_id"))})
    ranked = pc.sort_indices(keys, sort_keys=[("v", "ascending"), ("t", "ascending"), ("r", "ascending")])
    videos = pc.take(keys.column("v"), ranked)
    last = np.ones(len(rows), dtype=bool)  # in sorted order, a row is its video's newest when the next is another
    last[:-1] = pc.not_equal(videos.slice(0, len(rows) - 1), videos.slice(1)).to_numpy(zero_copy_only=False)
    current[rows] = False
    current[rows[ranked.to_numpy()[last]]] = True
    return current


def _filled(column: pa.ChunkedArray, value: Any) -> pa.ChunkedArray:
    """``column`` with nulls as ``value``; copied only when it has a null (a run_id column is megabytes)."""
    return pc.fill_null(column, value) if column.null_count else column


def _mask(condition: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """A boolean Arrow column as a NumPy mask, null as False."""
    return pc.fill_null(condition, False).to_numpy()


def _pairs(index: pa.Table, mask: np.ndarray) -> set[tuple[str, str | None]]:
    """``(video_id, run_id)`` of the rows of the row index ``index`` that ``mask`` selects."""
    rows = index.filter(pa.array(mask))
    return set(zip(rows.column("video_id").to_pylist(), rows.column("run_id").to_pylist(), strict=True))


def _ranks(column: pa.ChunkedArray) -> pa.Array:
    """Each value's rank among a dictionary-encoded string ``column``'s values (null: 0, lowest): what
    sorts like the strings, which Arrow does not sort as a dictionary."""
    coded = column.combine_chunks()
    ranks = pc.rank(coded.dictionary, sort_keys="ascending", tiebreaker="dense")
    return pc.fill_null(pc.take(ranks, coded.indices), 0)


def _decoded(t: pa.Table) -> pa.Table:
    """``t`` with its dictionary-encoded columns (``part``, :data:`_CODED_KEYS`) as plain strings (for a DataFrame)."""
    for i, field in enumerate(t.schema):
        if pa.types.is_dictionary(field.type):
            t = t.set_column(i, field.name, pc.cast(t.column(i), field.type.value_type))
    return t


def _index_frame(t: pa.Table) -> pd.DataFrame:
    """A DataFrame of row index columns (:meth:`AnnotationOutput._rows`): strings held
    in Arrow buffers (a few dozen bytes a row, where Python strings took ~10x that for an output of
    100k videos), ``finished_ms`` a nullable integer."""
    import pandas as pd

    text = pd.StringDtype("pyarrow")
    return t.to_pandas(types_mapper={pa.string(): text, pa.large_string(): text, pa.int64(): pd.Int64Dtype()}.get)


def _count_problem(footer: int | str, low: int, high: int | None, part: str) -> str | None:
    """Why a chunk's faces or tracks part disagrees with its commit record, or None.

    ``high``: that table's rows in the whole chunk as written (None: an older writer recorded none,
    and only the footer is checked); ``low``: the rows the record gives the chunk's videos whose
    current row it holds. Dropping replaced rows rewrites faces and tracks before the videos part, so
    any count from ``low`` to ``high`` is sound."""
    if isinstance(footer, str):
        if footer != "missing":
            return footer
        return None if low == 0 else f"missing, where its commit record videos/{part} counts {low} rows"
    if high is None:
        return None
    if low <= footer <= high:
        return None
    return (f"{footer} rows, where its commit record videos/{part} says "
            f"{high if low == high else f'{low} to {high}'}")


def _sort_rows(t: pa.Table, name: str) -> pa.Table:
    keys = [("timestamp_s", "ascending"), ("track_id", "ascending")] if name == "faces" \
        else [("start_s", "ascending"), ("track_id", "ascending")]
    keys = [k for k in keys if k[0] in t.column_names]
    return t.sort_by(keys) if keys and len(t) else t


def top_active_aus(au_active: list[str] | None, au_probs: list[tuple[str, float]] | dict[str, float] | None,
                   k: int = 3) -> list[str]:
    """The ``k`` most probable of a face's active AUs (``au_probs`` as a map column gives it)."""
    probs = dict(au_probs or [])
    return sorted(au_active or [], key=lambda a: -probs.get(a, 0.0))[:k]
