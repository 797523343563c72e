"""Corpus-level aggregates of an annotate output: what ``mien inspect`` prints and
``mien report`` draws.

Faces are aggregated part by part from a few light columns (never the crops), so a summary
of millions of faces needs memory for one part's labels, not for the table.
"""

from __future__ import annotations

import collections
import dataclasses
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from model.taxonomy import AU_NAMES, FE_BASIC
from workflows.corpus.reader import AnnotationOutput

FACE_COLUMNS = ["video_id", "fe_label", "au_active", "au_probs", "model_id"]


@dataclasses.dataclass
class OutputSummary:
    """Counts over one output root. Label dicts are in canonical order (FE_BASIC, AU_NAMES)."""

    root: str
    videos: list[dict[str, Any]]  # current row per video (AnnotationOutput.current_videos)
    video_rows: int  # rows in videos/ across runs
    faces: int
    tracks: int
    fe_faces: dict[str, int]  # faces per fe_label
    fe_tracks: dict[str, int]  # track segments per fe_label
    au_active: dict[str, int]  # faces on which each AU is active
    au_available: dict[str, int]  # faces that carry a probability for each AU
    au_mean: dict[str, float]  # mean probability over faces that carry it
    model_ids: dict[str, int]  # faces per model_id
    runs: list[dict[str, Any]]
    video_fe: dict[str, dict[str, int]]  # video_id -> faces per fe_label
    damaged: list[dict[str, Any]]  # parts left out (AnnotationOutput.damaged, DamagedPart.to_dict)
    repair: str  # how to repair them (AnnotationOutput.repair_advice); empty when none is damaged

    @property
    def n_ok(self) -> int:
        return sum(v["status"] == "ok" for v in self.videos)

    @property
    def n_error(self) -> int:
        return sum(v["status"] != "ok" for v in self.videos)

    @property
    def errors_by_kind(self) -> dict[str, int]:
        c = collections.Counter(str(v.get("error_kind") or "unknown") for v in self.videos if v["status"] != "ok")
        return dict(c.most_common())

    @property
    def sampled_frames(self) -> int:
        return sum(int(v.get("n_frames") or 0) for v in self.videos if v["status"] == "ok")

    @property
    def duration_s(self) -> float:
        return sum(float(v.get("duration_s") or 0.0) for v in self.videos if v["status"] == "ok")

    def dominant_fe(self, video_id: str) -> tuple[str, float] | None:
        """The most frequent face label of a video and its share of the video's faces."""
        counts = self.video_fe.get(video_id)
        if not counts:
            return None
        label, n = max(counts.items(), key=lambda kv: kv[1])
        return label, n / sum(counts.values())

    @property
    def rejected(self) -> list[dict[str, Any]]:
        """Input entries the newest run refused (manifest lines, directory entries), each with its
        ``entry``, ``line`` and ``reason``: every run discovers its input again, so an older run's
        refusals are either repeated here or were fixed."""
        return list((self.runs[-1].get("rejected") or []) if self.runs else [])

    @property
    def skipped_non_media(self) -> dict[str, int]:
        """Files of the newest run's input that are not media, per extension (not annotated, by design)."""
        return dict(((self.runs[-1].get("counts") or {}).get("skipped_non_media") or {}) if self.runs else {})

    def top_aus(self, k: int = 5) -> list[tuple[str, float]]:
        """The ``k`` AUs active on the largest share of faces, with that share."""
        shares = [(a, n / self.faces) for a, n in self.au_active.items() if self.faces and n]
        return sorted(shares, key=lambda x: -x[1])[:k]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary (``mien inspect --json``)."""
        return {
            "root": self.root, "video_rows": self.video_rows, "videos": len(self.videos),
            "videos_ok": self.n_ok, "videos_error": self.n_error, "errors_by_kind": self.errors_by_kind,
            "sampled_frames": self.sampled_frames, "duration_s": self.duration_s,
            "faces": self.faces, "tracks": self.tracks, "fe_faces": self.fe_faces,
            "fe_tracks": self.fe_tracks, "au_active": self.au_active, "au_mean": self.au_mean,
            "model_ids": self.model_ids, "damaged": self.damaged, "repair": self.repair or None,
            "rejected": self.rejected, "skipped_non_media": self.skipped_non_media,
            "runs": [{k: r.get(k) for k in ("run_id", "started_at", "model_id", "input", "counts", "timings")}
                     for r in self.runs],
        }


def _canonical(counts: dict[str, Any], order: tuple[str, ...]) -> dict[str, Any]:
    known = [k for k in order if k in counts]
    extra = sorted(k for k in counts if k not in order)
    return {k: counts[k] for k in known + extra}


def _value_counts(arr: pa.ChunkedArray | pa.Array) -> dict[str, int]:
    vc = pc.value_counts(arr)
    return {str(v): int(n) for v, n in zip(vc.field("values").to_pylist(), vc.field("counts").to_pylist(),
                                            strict=True) if v is not None}


def map_entries(chunk: pa.MapArray) -> tuple[pa.Array, pa.Array]:
    """Keys and values of every entry of a map array, honouring the array's slice offset."""
    if not len(chunk):
        return pa.array([], pa.string()), pa.array([], pa.float32())
    start, end = chunk.offsets[0].as_py(), chunk.offsets[-1].as_py()
    return chunk.keys.slice(start, end - start), chunk.items.slice(start, end - start)


