"""The annotate pipeline's stages as plain classes: each loads its models once in
``__init__`` and maps a batch (dict of columns) to a batch. They run without Ray in a test;
``workflows/annotate/runner.py`` maps them onto Ray Data.

Only small data crosses stages: the face stage emits aligned crops as JPEG plus small
arrays per face (no frames), packed per video into one ``npz`` blob.
"""

from __future__ import annotations

import io
import logging
import math
import time
import traceback
import warnings
from typing import Any

import numpy as np
import pyarrow as pa

from model.face_batch import FIELDS as FACE_FIELDS
from model.face_batch import build_face_batch
from model.taxonomy import AU_NAMES, FE_BASIC
from workflows.core import faults
from workflows.corpus import schema

log = logging.getLogger(__name__)

# Per-video columns the face stage emits and the MLLM stage passes through.
VIDEO_FIELDS = ("video_id", "video_uri", "status", "error", "error_kind", "n_frames", "n_faces", "n_tracks",
                "duration_s", "width", "height", "fps", "codec", "rotation", "sampling", "decode_faces_s",
                "decode_faces_cpu_s")
# Per-video columns the MLLM stage (or the fused stage) emits: the driver's input. With
# ``output.sink=driver`` the faces and tracks travel as Arrow IPC (``faces_ipc``/``tracks_ipc``);
# with ``output.sink=workers`` the stage has written them itself as the chunk ``part`` (file name
# under faces/ and tracks/, ``part_videos`` videos, ``part_bytes`` written) and the row carries only
# counts. Either way ``faces_rows``/``tracks_rows`` and the label counts (``fe_counts``/``au_counts``,
# JSON) are the video's, for the commit record and the run summary.
RESULT_FIELDS = VIDEO_FIELDS + ("mllm_s", "model_id", "faces_ipc", "tracks_ipc", "faces_rows", "tracks_rows",
                                "fe_counts", "au_counts", "part", "part_videos", "part_bytes")


