"""The model's face batch: what ``FacialAnnotator.annotate`` and ``FacialMLLM.face_inputs`` read,
defined once, with the one builder that every path uses.

The annotate stage (from the face stage's per-video arrays), training (``FacialMLLM.collate``
over dataset items) and evaluation (the face rows of a held-out table) all build their batch
with :func:`build_face_batch`, so an input the model reads cannot be measured when annotating
and missing in training, or the other way round.

A batch of B faces is a dict (numpy arrays; lists for strings)::

    field        shape, dtype          meaning, unit, order                              in the batch
    crop         (B, S, S, 3) uint8    aligned face crop, RGB                            if a face has one
    au_evidence  (B, 23) float32       AU evidence in [0, 1], AU_NAMES order,            always
                                       normalised per track
    fe_prior     (B, 7) float32        expression classifier's softmax, FE_BASIC order   always
    blendshapes  (B, 52) float32       MediaPipe blendshape scores in [0, 1], in         always
                                       workflows.faces.landmarks.BLENDSHAPE_NAMES order
    pose         (B, 3) float32        head yaw, pitch, roll in degrees                  always
    landmarks    (B, 10) float32       5 points x0, y0, ..., x4, y4 (eyes, nose, mouth   if a face has them
                                       corners); no pipeline produces them yet
    identity     (B, 512) float32      face-recognition embedding; none produced yet     if a face has one
    age          (B,) float32          years                                             always
    gender       list[str | None]      "female" | "male"                                 always
    race         list[str | None]      read only when a model config asks for it         if a face has one
    track_key    (B,) int64            equal for the faces of one track segment          always

NaN in a float field means "not measured": the face-prior encoder sees an availability mask,
never a zero, and the calibrated prior skips it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from model.taxonomy import AU_NAMES, FE_BASIC

# Float vector fields and their width per face.
VECTOR_WIDTHS: dict[str, int] = {
    "au_evidence": len(AU_NAMES),
    "fe_prior": len(FE_BASIC),
    "blendshapes": 52,  # len(workflows.faces.landmarks.BLENDSHAPE_NAMES)
    "pose": 3,
    "landmarks": 10,
    "identity": 512,
}
# Fields a batch carries only when some face has them (the others are always there, NaN/None
# where not measured).
OPTIONAL_FIELDS: frozenset[str] = frozenset({"crop", "landmarks", "identity", "race"})
FIELDS: tuple[str, ...] = ("crop", *VECTOR_WIDTHS, "age", "gender", "race", "track_key")


def build_face_batch(faces: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Per-face mappings → a face batch (fields, shapes and units in the module docstring).

    A face holds any of :data:`FIELDS` for one face: ``crop`` (S, S, 3) uint8; a float vector of
    its width as any sequence; ``age`` in years; ``gender`` / ``race`` strings; ``track_key``
    an int. Absent or None (NaN age, empty strings) means not measured. Without ``track_key``
    a face is its own segment (its position in ``faces``). Faces without a crop, in a batch
    where others have one, get a black crop. Keys that are not fields (a training example's
    ``question`` and ``answer``) are ignored.
    """
    n = len(faces)
    batch: dict[str, Any] = {}
    for name, width in VECTOR_WIDTHS.items():
        values = [f.get(name) for f in faces]
        if name in OPTIONAL_FIELDS and all(v is None for v in values):
            continue
        out = np.full((n, width), np.nan, np.float32)
        for i, v in enumerate(values):
            if v is not None:
                a = np.asarray(v, np.float32).reshape(-1)
                if a.size != width:
                    raise ValueError(f"{name}: expected {width} values per face, got {a.size} (face {i})")
                out[i] = a
        batch[name] = out
    crops = [f.get("crop") for f in faces]
    ref = next((np.asarray(c) for c in crops if c is not None), None)
    if ref is not None:
        if ref.dtype != np.uint8 or ref.ndim != 3 or ref.shape[2] != 3:
            raise ValueError(f"crop: expected (S, S, 3) uint8 RGB, got {ref.shape} {ref.dtype}")
        batch["crop"] = np.stack([np.zeros_like(ref) if c is None else np.asarray(c) for c in crops])
    batch["age"] = np.array([_number(f.get("age")) for f in faces], np.float32)
    batch["gender"] = [_text(f.get("gender")) for f in faces]
    race = [_text(f.get("race")) for f in faces]
    if any(r is not None for r in race):
        batch["race"] = race
    batch["track_key"] = np.array([i if f.get("track_key") is None else int(f["track_key"])
                                   for i, f in enumerate(faces)], np.int64)
    return batch


def _number(v: Any) -> float:
    return float("nan") if v is None else float(v)


def _text(v: Any) -> str | None:
    return str(v) if v is not None and str(v) else None


def batch_rows(batch: Mapping[str, Any]) -> int:
    """Number of faces in a face batch."""
    for key in ("au_evidence", "fe_prior", "crop", "age", "track_key"):
        if batch.get(key) is not None:
            return len(batch[key])
    raise ValueError("empty batch: none of au_evidence, fe_prior, crop, age, track_key given")


def slice_batch(batch: Mapping[str, Any], rows: list[int] | np.ndarray) -> dict[str, Any]:
    """The faces ``rows`` of a batch (arrays indexed, lists picked)."""
    idx = np.asarray(rows, dtype=np.int64)
    out: dict[str, Any] = {}
    for k, v in batch.items():
        if v is None:
            out[k] = None
        elif isinstance(v, list | tuple):
            out[k] = [v[i] for i in idx]
        else:
            out[k] = np.asarray(v)[idx]
    return out
