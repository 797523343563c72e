"""Write annotations as Parquet parts with commit semantics that make reruns exact.

Each flush writes ``faces/<part>.parquet`` and ``tracks/<part>.parquet`` first and
``videos/<part>.parquet`` last: a videos part is the commit marker of its chunk. A faces or
tracks part without its videos part is the leftover of a crash and is deleted when the next
run prepares the output, so after a crash and rerun every video has exactly one ``ok`` row
and no face row is duplicated. One writer per output root at a time.
"""

from __future__ import annotations

import io
import logging
import time

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from workflows.core import storage
from workflows.corpus import schema
from workflows.corpus.reader import AnnotationOutput, list_parts

log = logging.getLogger(__name__)
TABLE_DIRS = ("faces", "tracks", "videos")


class AnnotationSink:
    """Buffers per-video results and writes them as committed Parquet parts."""

    def __init__(self, output_uri: str, run_id: str, flush_every_videos: int = 64,
                 flush_every_s: float = 30.0):
        self.root = output_uri.rstrip("/")
        self.run_id = run_id
        self.flush_every_videos = flush_every_videos
        self.flush_every_s = flush_every_s
        self._rows: dict[str, list[pa.Table]] = {k: [] for k in TABLE_DIRS}
        self._buffered_videos = 0
        self._seq = 0
        self._last_flush = time.monotonic()
        self.parts_written = 0
        self.bytes_written = 0

    # -- preparing a run --------------------------------------------------------------
    def remove_orphans(self) -> list[str]:
        """Delete faces/tracks parts whose chunk never committed its videos part."""
        output = AnnotationOutput(self.root, must_exist=False)
        removed = []
        for name in ("faces", "tracks"):
            for uri in output.uncommitted_parts(name):
                storage.remove(uri)
                removed.append(uri)
        if removed:
            log.warning("removed %d uncommitted part(s) left by an interrupted run", len(removed))
        return removed

    def done_video_ids(self) -> set[str]:
        """Videos with a committed ``ok`` row: a rerun skips them (resume)."""
        return set(AnnotationOutput(self.root, must_exist=False).committed_videos()["video_id"])

    def forget(self, video_ids: set[str]) -> int:
        """Drop every existing row of ``video_ids`` (``--force``): rewrite the parts that hold them.

        faces/tracks parts are rewritten before their videos part, so a crash in between
        leaves those videos without an ok row: the next run redoes them.
        """
        if not video_ids:
            return 0
        dropped = 0
        for name in ("faces", "tracks", "videos"):
            for uri in list_parts(self.root, name):
                fs, path = storage.filesystem(uri)
                t = storage.with_retries(pq.read_table)(path, filesystem=fs)
                keep = pa.array([v not in video_ids for v in t.column("video_id").to_pylist()], pa.bool_())
                n_drop = len(t) - pc.sum(keep).as_py() if len(t) else 0
                if not n_drop:
                    continue
                dropped += n_drop if name == "videos" else 0
                self._write_table(uri, t.filter(keep))
        return dropped

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
        for name in TABLE_DIRS:  # videos last: it commits the chunk
            tables = self._rows[name]
            t = pa.concat_tables(tables) if tables else schema.TABLES[name].empty_table()
            self._write_table(storage.join(self.root, name, part), t)
            self._rows[name] = []
        self._seq += 1
        self.parts_written += 1
        self._buffered_videos = 0
        self._last_flush = time.monotonic()

    def _write_table(self, uri: str, t: pa.Table) -> None:
        buf = io.BytesIO()
        pq.write_table(t, buf, compression="zstd")
        data = buf.getvalue()
        storage.write_bytes(uri, data)
        self.bytes_written += len(data)
