"""``mien export openface``: one CSV per video in the column conventions of OpenFace 2.0
``FeatureExtraction`` / ``FaceLandmarkVidMulti``, so scripts written for OpenFace read mien output.

The layout is that of OpenFace run with ``-pose -aus`` (OpenFace writes only the column
groups it is asked for): ``", "``-separated, header first, one row per face per frame,
sorted by frame then face. Read it like OpenFace output::

    pd.read_csv(path, skipinitialspace=True)   # or strip the column names

Columns and where their values come from
----------------------------------------
``frame``        ``frame_index + 1`` (OpenFace counts frames from 1; mien's ``frame_index`` is 0-based)
``face_id``      ``track_id`` (stable per tracked face within the video, like OpenFace's multi-face id)
``timestamp``    ``timestamp_s``: presentation time in seconds from the stream start
``confidence``   ``det_score``: the face detector's score in [0, 1]. OpenFace reports its landmark
                 tracker's confidence here; both mean "how sure the face/geometry is"
``success``      always 1: mien writes a row only for a detected face. OpenFace also writes
                 ``success = 0`` rows for frames where tracking failed; mien does not record
                 which sampled frames had no face, so those rows are absent
``pose_Tx/Ty/Tz`` empty (NaN): head translation in mm needs camera intrinsics, which mien does not
                 estimate
``pose_Rx/Ry/Rz`` radians from mien's ``pose`` (yaw, pitch, roll in degrees): ``Rx = pitch``,
                 ``Ry = yaw``, ``Rz = roll``, as OpenFace names them. Signs follow mien's
                 convention (``workflows/faces/landmarks.pose_from_matrix``: yaw > 0 towards
                 the image's right, pitch > 0 up, roll > 0 counter-clockwise as seen), which need
                 not match OpenFace's camera-frame signs. Empty where mien has no pose (NaN)
``AUxx_c``       presence, 1.0 / 0.0: 1 when the AU is in ``au_active`` (mien's thresholded
                 decision), 0 when mien scored it below the threshold. Empty for AUs mien did not
                 score on that face (absent from ``au_probs``) and for ``AU28_c`` (mien has no
                 AU28)
``AUxx_r``       empty by default: OpenFace's ``_r`` is an intensity on the 0–5 FACS scale and mien
                 estimates presence probabilities, not intensities. ``--au-intensity probability``
                 writes ``5 × P(AU)`` instead, a monotone proxy that is NOT a calibrated intensity
``mien_*``       extra columns OpenFace does not have (scripts that select columns by name ignore
                 them): ``mien_track_segment``, ``mien_fe_label``, ``mien_fe_confidence``,
                 ``mien_bbox_x0..y1`` (source px) and ``mien_AUxx_p`` (the probability of every AU
                 mien scores, including AUs OpenFace lacks such as AU16 or AU24)

Not written (OpenFace groups mien has no equivalent for): gaze (``gaze_*``, ``eye_lmk_*``),
68-point 2D/3D landmarks (``x_*``, ``y_*``, ``X_*``…; mien keeps 5 keypoints in
``landmarks_5``), PDM shape parameters (``p_*``).

Next to the CSVs, ``videos.csv`` lists every video with its status, error and CSV file name
(error videos get no CSV; an ok video without faces gets a header-only CSV).
"""

from __future__ import annotations

import csv
import dataclasses
import io
import math
import re
from typing import Any

from model.taxonomy import AU_NAMES
from workflows.core import storage
from workflows.corpus.reader import AnnotationOutput

# OpenFace 2.0's AU sets and their order in the CSV.
OPENFACE_AU_R: tuple[str, ...] = ("AU01", "AU02", "AU04", "AU05", "AU06", "AU07", "AU09", "AU10", "AU12", "AU14",
                                  "AU15", "AU17", "AU20", "AU23", "AU25", "AU26", "AU45")
OPENFACE_AU_C: tuple[str, ...] = ("AU01", "AU02", "AU04", "AU05", "AU06", "AU07", "AU09", "AU10", "AU12", "AU14",
                                  "AU15", "AU17", "AU20", "AU23", "AU25", "AU26", "AU28", "AU45")
OPENFACE_HEAD = ("frame", "face_id", "timestamp", "confidence", "success")
OPENFACE_POSE = ("pose_Tx", "pose_Ty", "pose_Tz", "pose_Rx", "pose_Ry", "pose_Rz")
SEPARATOR = ", "  # what OpenFace's RecorderCSV writes between fields, header included
FACE_COLUMNS = ["frame_index", "timestamp_s", "track_id", "segment_id", "bbox", "det_score", "pose",
                "fe_label", "fe_confidence", "au_probs", "au_active"]
AU_INTENSITY_MODES = ("none", "probability")


@dataclasses.dataclass
class OpenFaceExport:
    """What ``export_openface`` wrote."""

    directory: str
    files: dict[str, str]  # video_id -> CSV URI
    rows: int
    skipped_errors: int