def summarize(output: AnnotationOutput) -> OutputSummary:
    """Aggregate videos, faces, tracks and runs of ``output``."""
    videos = output.current_videos()
    fe_faces: collections.Counter[str] = collections.Counter()
    au_active: collections.Counter[str] = collections.Counter()
    au_sum: collections.Counter[str] = collections.Counter()
    au_n: collections.Counter[str] = collections.Counter()
    model_ids: collections.Counter[str] = collections.Counter()
    video_fe: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    n_faces = 0
    for uri in output.parts("faces"):
        t = output.read_part(uri, FACE_COLUMNS)
        if not len(t):
            continue
        n_faces += len(t)
        fe_faces.update(_value_counts(t.column("fe_label")))
        model_ids.update(_value_counts(t.column("model_id")))
        au_active.update(_value_counts(pc.list_flatten(t.column("au_active"))))
        for chunk in t.column("au_probs").chunks:
            keys, values = map_entries(chunk)
            if not len(keys):
                continue
            g = pa.table({"k": keys, "v": values}).group_by("k").aggregate([("v", "sum"), ("v", "count")])
            for k, s, n in zip(g["k"].to_pylist(), g["v_sum"].to_pylist(), g["v_count"].to_pylist(),
                               strict=True):
                au_sum[k] += s
                au_n[k] += n
        g = t.select(["video_id", "fe_label"]).group_by(["video_id", "fe_label"]).aggregate(
            [("fe_label", "count")])
        for vid, label, n in zip(g["video_id"].to_pylist(), g["fe_label"].to_pylist(),
                                 g["fe_label_count"].to_pylist(), strict=True):
            if label is not None:
                video_fe[vid][label] += n
    tracks = output.read("tracks", ["fe_label"])
    return OutputSummary(
        root=output.root, videos=videos, video_rows=len(output.videos()), faces=n_faces, tracks=len(tracks),
        fe_faces=_canonical(dict(fe_faces), FE_BASIC),
        fe_tracks=_canonical(_value_counts(tracks.column("fe_label")) if len(tracks) else {}, FE_BASIC),
        au_active=_canonical({a: au_active.get(a, 0) for a in au_n} | dict(au_active), AU_NAMES),
        au_available=_canonical(dict(au_n), AU_NAMES),
        au_mean=_canonical({k: au_sum[k] / au_n[k] for k in au_n if au_n[k]}, AU_NAMES),
        model_ids=dict(model_ids.most_common()), runs=output.runs(),
        video_fe={k: dict(v) for k, v in video_fe.items()},
        damaged=[d.to_dict() for d in output.damaged], repair=output.repair_advice(),
    )
