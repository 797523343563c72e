"""The output contract (DESIGN.md §3) as explicit pyarrow schemas, and row builders.

``videos/`` one row per input video and run; ``faces/`` one row per detected face per
sampled frame; ``tracks/`` one row per face-track segment. Map columns (``fe_probs``,
``au_probs``) map a label name to a probability, so a reader needs no side table to know
which index is which class.
"""

from __future__ import annotations

import pyarrow as pa

PROBS = pa.map_(pa.string(), pa.float32())

VIDEOS = pa.schema([
    ("video_id", pa.string()),
    ("video_uri", pa.string()),
    ("status", pa.string()),            # "ok" | "error"
    ("error", pa.string()),             # null when ok; readable message when error
    ("error_kind", pa.string()),        # short tag: invalid_data, no_video_stream, too_large, ...
    ("n_frames", pa.int32()),           # sampled frames
    ("n_faces", pa.int32()),
    ("n_tracks", pa.int32()),
    ("duration_s", pa.float64()),
    ("width", pa.int32()),              # display width (after rotation)
    ("height", pa.int32()),
    ("fps", pa.float64()),
    ("codec", pa.string()),
    ("rotation", pa.int32()),
    ("sampling", pa.string()),
    ("decode_faces_s", pa.float64()),   # wall seconds in decode + face extraction
    ("decode_faces_cpu_s", pa.float64()),  # CPU seconds of the same (below wall: CPU-starved actor)
    ("mllm_s", pa.float64()),           # wall seconds in the MLLM stage
    ("model_id", pa.string()),
    ("run_id", pa.string()),
    ("finished_at", pa.timestamp("ms", tz="UTC")),
    # The manifest line's other columns (e.g. subject, session, split) as text; null for a
    # directory or object-store input.
    ("meta", pa.map_(pa.string(), pa.string())),
])

FACES = pa.schema([
    ("video_id", pa.string()),
    ("frame_index", pa.int32()),
    ("timestamp_s", pa.float64()),
    ("track_id", pa.int32()),
    ("segment_id", pa.int32()),
    ("bbox", pa.list_(pa.float32())),          # x0, y0, x1, y1 in source pixels
    ("det_score", pa.float32()),
    ("landmarks_5", pa.list_(pa.float32())),  # x, y of eyes, nose, mouth corners (source px)
    ("pose", pa.list_(pa.float32())),          # yaw, pitch, roll in degrees (NaN if unknown)
    ("age", pa.float32()),
    ("gender", pa.string()),
    ("gender_score", pa.float32()),
    ("fe_label", pa.string()),
    ("fe_confidence", pa.float32()),
    ("fe_probs", PROBS),
    ("au_probs", PROBS),                          # AU name -> probability; unavailable AUs absent
    ("au_active", pa.list_(pa.string())),
    ("au_evidence", PROBS),                       # face-prior AU evidence after per-track normalisation
    ("fe_prior", PROBS),                          # the expression classifier's own probabilities
    # 52 MediaPipe blendshape scores in [0, 1] in workflows.faces.landmarks.BLENDSHAPE_NAMES
    # order (the model's input vector as is); null when the face mesh found no face
    ("blendshapes", pa.list_(pa.float32())),
    ("flags", pa.list_(pa.string())),
    ("description", pa.string()),
    ("crop_jpeg", pa.binary()),                   # aligned face crop, JPEG (null if disabled)
    ("model_id", pa.string()),
    ("run_id", pa.string()),
])

TRACKS = pa.schema([
    ("video_id", pa.string()),
    ("track_id", pa.int32()),
    ("segment_id", pa.int32()),
    ("start_s", pa.float64()),
    ("end_s", pa.float64()),
    ("n_frames", pa.int32()),
    ("fe_label", pa.string()),
    ("fe_confidence", pa.float32()),
    ("fe_probs", PROBS),
    ("au_probs", PROBS),
    ("au_active", pa.list_(pa.string())),
    ("description", pa.string()),
    ("model_id", pa.string()),
    ("run_id", pa.string()),
])

TABLES = {"videos": VIDEOS, "faces": FACES, "tracks": TRACKS}


def table(name: str, rows: list[dict]) -> pa.Table:
    """Rows (dicts) → a table with the contract schema; missing optional columns become null."""
    schema = TABLES[name]
    cols = {f.name: [r.get(f.name) for r in rows] for f in schema}
    return pa.Table.from_pydict(cols, schema=schema)


def probs_map(names: tuple[str, ...] | list[str], values) -> list[tuple[str, float]]:
    """Pairs for a map column, skipping NaN (unavailable) entries."""
    out = []
    for n, v in zip(names, values, strict=True):
        fv = float(v)
        if fv == fv:  # not NaN
            out.append((n, fv))
    return out
