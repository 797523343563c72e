"""``mien export hf``: the annotations as a Hugging Face dataset directory.

::

    DIR/
      README.md                  dataset card: YAML front matter (configs/data_files) + documentation
      data/faces/*.parquet       config "faces" (default): one row per face, the crop as an Image
      data/tracks/*.parquet      config "tracks": one row per track segment
      data/videos/*.parquet      config "videos": one row per video (its current status)

``datasets.load_dataset(DIR)`` (or ``load_dataset("user/repo")`` after ``huggingface-cli upload``)
reads it with no loading script. Differences from the annotate Parquet, all because of what
``datasets`` supports:

- ``crop_jpeg`` becomes ``image``, stored as ``datasets.Image`` does (``struct<bytes, path>``,
  declared in the Parquet schema metadata), so rows decode to PIL images;
- map columns (``fe_probs``, ``au_probs``, ``au_evidence``, ``fe_prior``) become structs with one
  float field per label (``row["au_probs"]["AU12"]``): ``datasets`` has no map type. Labels a
  face was not scored on are null.

The export streams one annotate part at a time; shards keep the annotate part names.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import io
import json
import logging
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from model.taxonomy import AU_DESCRIPTIONS, AU_NAMES, FE_BASIC
from workflows.core import storage
from workflows.corpus import schema
from workflows.corpus.reader import AnnotationOutput
from workflows.outputs.summary import OutputSummary, map_entries, summarize

log = logging.getLogger(__name__)

IMAGE_TYPE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])  # = datasets.Image().pa_type
HF_METADATA = {b"huggingface": json.dumps({"info": {"features": {"image": {"_type": "Image"}}}}).encode()}
MAP_COLUMNS = {"faces": ("fe_probs", "au_probs", "au_evidence", "fe_prior"), "tracks": ("fe_probs", "au_probs")}
ROW_GROUP_ROWS = 256  # small row groups: image rows are large, and the Hub viewer pages by row group

FACE_COLUMN_DOCS: dict[str, str] = {
    "video_id": "stable id of the source video (same content at the same URI -> same id)",
    "frame_index": "0-based index of the frame in the video stream",
    "timestamp_s": "presentation time of the frame, seconds from the stream start",
    "track_id": "face track within the video",
    "segment_id": "segment of the track (dynamic-FER unit)",
    "image": "aligned face crop (JPEG), decoded to a PIL image; null when crops were disabled",
    "bbox": "face box [x0, y0, x1, y1] in source pixels (after rotation)",
    "det_score": "face detector confidence in [0, 1]",
    "landmarks_5": "eyes, nose, mouth corners as [x0, y0, ..., x4, y4] in source pixels",
    "pose": "head pose [yaw, pitch, roll] in degrees (NaN when unknown)",
    "age": "estimated age in years (model estimate)",
    "gender": "estimated gender presentation, female/male (model estimate)",
    "gender_score": "confidence of the gender estimate",
    "fe_label": "most probable facial expression",
    "fe_confidence": "probability of fe_label",
    "fe_probs": "probability per expression",
    "au_probs": "probability per FACS action unit (null: not scored)",
    "au_active": "action units with probability >= the run's au_threshold",
    "au_evidence": "face-prior AU evidence after per-track normalisation",
    "fe_prior": "the face prior's own expression probabilities",
    "blendshapes": "MediaPipe's 52 ARKit blendshape scores in 0..1, in MediaPipe's order (null without a face mesh)",
    "flags": "quality flags (tiny, border, dark, profile, ...)",
    "description": "free-text description with FE/AU reasoning (null when none was generated)",
    "model_id": "model that produced the labels",
    "run_id": "annotate run that produced the row",
}


@dataclasses.dataclass
class HFExport:
    """What ``export_hf`` wrote."""

    directory: str
    shards: dict[str, list[str]]  # config -> shard URIs
    rows: dict[str, int]


def _label_keys(out: AnnotationOutput, name: str) -> dict[str, list[str]]:
    """Every key each map column of ``name`` uses, canonical labels first (struct fields must agree
    across shards, so they are collected before writing)."""
    found: dict[str, set[str]] = {c: set() for c in MAP_COLUMNS[name]}
    for uri in out.parts(name):
        t = out.read_part(uri, list(MAP_COLUMNS[name]))
        for c in MAP_COLUMNS[name]:
            for chunk in t.column(c).chunks:
                keys, _ = map_entries(chunk)
                found[c].update(pc.unique(keys).to_pylist())
    result = {}
    for c, keys in found.items():
        order = FE_BASIC if c.startswith("fe_") else AU_NAMES
        keys.discard(None)
        # With no data, the canonical labels still give the struct its fields (a struct needs one).
        result[c] = [k for k in order if k in keys or not keys] + sorted(k for k in keys if k not in order)
    return result


def _map_to_struct(col: pa.ChunkedArray, keys: list[str]) -> pa.Array:
    arr = col.combine_chunks()
    fields = [pc.map_lookup(arr, query_key=pa.scalar(k, pa.string()), occurrence="first").cast(pa.float32())
              for k in keys]
    return pa.StructArray.from_arrays(fields, names=keys, mask=pc.is_null(arr))


def _meta_as_struct(videos: pa.Table) -> pa.Table:
    """``videos.meta`` (the manifest's other columns) as a struct of strings, one field per column
    name (sorted): ``datasets`` has no map type. Dropped when no video has any."""
    at = videos.column_names.index("meta")
    col = videos.column("meta").combine_chunks()
    keys, _ = map_entries(col)
    names = sorted(k for k in pc.unique(keys).to_pylist() if k is not None)
    videos = videos.remove_column(at)
    if not names:
        return videos
    fields = [pc.map_lookup(col, query_key=pa.scalar(k, pa.string()), occurrence="first") for k in names]
    return videos.add_column(at, "meta", pa.StructArray.from_arrays(fields, names=names, mask=pc.is_null(col)))


def _hf_table(t: pa.Table, name: str, keys: dict[str, list[str]], images: bool) -> pa.Table:
    cols: dict[str, pa.Array | pa.ChunkedArray] = {}
    for field in t.schema:
        if field.name == "crop_jpeg":
            if images:
                crops = t.column("crop_jpeg").combine_chunks()
                cols["image"] = pa.StructArray.from_arrays(
                    [crops, pa.nulls(len(crops), pa.string())], fields=list(IMAGE_TYPE),
                    mask=pc.is_null(crops))
            continue
        if field.name in MAP_COLUMNS.get(name, ()):
            cols[field.name] = _map_to_struct(t.column(field.name), keys[field.name])
        else:
            cols[field.name] = t.column(field.name)
    if "image" in cols:  # next to the ids, where people look first
        order = ["video_id", "frame_index", "timestamp_s", "track_id", "segment_id", "image"]
        cols = {k: cols[k] for k in order if k in cols} | {k: v for k, v in cols.items() if k not in order}
    table = pa.table(cols)
    return table.replace_schema_metadata(HF_METADATA if "image" in cols else None)


def _remove_stale_shards(directory: str, shards: dict[str, list[str]]) -> None:
    """Delete shards an earlier export left under data/<config>/ (the data_files globs would load them)."""
    for name, written in shards.items():
        try:
            existing = storage.list_files(storage.join(directory, "data", name), (".parquet",))
        except FileNotFoundError:
            continue
        keep = {u.rsplit("/", 1)[-1] for u in written}
        for uri in existing:
            if uri.rsplit("/", 1)[-1] not in keep:
                log.info("removing %s, left by an earlier export", uri)
                storage.remove(uri)


def _write_parquet(t: pa.Table, uri: str) -> None:
    buf = io.BytesIO()
    pq.write_table(t, buf, compression="zstd", row_group_size=ROW_GROUP_ROWS)
    storage.write_bytes(uri, buf.getvalue())


def _size_category(n: int) -> str:
    for limit, label in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"),
                         (1_000_000, "100K<n<1M"), (10_000_000, "1M<n<10M"), (100_000_000, "10M<n<100M")):
        if n < limit:
            return label
    return "100M<n<1B"


def export_hf(root: str, directory: str, images: bool = True, pretty_name: str | None = None) -> HFExport:
    """Write the output at ``root`` as a ``datasets``-loadable directory at ``directory``."""
    out = AnnotationOutput(root)
    shards: dict[str, list[str]] = {"faces": [], "tracks": [], "videos": []}
    rows: dict[str, int] = {"faces": 0, "tracks": 0, "videos": 0}
    for name in ("faces", "tracks"):
        keys = _label_keys(out, name)
        for uri in out.parts(name):
            t = _hf_table(out.read_part(uri), name, keys, images)
            if not len(t):  # `datasets` cannot read a Parquet file without rows
                continue
            dest = storage.join(directory, "data", name, uri.rsplit("/", 1)[-1])
            _write_parquet(t, dest)
            shards[name].append(dest)
            rows[name] += len(t)
    videos = out.current_videos()
    vt = _meta_as_struct(pa.Table.from_pylist(videos, schema=schema.VIDEOS.append(pa.field("attempts", pa.int32()))))
    if len(vt):
        dest = storage.join(directory, "data", "videos", "videos.parquet")
        _write_parquet(vt, dest)
        shards["videos"].append(dest)
        rows["videos"] = len(vt)
    _remove_stale_shards(directory, shards)
    summary = summarize(out)
    storage.write_text(storage.join(directory, "README.md"),
                       dataset_card(summary, rows, images, pretty_name or "mien facial expression annotations"))
    return HFExport(directory, shards, rows)


def _front_matter(rows: dict[str, int], pretty_name: str) -> str:
    import yaml

    # A config without rows has no data files, and `datasets` refuses a config without files.
    names = [n for n in ("faces", "tracks", "videos") if rows[n]]
    configs = [{"config_name": n, **({"default": True} if n == names[0] else {}),
                "data_files": [{"split": "train", "path": f"data/{n}/*.parquet"}]} for n in names]
    meta: dict[str, Any] = {
        "pretty_name": pretty_name,
        "tags": ["facial-expression-recognition", "action-units", "facs", "pseudo-labels", "video", "mien"],
        "task_categories": ["image-classification"],
        "size_categories": [_size_category(rows["faces"])],
        "configs": configs,
    }
    return "---\n" + yaml.safe_dump(meta, sort_keys=False, allow_unicode=True) + "---\n"


def _config_note(name: str, rows: dict[str, int]) -> str:
    if not rows[name]:
        return " (no rows, not declared)"
    return " (default)" if name == next(n for n in ("faces", "tracks", "videos") if rows[n]) else ""


def _md(text: Any) -> str:
    """A value safe inside a Markdown table cell."""
    return str(text).replace("|", "\\|").replace("\n", " ")


def dataset_card(s: OutputSummary, rows: dict[str, int], images: bool, pretty_name: str) -> str:
    """README.md: YAML front matter that ``datasets`` reads, then the documentation people read."""
    lines = [_front_matter(rows, pretty_name), f"# {pretty_name}", "",
             f"Facial-expression (FE) and FACS action-unit (AU) **pseudo-labels** produced by "
             f"mien `annotate` on {len(s.videos)} videos ({s.n_ok} annotated, {s.n_error} "
             f"failed): {rows['faces']} faces in {rows['tracks']} track segments from {s.sampled_frames} sampled "
             f"frames ({s.duration_s:.1f} s of video). Exported {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M UTC}.", "",
             "## Configurations", "",
             "| config | rows | one row per |", "|---|---:|---|",
             *(f"| `{n}`{_config_note(n, rows)} | {rows[n]} | {what} |" for n, what in (
                 ("faces", "detected face on a sampled frame"
                  + (", with its aligned crop as `image`" if images else "")),
                 ("tracks", "face-track segment (labels aggregated over its faces)"),
                 ("videos", "source video: status, error, size, fps, timings"))), "",
             "## Loading", "", "```python", "from datasets import load_dataset", "",
             'faces = load_dataset("path/or/hub-id", "faces", split="train")',
             'tracks = load_dataset("path/or/hub-id", "tracks", split="train")',
             'row = faces[0]; row["fe_label"], row["au_probs"]["AU12"]'
             + (', row["image"]  # PIL image' if images else ""),
             "```", "",
             "Probability maps of the annotate output are structs here (one float per label, null where a "
             "face was not scored), because `datasets` has no map type.", ""]
    if s.faces:
        lines += ["## Expression distribution", "", "| expression | faces | share | track segments |",
                  "|---|---:|---:|---:|"]
        for label, n in s.fe_faces.items():
            lines.append(f"| {_md(label)} | {n} | {100 * n / s.faces:.1f}% | {s.fe_tracks.get(label, 0)} |")
        lines += ["", "## Action units", "", "| AU | name | active on | mean probability |", "|---|---|---:|---:|"]
        for au, n in s.au_active.items():
            mean = s.au_mean.get(au)
            lines.append(f"| {au} | {_md(AU_DESCRIPTIONS.get(au, ''))} | {100 * n / s.faces:.1f}% | "
                         + (f"{mean:.3f}" if mean is not None else "-") + " |")
        lines.append("")
    lines += ["## Columns of `faces`", "", "| column | meaning |", "|---|---|"]
    lines += [f"| `{c}` | {_md(d)} |" for c, d in FACE_COLUMN_DOCS.items() if images or c != "image"]
    lines += ["", "`tracks` carries the same label columns aggregated per track segment, with `start_s`, "
              "`end_s` and `n_frames`; `videos` follows the annotate output contract (one row per video, "
              "its `ok` row when it has one, else its latest error, and `attempts` = rows across runs).", "",
              "## Provenance", "", "| run | model | input | videos ok / error | faces |", "|---|---|---|---:|---:|"]
    for r in s.runs:
        c = r.get("counts") or {}
        lines.append(f"| `{_md(r.get('run_id'))}` | `{_md(r.get('model_id'))}` | {_md(r.get('input', ''))} | "
                     f"{c.get('videos_ok', '-')} / {c.get('videos_error', '-')} | {c.get('faces', '-')} |")
    if s.model_ids:
        lines += ["", "Faces per model: " + ", ".join(f"`{m}` {n}" for m, n in s.model_ids.items()) + "."]
    lines += ["", "## Limitations and responsible use", "",
              "- These are model predictions, not human FACS coding or self-reported emotion. Treat "
              "`fe_confidence` and `au_probs` as scores to filter on, and validate on human-labelled data "
              "before drawing conclusions.",
              "- Age and gender are model estimates of appearance and can be wrong; gender is binary here and "
              "says nothing about identity. Race or ethnicity is not inferred.",
              "- Face crops are personal data. The consent and licence terms of the source videos apply to "
              "this dataset; do not use it to identify people.", ""]
    return "\n".join(lines)