def columns() -> list[str]:
    """The header: OpenFace's ``-pose -aus`` columns, then mien's extras."""
    return ([*OPENFACE_HEAD, *OPENFACE_POSE, *(f"{a}_r" for a in OPENFACE_AU_R),
             *(f"{a}_c" for a in OPENFACE_AU_C), "mien_track_segment", "mien_fe_label", "mien_fe_confidence",
             "mien_bbox_x0", "mien_bbox_y0", "mien_bbox_x1", "mien_bbox_y1"]
            + [f"mien_{a}_p" for a in AU_NAMES])


def _num(v: Any, digits: int) -> str:
    if v is None:
        return ""
    f = float(v)
    return "" if not math.isfinite(f) else f"{f:.{digits}f}"


def openface_row(face: dict[str, Any], au_intensity: str = "none") -> list[str]:
    """One face row (a dict of faces columns) as OpenFace CSV fields, in :func:`columns` order."""
    probs = dict(face.get("au_probs") or [])
    active = set(face.get("au_active") or [])
    pose = list(face.get("pose") or [math.nan] * 3)
    yaw, pitch, roll = (math.radians(float(x)) if x is not None else math.nan for x in pose[:3])
    out = [str(int(face["frame_index"]) + 1), str(int(face["track_id"])), _num(face["timestamp_s"], 6),
           _num(face.get("det_score"), 4), "1", "", "", "", _num(pitch, 4), _num(yaw, 4), _num(roll, 4)]
    for a in OPENFACE_AU_R:
        p = probs.get(a)
        out.append(_num(5.0 * p, 3) if au_intensity == "probability" and p is not None else "")
    for a in OPENFACE_AU_C:
        out.append("" if a not in probs else ("1.0" if a in active else "0.0"))
    bbox = list(face.get("bbox") or [math.nan] * 4)
    label = str(face.get("fe_label") or "")
    out += [str(int(face.get("segment_id") or 0)), label, _num(face.get("fe_confidence"), 4),
            *(_num(b, 1) for b in bbox)]
    out += [_num(probs.get(a), 4) for a in AU_NAMES]
    return out


def _render_csv(rows: list[list[str]], header: list[str]) -> str:
    # OpenFace separates fields with ", " and never quotes; a field can only hold a comma or a
    # newline through a free-text label, which is flattened rather than quoted.
    def clean(field: str) -> str:
        return field.replace(",", ";").replace("\n", " ").replace("\r", " ")

    return "".join(SEPARATOR.join(clean(f) for f in r) + "\n" for r in [header, *rows])


def csv_name(video_id: str, uri: str) -> str:
    """``<source file stem>-<video_id>.csv`` (the stem keeps it findable, the id keeps it unique)."""
    stem = str(uri).rstrip("/").rsplit("/", 1)[-1].rsplit(".", 1)[0]
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", stem).strip("._") or "video"
    return f"{stem[:80]}-{video_id}.csv"


def export_openface(root: str, directory: str, au_intensity: str = "none") -> OpenFaceExport:
    """Write one OpenFace-style CSV per ok video of the output at ``root`` into ``directory``."""
    if au_intensity not in AU_INTENSITY_MODES:
        raise ValueError(f"au_intensity must be one of {AU_INTENSITY_MODES}, got {au_intensity!r}")
    out = AnnotationOutput(root)
    storage.makedirs(directory)
    videos = out.current_videos()
    ok = {v["video_id"]: v for v in videos if v["status"] == "ok"}
    header = columns()
    files: dict[str, str] = {}
    n_rows = 0
    for vid, faces in out.faces_by_video(FACE_COLUMNS):
        if vid not in ok:  # faces left by an older run of a video that is now an error
            continue
        rows = [openface_row(f, au_intensity) for f in faces.to_pylist()]
        uri = storage.join(directory, csv_name(vid, ok[vid]["video_uri"]))
        storage.write_text(uri, _render_csv(rows, header))
        files[vid] = uri
        n_rows += len(rows)
    for vid, v in ok.items():  # ok videos without faces: header only, so every ok video has a file
        if vid not in files:
            uri = storage.join(directory, csv_name(vid, v["video_uri"]))
            storage.write_text(uri, _render_csv([], header))
            files[vid] = uri
    index = [["video_id", "video_uri", "status", "error_kind", "error", "n_faces", "csv"]]
    for v in videos:
        csv_file = files[v["video_id"]].rsplit("/", 1)[-1] if v["video_id"] in files else ""
        index.append([v["video_id"], v["video_uri"], v["status"], v.get("error_kind") or "", v.get("error") or "",
                      str(v.get("n_faces") or 0), csv_file])
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows(index)
    storage.write_text(storage.join(directory, "videos.csv"), buf.getvalue())
    return OpenFaceExport(directory, files, n_rows, sum(v["status"] != "ok" for v in videos))
