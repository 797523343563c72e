"""``mien.read``: an annotate output as pandas DataFrames, through the one reader of outputs.

Every table comes from :class:`workflows.corpus.reader.AnnotationOutput`, so a notebook sees what
``mien inspect``, training and evaluation see: committed parts only (a run in progress or a
crashed run's leftovers never show) and one current row per video, its newest, with that row's
faces and tracks.

With ``flat=True`` (the default) each probability map becomes one float32 column per class, a
column a user can filter and plot::

    fe_probs     -> fe_prob_neutral, fe_prob_happiness, ... (FE_BASIC order), one per class
    au_probs     -> au_prob_AU01, au_prob_AU02, ...         (AU_NAMES order)
    au_evidence  -> au_evidence_AU01, ...
    fe_prior     -> fe_prior_neutral, ...
    meta         -> meta_subject, ...                       (videos: the manifest's other columns, text)

NaN where a face's map has no entry for the class (an AU the model cannot score). Every class
of the taxonomy gets its column even when no row has it, so code written for one output runs
on another (an empty one included); a class outside the taxonomy (a VLM's own labels) gets a
column too. The conversion is columnar (``pyarrow.compute.map_lookup``, one pass per class).
"""

from __future__ import annotations

import functools
import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pandas and pyarrow load on first read: `import mien` stays cheap
    import pandas as pd
    import pyarrow as pa

    from workflows.corpus.reader import AnnotationOutput

# map column -> prefix of its flat columns
FLAT_PREFIXES = {"fe_probs": "fe_prob_", "au_probs": "au_prob_", "au_evidence": "au_evidence_",
                 "fe_prior": "fe_prior_", "meta": "meta_"}


class AnnotationTables:
    """The ``videos``, ``faces`` and ``tracks`` of one annotate output as DataFrames, each read
    on first access and kept (read again with :func:`read` after another run).

    ``videos``: one row per video (its current row, ``ok`` or ``error``; errors first), the
    columns of docs/OUTPUT.md plus ``attempts`` (rows the video has across runs).
    ``faces``: one row per detected face per sampled frame, sorted by video, time, track, plus
    ``video_uri``. ``tracks``: one row per face-track segment, sorted by video, start, track.
    Integer columns are pandas nullable integers (``<NA>`` where unknown, e.g. ``track_id`` of
    an untracked face); ``finished_at`` is a UTC timestamp; times are seconds, boxes and
    landmarks source pixels, ``pose`` degrees (docs/OUTPUT.md has every column).
    """

    def __init__(self, output: AnnotationOutput, *, flat: bool, crops: bool):
        self.source = output
        self.flat = flat
        self.crops = crops

    @property
    def output(self) -> str:
        """The output root as read (an absolute local path or an ``s3://`` URI)."""
        return self.source.root

    def __repr__(self) -> str:
        return f"AnnotationTables({self.output!r}, flat={self.flat}, crops={self.crops})"

    @functools.cached_property
    def videos(self) -> pd.DataFrame:
        import pyarrow as pa

        from workflows.corpus import schema

        rows = self.source.current_videos()
        sch = schema.VIDEOS.append(pa.field("attempts", pa.int64()))
        return _to_pandas(pa.Table.from_pylist(rows, schema=sch), flat=self.flat)

    @functools.cached_property
    def faces(self) -> pd.DataFrame:
        from workflows.corpus import schema

        columns = [n for n in schema.FACES.names if self.crops or n != "crop_jpeg"]
        t = self.source.read("faces", columns)
        t = t.sort_by([("video_id", "ascending"), ("timestamp_s", "ascending"), ("track_id", "ascending")])
        df = _to_pandas(t, flat=self.flat)
        uris = dict(zip(self.videos["video_id"], self.videos["video_uri"], strict=True))
        df.insert(1, "video_uri", df["video_id"].map(uris))
        return df

    @functools.cached_property
    def tracks(self) -> pd.DataFrame:
        t = self.source.read("tracks")
        t = t.sort_by([("video_id", "ascending"), ("start_s", "ascending"), ("track_id", "ascending")])
        return _to_pandas(t, flat=self.flat)


def read(output: str | os.PathLike[str], *, flat: bool = True, crops: bool = False) -> AnnotationTables:
    """The tables of the annotate output ``output`` (a local directory or ``s3://`` prefix; a
    relative path is taken from the working directory). ``.videos``, ``.faces`` and ``.tracks``
    are DataFrames read on first access (each holds the whole table in memory).

    ``flat=True``: probability maps as one float column per class (``fe_prob_happiness``,
    ``au_prob_AU12``; module docstring); ``flat=False``: each map as a dict per row.
    ``crops=True`` adds ``crop_jpeg`` (the aligned face crop, JPEG bytes, ~10-30 kB a face: left
    out by default). Raises :class:`~workflows.corpus.reader.OutputError` when ``output`` is not
    an annotate output.
    """
    from workflows.core import storage
    from workflows.corpus.reader import AnnotationOutput

    return AnnotationTables(AnnotationOutput(storage.absolute(os.fspath(output))), flat=flat, crops=crops)


def flatten_maps(table: pa.Table) -> pa.Table:
    """``table`` with each map column (:data:`FLAT_PREFIXES`) replaced, in place, by one column per
    key: for probabilities the taxonomy's classes in its order, then any other key found, sorted
    (NaN where a row has no entry); for ``meta`` the manifest's column names, sorted (None where
    a row has no value)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    from model.taxonomy import AU_NAMES, FE_BASIC

    for name, prefix in FLAT_PREFIXES.items():
        if name not in table.column_names:
            continue
        col = table.column(name)
        at = table.column_names.index(name)
        table = table.remove_column(at)
        known = () if name == "meta" else FE_BASIC if name.startswith("fe_") else AU_NAMES
        extra = sorted(set(_map_keys(col)) - set(known))
        for i, key in enumerate([*known, *extra]):
            values = pc.map_lookup(col, pa.scalar(key, col.type.key_type), "first")
            table = table.add_column(at + i, prefix + key, values if name == "meta" else values.fill_null(float("nan")))
    return table


def _map_keys(col: pa.ChunkedArray) -> list[str]:
    """Distinct keys of a map column (as a list of key/value structs: compute has no map kernels)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    entries = pa.list_(pa.struct([("key", col.type.key_type), ("value", col.type.item_type)]))
    return pc.unique(pc.struct_field(pc.list_flatten(col.cast(entries)), "key")).to_pylist()


def _to_pandas(table: pa.Table, *, flat: bool) -> pd.DataFrame:
    import pandas as pd
    import pyarrow as pa

    if flat:
        table = flatten_maps(table)
    nullable = {pa.int32(): pd.Int32Dtype(), pa.int64(): pd.Int64Dtype()}
    return table.to_pandas(types_mapper=nullable.get, maps_as_pydicts="lossy")