def _encode_jpeg(crop: np.ndarray, quality: int) -> bytes:
    import cv2

    ok, buf = cv2.imencode(".jpg", crop[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise ValueError("JPEG encoding of a face crop failed")
    return buf.tobytes()


def _decode_jpeg(data: bytes) -> np.ndarray:
    import cv2

    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    return img[:, :, ::-1]


def pack_faces(records: list[Any], jpeg_quality: int, extra: dict[str, np.ndarray] | None = None) -> bytes:
    """Face records of one video (or one window of it, with ``extra`` arrays) → one compact npz
    blob (no pickles)."""
    return pack_arrays({**_face_arrays(records), **(extra or {})},
                       [_encode_jpeg(r.crop, jpeg_quality) for r in records])


def _face_arrays(records: list[Any]) -> dict[str, np.ndarray]:
    n = len(records)
    n_au, n_fe = len(AU_NAMES), len(FE_BASIC)

    def arr(get, shape, dtype=np.float32, fill=np.nan):
        out = np.full((n, *shape), fill, dtype=dtype)
        for i, r in enumerate(records):
            v = get(r)
            if v is not None:
                out[i] = v
        return out

    return {
        "frame_index": arr(lambda r: r.frame_index, (), np.int32, -1),
        "timestamp_s": arr(lambda r: r.timestamp_s, (), np.float64),
        "bbox": arr(lambda r: r.bbox, (4,)),
        "det_score": arr(lambda r: r.det_score, ()),
        "kps": arr(lambda r: r.kps, (5, 2)),
        "pose": arr(lambda r: r.pose, (3,)),
        "age": arr(lambda r: r.age, ()),
        "gender_score": arr(lambda r: r.gender_score, ()),
        "au_evidence": arr(lambda r: r.au_evidence, (n_au,)),
        "fe_prior": arr(lambda r: r.fe_prior, (n_fe,)),
        "blendshapes": arr(lambda r: r.blendshapes, (52,)),
        "track_id": arr(lambda r: r.track_id, (), np.int32, -1),
        "segment_id": arr(lambda r: r.segment_id, (), np.int32, 0),
        "gender": np.array([r.gender or "" for r in records], dtype="U8"),
        "flags": np.array([",".join(r.flags or []) for r in records], dtype="U512"),
    }


def pack_arrays(arrays: dict[str, np.ndarray], crops_jpeg: list[bytes]) -> bytes:
    """Per-face arrays and their JPEG crops → the npz blob :func:`unpack_faces` reads."""
    payload = {**arrays, "crop_lengths": np.array([len(c) for c in crops_jpeg], np.int64),
               "crops": np.frombuffer(b"".join(crops_jpeg), np.uint8) if crops_jpeg else np.zeros(0, np.uint8)}
    buf = io.BytesIO()
    np.savez(buf, **payload)
    return buf.getvalue()


def window_extras(records: list[Any], step_times: list[float], face_steps: list[int]) -> dict[str, np.ndarray]:
    """What the merge of a video's windows needs besides the faces to link them as one video
    (``FaceExtractor.extract``): every sampled frame's time, each face's frame, identity embeddings."""
    extra = {"step_times": np.asarray(step_times, np.float64), "face_step": np.asarray(face_steps, np.int32)}
    dims = {len(np.ravel(r.embedding)) for r in records if r.embedding is not None}
    if dims:
        emb = np.full((len(records), max(dims)), np.nan, np.float32)
        for i, r in enumerate(records):
            if r.embedding is not None:
                emb[i] = np.ravel(r.embedding)
        extra["embedding"] = emb
    return extra


def merge_windows(packs: list[bytes], faces_cfg: Any) -> tuple[bytes, int, int]:
    """The window packs of one video, in time order → the video's faces blob, as if it had been
    read whole: faces concatenated, then tracks, segments and AU normalisation computed over the
    whole video by the same function (``workflows.faces.stage.link_faces``). Returns the blob, the
    faces and the (track, segment) clips."""
    from workflows.faces.stage import FLAG_NO_BASELINE, link_faces

    parts = [unpack_faces(b) for b in packs]
    offset = 0
    for part in parts:
        part["face_step"] = part["face_step"] + offset
        offset += len(part["step_times"])
    dim = max((p["embedding"].shape[1] for p in parts if "embedding" in p), default=0)
    embeddings = None
    if dim:
        rows = np.concatenate([p.get("embedding", np.full((len(p["frame_index"]), dim), np.nan, np.float32))
                               for p in parts])
        embeddings = [None if np.isnan(e).all() else e for e in rows]
    keys = [k for k in parts[0] if k not in ("step_times", "embedding", "crop_jpeg")]
    merged = {k: np.concatenate([p[k] for p in parts]) for k in keys}
    crops = [c for p in parts for c in p["crop_jpeg"]]
    step_times = np.concatenate([p["step_times"] for p in parts])
    linked = link_faces(faces_cfg, step_times.tolist(), merged.pop("face_step").tolist(), merged["frame_index"],
                        merged["bbox"], merged["kps"], embeddings, merged["au_evidence"])
    merged["track_id"], merged["segment_id"], merged["au_evidence"] = (
        linked.track_id, linked.segment_id, linked.au_evidence)
    flags = merged["flags"].astype(object)
    for i in np.nonzero(linked.no_baseline)[0]:
        if FLAG_NO_BASELINE not in flags[i].split(","):
            flags[i] = f"{flags[i]},{FLAG_NO_BASELINE}" if flags[i] else FLAG_NO_BASELINE
    merged["flags"] = flags.astype("U512")
    n_tracks = len({(int(t), int(g)) for t, g in zip(linked.track_id, linked.segment_id, strict=True)})
    return pack_arrays(merged, crops), len(crops), n_tracks


def unpack_faces(blob: bytes) -> dict[str, Any]:
    with np.load(io.BytesIO(blob), allow_pickle=False) as z:
        out = {k: z[k] for k in z.files}
    offsets = np.concatenate([[0], np.cumsum(out.pop("crop_lengths"))]).astype(np.int64)
    raw = out.pop("crops").tobytes()
    out["crop_jpeg"] = [raw[offsets[i]:offsets[i + 1]] for i in range(len(offsets) - 1)]
    return out


def model_batch(faces: dict[str, Any], rows: range, video_key: int) -> dict[str, Any]:
    """The model's face batch (:mod:`model.face_batch`) for faces ``rows`` of one video's
    unpacked face arrays; ``video_key`` keeps the track keys of the videos of one MLLM batch apart."""
    fields = [k for k in FACE_FIELDS if k in faces]  # every face-stage output the model reads
    return build_face_batch([
        {**{k: faces[k][i] for k in fields}, "crop": _decode_jpeg(faces["crop_jpeg"][i]),
         "track_key": (video_key << 40) + (int(faces["track_id"][i]) << 20) + int(faces["segment_id"][i])}
        for i in rows])


def merge_window_rows(row: dict[str, Any], windows: list[dict[str, Any]], cfg: Any) -> dict[str, Any]:
    """The face stage's row of a whole video from the rows of its windows: the first window that
    failed fails the video (as the first failure ends a video read whole), counts and timings add up,
    and the faces are linked across windows (:func:`merge_windows`)."""
    out = {**row, "status": "ok", "error": None, "error_kind": None, "faces_npz": b""}
    for key in ("n_frames", "decode_faces_s", "decode_faces_cpu_s"):
        out[key] = sum(w.get(key) or 0 for w in windows)
    for key in ("width", "height", "rotation"):  # the display matrix a decoder saw beats the header
        out[key] = windows[0].get(key, row.get(key))
    failed = next((w for w in windows if w["status"] != "ok"), None)
    limit = cfg.decode.limits.max_sampled_frames
    if failed is not None:
        out.update({k: failed.get(k) for k in ("status", "error", "error_kind")})
        if failed.get("traceback"):
            out["traceback"] = failed["traceback"]
    elif out["n_frames"] == 0:
        out.update(status="error", error="no decodable video frames", error_kind="no_frames")
    elif out["n_frames"] > limit:
        out.update(status="error", error_kind="too_many_frames",
                   error=f"more than decode.limits.max_sampled_frames={limit} sampled frames")
    else:
        out["faces_npz"], out["n_faces"], out["n_tracks"] = merge_windows([w["faces_npz"] for w in windows],
                                                                          cfg.faces)
    return out


class DecodeFacesStage:
    """Decode + sample + face extraction for whole videos (the unit of work and of failure)."""

    # What the runner and the run summary read, stated once per stage: its actor pool (sized by
    # ``runner.stage_plan`` from ``ray.<pool>``), the per-video seconds it spends (its busy time).
    pool = "faces"
    busy_fields: tuple[str, ...] = ("decode_faces_s",)

    @staticmethod
    def constructor_args(cfg: Any, run_id: str, output_uri: str = "") -> tuple:
        return (cfg,)

    def __init__(self, cfg: Any):
        from workflows.faces import FaceExtractor

        self.cfg = cfg
        self.policy = cfg.decode.policy()
        self.extractor = FaceExtractor(cfg.faces, assets_dir=cfg.assets.dir)
        self._faults = faults.injected_faults("faces")

    def process_video(self, video_id: str, uri: str) -> dict[str, Any]:
        """One video's row; a video long enough for time windows (``decode.window_s``) is only probed:
        its row has status ``windowed``, and :meth:`process_window` then reads each window."""
        return self._process(video_id, uri, None)

    def process_window(self, video_id: str, uri: str, start_s: float, end_s: float | None) -> dict[str, Any]:
        """The faces of one time window of a video, not yet linked into tracks (``faces_npz`` holds
        what :func:`merge_windows` needs); the row's counts and timings are the window's."""
        return self._process(video_id, uri, (start_s, end_s))

    def _process(self, video_id: str, uri: str, window: tuple[float, float | None] | None) -> dict[str, Any]:
        from workflows.annotate.decode import DecodeError, VideoReader
        from workflows.annotate.ingest import printable
        from workflows.annotate.windows import windowed_row, windows_of
        from workflows.faces.stage import link_records

        if self._faults:
            faults.exit_if_injected(self._faults, uri if window is None else f"{uri}#t={window[0]:g}")
        row: dict[str, Any] = {"video_id": video_id, "video_uri": uri, "status": "ok", "error": None,
                               "error_kind": None, "n_frames": 0, "n_faces": 0, "n_tracks": 0,
                               "sampling": str(self.policy), "faces_npz": b""}
        t0, c0 = time.perf_counter(), time.process_time()
        counter = {"n": 0}

        def counted(frames):
            for f in frames:
                counter["n"] += 1
                yield f

        try:
            with VideoReader(uri, self.policy, self.cfg.decode.limits, seek_min_gap_s=self.cfg.decode.seek_min_gap_s,
                             threads=self.cfg.decode.threads, window=window) as reader:
                p = reader.probe
                row.update(duration_s=p.duration_s, fps=p.fps, codec=p.codec)
                if window is None and not p.is_image and len(windows_of(p.duration_s, self.cfg.decode.window_s)) > 1:
                    return windowed_row(video_id, uri, p, row["sampling"])
                records, step_times, face_steps = self.extractor.extract(counted(reader.frames()))
                w, h = p.display_size
                row.update(width=w, height=h, rotation=p.rotation)
            row["n_frames"] = counter["n"]
            if window is None:
                link_records(records, step_times, face_steps, self.cfg.faces)
                row["n_faces"] = len(records)
                row["n_tracks"] = len({(r.track_id, r.segment_id) for r in records})
                row["faces_npz"] = pack_faces(records, self.cfg.output.jpeg_quality)
            else:
                row["n_faces"] = len(records)
                row["faces_npz"] = pack_faces(records, self.cfg.output.jpeg_quality,
                                              window_extras(records, step_times, face_steps))
        except DecodeError as e:
            row.update(status="error", error=e.message, error_kind=e.kind, n_frames=counter["n"])
        except Exception as e:  # noqa: BLE001 - one video's failure is data, not a crashed job
            log.exception("face extraction failed on %s", printable(uri))
            row.update(status="error", error=f"{type(e).__name__}: {e}", error_kind="face_stage_exception",
                       n_frames=counter["n"])
            row["traceback"] = traceback.format_exc(limit=5)
        row["decode_faces_s"] = time.perf_counter() - t0
        row["decode_faces_cpu_s"] = time.process_time() - c0
        return row

    def __call__(self, batch: dict[str, Any]) -> dict[str, list]:
        rows = [self.process_video(str(v), str(u)) for v, u in zip(batch["video_id"], batch["uri"], strict=True)]
        return _columns(rows, VIDEO_FIELDS + ("faces_npz",))


def _columns(rows: list[dict], fields: tuple[str, ...]) -> dict[str, list]:
    return {k: [r.get(k) for r in rows] for k in fields}


def _ipc(t: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, t.schema) as w:
        w.write_table(t)
    return sink.getvalue().to_pybytes()


def read_ipc(data: bytes) -> pa.Table:
    return pa.ipc.open_stream(pa.py_buffer(data)).read_all()


class MllmStage:
    """Scores every face of a batch of videos with the MLLM, aggregates track segments, and
    emits the final faces/tracks tables (Arrow IPC) per video."""

    pool = "mllm"
    busy_fields: tuple[str, ...] = ("mllm_s",)

    @staticmethod
    def constructor_args(cfg: Any, run_id: str, output_uri: str = "") -> tuple:
        return (cfg, run_id, output_uri)

    def __init__(self, cfg: Any, run_id: str, output_uri: str = ""):
        from model import load_model

        self.cfg = cfg
        self.run_id = run_id
        self.output_uri = output_uri  # where output.sink=workers writes its chunks
        self.model = load_model(cfg.model.uri, device=cfg.model.device, overrides=cfg.model.load_overrides())
        self.model_id = self.model.model_id
        self._faults = faults.injected_faults("mllm")
        # written_exit:<substring>: die after writing a chunk's parts, before the driver has its rows
        # (written_pause: stop there until the marker file is deleted, e.g. while a test kills the node)
        self._written_faults = faults.injected_faults("written")

    def _score(self, faces: dict[str, Any], video_key: int) -> dict[str, Any]:
        n = len(faces["frame_index"])
        fe = np.zeros((n, len(FE_BASIC)), np.float32)
        au = np.full((n, len(AU_NAMES)), np.nan, np.float32)
        desc: list[str | None] = [None] * n
        bs = max(1, self.cfg.model.batch_size)
        for s in range(0, n, bs):
            sl = slice(s, min(n, s + bs))
            out = self.model.annotate(model_batch(faces, range(sl.start, sl.stop), video_key),
                                      au_threshold=self.cfg.model.au_threshold)
            fe[sl] = out["fe_probs"]
            au[sl] = out["au_probs"]
            desc[sl] = list(out.get("description") or [None] * (sl.stop - sl.start))
        return {"fe": fe, "au": au, "description": desc}

    def process_video(self, row: dict[str, Any], video_key: int) -> dict[str, Any]:
        if self._faults:
            faults.exit_if_injected(self._faults, str(row.get("video_uri")))
        t0 = time.perf_counter()
        out = {k: row.get(k) for k in VIDEO_FIELDS}
        faces_t, tracks_t = schema.FACES.empty_table(), schema.TRACKS.empty_table()
        if row["status"] == "ok" and row.get("faces_npz"):
            try:
                faces = unpack_faces(row["faces_npz"])
                if len(faces["frame_index"]):
                    scores = self._score(faces, video_key)
                    faces_t, tracks_t = self._tables(row["video_id"], faces, scores)
            except Exception as e:  # noqa: BLE001 - a model failure on one video is data
                log.exception("MLLM stage failed on %s", row.get("video_uri"))
                out.update(status="error", error=f"MLLM stage: {type(e).__name__}: {e}",
                           error_kind="mllm_stage_exception")
                faces_t, tracks_t = schema.FACES.empty_table(), schema.TRACKS.empty_table()
        out["mllm_s"] = time.perf_counter() - t0
        out["model_id"] = self.model_id
        out["faces"], out["tracks"] = faces_t, tracks_t
        return out

    def process_windows(self, row: dict[str, Any], *windows: dict[str, Any]) -> dict[str, Any]:
        """A video read as time windows (``row``: its probe, status ``windowed``; ``windows``: the
        face stage's window rows in time order, passed one per argument so that Ray hands over their
        values): merged into the video's row, then scored and finished like any video. Returns its
        result row (:data:`RESULT_FIELDS`)."""
        merged = merge_window_rows(row, list(windows), self.cfg)
        cols = self.finish([self.process_video(merged, 0)])
        return {k: cols[k][0] for k in RESULT_FIELDS}

    def finish(self, outs: list[dict[str, Any]]) -> dict[str, list]:
        """The result rows (:data:`RESULT_FIELDS`) of a batch of videos: their faces and tracks as IPC
        for the driver to write, or (``output.sink=workers``) written here as one chunk's parts, the
        rows then holding only counts (the driver commits the chunk: workflows/corpus/writer.py)."""
        import collections
        import json
        import uuid

        for out in outs:
            faces_t = out["faces"]
            out["faces_rows"], out["tracks_rows"] = len(faces_t), len(out["tracks"])
            out["fe_counts"] = json.dumps(collections.Counter(faces_t.column("fe_label").to_pylist()))
            out["au_counts"] = json.dumps(collections.Counter(
                a for active in faces_t.column("au_active").to_pylist() for a in active or []))
            out["part"], out["part_videos"], out["part_bytes"] = "", 0, 0
        if self.cfg.output.sink == "workers":
            from workflows.core import storage
            from workflows.corpus.writer import write_part

            part = f"{self.run_id}-w{uuid.uuid4().hex[:12]}.parquet"
            written = 0
            for name in ("faces", "tracks"):
                table = pa.concat_tables([o[name] for o in outs]) if outs else schema.TABLES[name].empty_table()
                written += write_part(storage.join(self.output_uri, name, part), table)
            for out in outs:
                faults.exit_if_injected(self._written_faults, str(out.get("video_uri")))
                faults.pause_if_injected(self._written_faults, str(out.get("video_uri")))
                out["part"], out["part_videos"], out["part_bytes"] = part, len(outs), written
                written = 0  # counted once, on the part's first row
        else:
            for out in outs:
                out["faces_ipc"], out["tracks_ipc"] = _ipc(out["faces"]), _ipc(out["tracks"])
        return _columns(outs, RESULT_FIELDS)

    def _tables(self, video_id: str, f: dict[str, Any], s: dict[str, Any]) -> tuple[pa.Table, pa.Table]:
        thr = self.cfg.model.au_threshold
        fe, au = s["fe"], s["au"]
        face_rows = []
        n = len(f["frame_index"])
        keep_crops = self.cfg.output.crops
        for i in range(n):
            k = int(np.argmax(fe[i]))
            au_row = au[i]
            face_rows.append({
                "video_id": video_id, "frame_index": int(f["frame_index"][i]),
                "timestamp_s": float(f["timestamp_s"][i]), "track_id": int(f["track_id"][i]),
                "segment_id": int(f["segment_id"][i]), "bbox": f["bbox"][i].tolist(),
                "det_score": float(f["det_score"][i]), "landmarks_5": f["kps"][i].reshape(-1).tolist(),
                "pose": f["pose"][i].tolist(), "age": _opt(f["age"][i]), "gender": f["gender"][i] or None,
                "gender_score": _opt(f["gender_score"][i]), "fe_label": FE_BASIC[k],
                "fe_confidence": float(fe[i, k]), "fe_probs": schema.probs_map(FE_BASIC, fe[i]),
                "au_probs": schema.probs_map(AU_NAMES, au_row),
                "au_active": [a for a, p in zip(AU_NAMES, au_row, strict=True) if p == p and p >= thr],
                "au_evidence": schema.probs_map(AU_NAMES, f["au_evidence"][i]),
                "fe_prior": schema.probs_map(FE_BASIC, f["fe_prior"][i]),
                "blendshapes": _opt_vector(f["blendshapes"][i]),
                "flags": [x for x in str(f["flags"][i]).split(",") if x],
                "description": s["description"][i], "crop_jpeg": f["crop_jpeg"][i] if keep_crops else None,
                "model_id": self.model_id, "run_id": self.run_id,
            })
        track_rows = []
        keys = sorted({(int(t), int(g)) for t, g in zip(f["track_id"], f["segment_id"], strict=True)})
        for tid, seg in keys:
            idx = np.nonzero((f["track_id"] == tid) & (f["segment_id"] == seg))[0]
            p_fe = fe[idx].mean(axis=0)
            p_fe = p_fe / max(float(p_fe.sum()), 1e-9)
            with warnings.catch_warnings():  # an AU unavailable on every face stays NaN
                warnings.simplefilter("ignore", RuntimeWarning)
                p_au = np.nanmean(au[idx], axis=0)
            k = int(np.argmax(p_fe))
            descs = [s["description"][i] for i in idx if s["description"][i]]
            track_rows.append({
                "video_id": video_id, "track_id": tid, "segment_id": seg,
                "start_s": float(f["timestamp_s"][idx].min()), "end_s": float(f["timestamp_s"][idx].max()),
                "n_frames": int(len(np.unique(f["frame_index"][idx]))), "fe_label": FE_BASIC[k],
                "fe_confidence": float(p_fe[k]), "fe_probs": schema.probs_map(FE_BASIC, p_fe),
                "au_probs": schema.probs_map(AU_NAMES, p_au),
                "au_active": [a for a, p in zip(AU_NAMES, p_au, strict=True) if p == p and p >= thr],
                "description": descs[0] if descs else None, "model_id": self.model_id, "run_id": self.run_id,
            })
        return schema.table("faces", face_rows), schema.table("tracks", track_rows)

    def __call__(self, batch: dict[str, Any]) -> dict[str, list]:
        n = len(batch["video_id"])
        rows = [{k: _scalar(batch[k][i]) for k in batch} for i in range(n)]
        return self.finish([self.process_video(r, i) for i, r in enumerate(rows)])


def _opt(v: Any) -> float | None:
    v = float(v)
    return None if math.isnan(v) else v


def _opt_vector(v: np.ndarray) -> list[float] | None:
    return None if np.isnan(v).all() else v.tolist()


def _scalar(v: Any) -> Any:
    if isinstance(v, np.generic):
        return v.item()
    return v


class FusedStage:
    """Both stages in one actor, video by video: where the MLLM needs no GPU this saves an
    actor process, its CPU share and an object-store hop, and a video's result no longer
    waits for an MLLM batch to fill. A crash in either part loses only this actor's videos,
    as with separate pools."""

    pool = "faces"
    busy_fields: tuple[str, ...] = ("decode_faces_s", "mllm_s")
    constructor_args = MllmStage.constructor_args

    def __init__(self, cfg: Any, run_id: str, output_uri: str = ""):
        self.faces = DecodeFacesStage(cfg)
        self.mllm = MllmStage(cfg, run_id, output_uri)

    def __call__(self, batch: dict[str, Any]) -> dict[str, list]:
        return self.mllm.finish([self.mllm.process_video(self.faces.process_video(str(v), str(u)), i)
                                 for i, (v, u) in enumerate(zip(batch["video_id"], batch["uri"], strict=True))])

    def process_window(self, video_id: str, uri: str, start_s: float, end_s: float | None) -> dict[str, Any]:
        return self.faces.process_window(video_id, uri, start_s, end_s)

    def process_windows(self, row: dict[str, Any], *windows: dict[str, Any]) -> dict[str, Any]:
        return self.mllm.process_windows(row, *windows)


# The annotate pipeline as lists of stages, in order: two actor pools, or one that runs both
# (``ray.fuse_stages``). The runner maps each onto Ray Data; the run summary reports each pool.
PIPELINE: tuple[type, ...] = (DecodeFacesStage, MllmStage)
FUSED_PIPELINE: tuple[type, ...] = (FusedStage,)


def pipeline_stages(fused: bool) -> tuple[type, ...]:
    return FUSED_PIPELINE if fused else PIPELINE
