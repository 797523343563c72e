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
  that overlapped); every read here skips them (:meth:`AnnotationOutput.read_part`).

Works the same on a local path and on ``s3://`` (every read goes through
:mod:`workflows.core.storage`). Faces parts can be large (they carry JPEG crops), so nothing here
reads a whole table unless asked: callers name the columns they need, and
:meth:`AnnotationOutput.faces_by_video` streams one video at a time with at most a few parts
in memory.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Iterator
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


class OutputError(ValueError):
    """A problem the user can fix: not an annotate output, unknown video, missing source file."""


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
    reads as an output with no committed part.
    """

    def __init__(self, root: str, *, must_exist: bool = True):
        self.root = root.rstrip("/") or root
        if must_exist and not storage.exists(storage.join(self.root, "videos")):
            if not storage.exists(self.root):
                raise OutputError(f"output not found: {root}")
            raise OutputError(f"{root} is not a mien annotate output (it has no videos/ directory); "
                              f"give the --output directory of `mien annotate`")
        self._parts: dict[str, list[str]] = {}
        self._videos: pa.Table | None = None
        self._row_index: pd.DataFrame | None = None
        self._replaced: set[tuple[str, str]] | None = None
        self._video_parts: dict[str, dict[str, list[int]]] = {}

    # -- parts ------------------------------------------------------------------------
    def parts(self, name: str) -> list[str]:
        """URIs of the committed Parquet parts of ``videos`` | ``faces`` | ``tracks``, sorted.

        As in :mod:`workflows.corpus.writer`, a faces/tracks part counts only once the videos part of the
        same name exists: without it, it is a run's chunk in progress or the leftover of a crashed
        run (the next annotate run deletes it), and its rows would be counted twice after the rerun.
        """
        if name not in self._parts:
            uris, skipped = self._listing(name)
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
        committed = {u.rsplit("/", 1)[-1] for u in self.parts("videos")}
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
        names = storage.with_retries(pq.read_schema)(path, filesystem=fs).names
        present = set(names)
        wanted = columns if columns is not None else names
        have = [c for c in wanted if c in present]
        replaced = self.replaced_rows() if name in ("faces", "tracks") else set()
        keys = ["video_id", "run_id"] if replaced and {"video_id", "run_id"} <= present else []
        t = storage.with_retries(pq.read_table)(path, filesystem=fs, columns=list(dict.fromkeys(have + keys)),
                                                filters=filters)
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
        ``finished_ms`` (None when unknown) and ``current`` (it is its video's newest row: latest
        ``finished_at``, then greatest ``run_id``; rows without ``finished_at`` rank oldest)."""
        import pandas as pd

        if self._row_index is None:
            frames = []
            for uri in self.parts("videos"):
                t = self.read_part(uri, ["video_id", "video_uri", "status", "run_id", "finished_at"])
                finished = pc.cast(t.column("finished_at").cast(pa.timestamp("ms", tz="UTC")), "int64")
                frames.append(pd.DataFrame({
                    "video_id": t.column("video_id").to_pylist(), "video_uri": t.column("video_uri").to_pylist(),
                    "status": t.column("status").to_pylist(), "run_id": t.column("run_id").to_pylist(),
                    "finished_ms": pd.Series(finished.to_pylist(), dtype=object), "part": uri.rsplit("/", 1)[-1]}))
            rows = (pd.concat(frames, ignore_index=True) if frames else
                    pd.DataFrame(columns=["video_id", "video_uri", "status", "run_id", "finished_ms", "part"]))
            order = pd.DataFrame({"video_id": rows["video_id"],
                                  "t": rows["finished_ms"].map(lambda v: -1 if v is None else v).astype("int64"),
                                  "run": rows["run_id"].fillna("").astype(str)}).sort_values(["video_id", "t", "run"])
            rows["current"] = ~order.duplicated("video_id", keep="last").reindex(rows.index).astype(bool)
            self._row_index = rows
        return self._row_index

    def latest_finished_ms(self) -> int | None:
        """Commit time of the newest videos row (ms since the epoch, UTC); None when there is none."""
        finished = self._rows()["finished_ms"].dropna()
        return int(finished.max()) if len(finished) else None

    def replaced_rows(self) -> set[tuple[str, str]]:
        """``(video_id, run_id)`` of every videos row a newer row of the same video replaced: their
        faces and tracks are never read (:meth:`read_part`)."""
        if self._replaced is None:
            rows = self._rows()
            current = set(zip(rows["video_id"][rows["current"]], rows["run_id"][rows["current"]], strict=True))
            old = set(zip(rows["video_id"][~rows["current"]], rows["run_id"][~rows["current"]], strict=True))
            self._replaced = old - current
        return self._replaced

    def replaced_ok_rows(self) -> dict[str, set[tuple[str, str]]]:
        """Part file name -> ``(video_id, run_id)`` of its replaced ``ok`` rows: what the writer
        drops (replaced error rows carry no faces and stay as history, ``attempts``)."""
        rows = self._rows()
        rows = rows[~rows["current"] & (rows["status"] == "ok")]
        found: dict[str, set[tuple[str, str]]] = {}
        for vid, run, part in zip(rows["video_id"], rows["run_id"], rows["part"], strict=True):
            found.setdefault(part, set()).add((vid, run))
        return found

    def current_videos(self) -> list[dict[str, Any]]:
        """One row per ``video_id``: its newest row (module docstring), ``ok`` or ``error``.

        Each row gets ``attempts``: how many rows the video has across runs.
        """
        index = self._rows()
        attempts = index["video_id"].value_counts().to_dict()
        best = [r for r, current in zip(self.videos().to_pylist(), index["current"], strict=True) if current]
        for r in best:
            r["attempts"] = attempts[r["video_id"]]
        return sorted(best, key=lambda r: (r["status"] != "error", str(r["video_uri"])))

    def find_video(self, key: str) -> dict[str, Any]:
        """The current row of the video named by ``key``: a video_id, a unique id prefix, its
        URI, or its file name. Raises :class:`OutputError` when nothing or several match."""
        videos = self.current_videos()
        for test in (lambda r: r["video_id"] == key, lambda r: r["video_uri"] == key,
                     lambda r: r["video_id"].startswith(key),
                     lambda r: str(r["video_uri"]).rsplit("/", 1)[-1] == key):
            hits = [r for r in videos if test(r)]
            if len(hits) == 1:
                return hits[0]
            if len(hits) > 1:
                listing = ", ".join(f"{r['video_id']} ({r['video_uri']})" for r in hits[:5])
                raise OutputError(f"{key!r} matches {len(hits)} videos: {listing}; give the full video_id")
        raise OutputError(f"no video {key!r} in {self.root} ({len(videos)} videos; "
                          f"`mien inspect {self.root} --videos` lists them)")

    def committed_videos(self, since_ms: int | None = None) -> pd.DataFrame:
        """The current ``ok`` row of every video whose current row is ``ok`` (one per video; module
        docstring) as a DataFrame: ``video_id``, ``video_uri``, ``run_id``, ``finished_ms`` (commit
        time, ms since the epoch, UTC) and ``part`` (the part's file name). With ``since_ms`` (a
        watermark), only rows finished after it.

        A videos part is the commit marker of the faces part of the same name
        (:mod:`workflows.corpus.writer`), so faces are only ever read through these rows
        (:meth:`faces_of`). Rows without ``finished_at`` (not written by ``mien annotate``) cannot
        be placed against a watermark and are skipped with a warning.
        """
        columns = ["video_id", "video_uri", "run_id", "finished_ms", "part"]
        index = self._rows()
        ok = index[index["current"] & (index["status"] == "ok")]
        unfinished = ok["finished_ms"].isna()
        if unfinished.any():
            log.warning("%s: skipping %d ok videos row(s) without finished_at (not written by mien annotate?)",
                        self.root, int(unfinished.sum()))
        rows = ok[~unfinished][columns].astype({"finished_ms": "int64"})
        if since_ms is not None:
            rows = rows[rows["finished_ms"] > since_ms]
        return rows.reset_index(drop=True)

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
