"""The ``insightface`` backend: ``insightface.app.FaceAnalysis`` over a local model pack.

A pack is a directory in buffalo_l layout: ONNX files that insightface routes by signature
(SCRFD detector with 6/9/10/15 outputs, ArcFace recogniser with a square >=112 input,
``genderage`` with a 96² input and 3 outputs, ``landmark_2d_106`` / ``landmark_3d_68`` with a
192² input), or a pack with insightface's own manifest. ``pack`` may be an ``s3://`` prefix:
its files are copied once into ``<MIEN_CACHE_DIR>/insightface/<hash>/``. Nothing is ever
downloaded from the internet: FaceAnalysis is always given an existing directory, which is
the one code path in insightface 2.1 that skips its model-zoo download.

Execution providers: CUDA when the stage has GPUs (``device=auto`` and ``num_gpus > 0``) or
when ``device=cuda``; then onnxruntime must offer ``CUDAExecutionProvider`` and every session
must actually run on it, otherwise :class:`InsightFaceError` is raised (never a silent
CPU fallback). CPU otherwise.

What the tests here cover without a real pack (no pack can be downloaded on these machines):
the CUDA-missing and pack-missing/empty errors, and the full adapter path through the real
insightface 2.1 code (routing, SCRFD decoding and NMS, ``norm_crop`` + ArcFace embedding,
genderage) with small ONNX graphs that have buffalo_l's input/output signatures but random
or constant weights. What still needs a real buffalo_l pack: detection quality and recall on
real faces, embedding quality (track re-identification thresholds ``track.reid_threshold`` /
``track.embedding_threshold`` were chosen from ArcFace's usual cosine ranges, not measured
here), genderage accuracy, the sign conventions of ``landmark_3d_68`` pose (used only when the
MediaPipe mesh is off or fails), and CUDA throughput.
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

import numpy as np

from workflows.faces.config import InsightFaceConfig
from workflows.faces.detect import Detection

log = logging.getLogger(__name__)

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"


class InsightFaceError(RuntimeError):
    """The insightface backend cannot run as configured; the message says how to fix it."""


def select_providers(device: str, num_gpus: float, available: list[str] | None = None) -> list[str]:
    """onnxruntime providers for ``device`` (auto/cpu/cuda) on a stage with ``num_gpus`` GPUs.

    Raises :class:`InsightFaceError` when CUDA is wanted and onnxruntime cannot provide it."""
    if available is None:
        import onnxruntime

        available = list(onnxruntime.get_available_providers())
    want_cuda = device == "cuda" or (device == "auto" and num_gpus > 0)
    if not want_cuda:
        return [CPU]
    if CUDA not in available:
        why = "faces.insightface.device=cuda" if device == "cuda" else f"faces.num_gpus={num_gpus:g}"
        raise InsightFaceError(
            f"the insightface backend was asked to run on CUDA ({why}) but onnxruntime offers only "
            f"{available}: install the GPU build (`pip uninstall onnxruntime && pip install "
            f"onnxruntime-gpu`, matching the CUDA/cuDNN on the node), or set "
            f"faces.insightface.device=cpu / faces.num_gpus=0 to run on CPU on purpose")
    return [CUDA]


def resolve_pack(pack: str) -> Path:
    """Local directory of the model pack ``pack`` (a local path, or an ``s3://`` prefix copied
    into the mien cache). Raises :class:`InsightFaceError` when it is missing or holds no
    ``*.onnx``."""
    if not pack:
        raise InsightFaceError("faces.insightface.pack is empty: point it at a buffalo_l-layout directory "
                               "(local path or s3:// prefix) holding the pack's .onnx files")
    from workflows.core import storage

    if storage.is_remote(pack):
        from workflows.core.assets import cache_dir

        try:
            files = storage.list_files(pack)
        except FileNotFoundError as e:
            raise InsightFaceError(f"insightface model pack not found at {pack}") from e
        local = cache_dir() / "insightface" / hashlib.sha256(pack.rstrip("/").encode()).hexdigest()[:16]
        root = pack.rstrip("/") + "/"
        for uri in files:
            rel = uri[len(root):] if uri.startswith(root) else os.path.basename(uri)
            dest = local / rel
            if not (dest.exists() and dest.stat().st_size == storage.info(uri).get("size")):
                storage.write_bytes(str(dest), storage.read_bytes(uri))
        path = local
    else:
        path = Path(storage.strip_file_scheme(pack)).expanduser()
    if not path.is_dir():
        raise InsightFaceError(f"insightface model pack directory does not exist: {path} "
                               f"(faces.insightface.pack={pack}); it must hold buffalo_l-style .onnx files")
    if not any(path.glob("*.onnx")) and not (path / "manifest.json").exists():
        raise InsightFaceError(f"insightface model pack {path} holds no .onnx files; copy a buffalo_l-layout "
                               f"pack there (det_10g.onnx, w600k_r50.onnx, genderage.onnx, ...)")
    return path.resolve()


class InsightFaceDetector:
    """Detection (+ embedding, age/gender, 106/68-point landmarks, pose) with FaceAnalysis.

    :meth:`detect` returns :class:`Detection` objects whose ``embedding`` is the L2-normalised
    ArcFace vector (or None) and whose ``extras`` hold ``age`` (years), ``gender``
    ("female"/"male"), ``landmarks`` ((106, 2) source px) and ``pose`` ((3,) yaw, pitch, roll
    degrees, from landmark_3d_68) where the pack has those models.
    """

    def __init__(self, cfg: InsightFaceConfig, num_gpus: float = 0.0, det_threshold: float = 0.5,
                 nms_threshold: float = 0.4):
        self.providers = select_providers(cfg.device, num_gpus)
        self.pack_dir = resolve_pack(cfg.pack)
        try:
            from insightface.app import FaceAnalysis
        except ImportError as e:
            raise InsightFaceError("the insightface backend needs `pip install --no-deps insightface==2.1` "
                                   "(plus onnx, onnxruntime, scikit-image, scipy)") from e
        try:
            self.app = FaceAnalysis(name=str(self.pack_dir), root=str(self.pack_dir.parent),
                                    allowed_modules=list(cfg.modules), providers=self.providers)
        except AssertionError as e:
            raise InsightFaceError(f"insightface found no face detector in {self.pack_dir}: a pack needs an "
                                   f"SCRFD/RetinaFace .onnx (e.g. buffalo_l's det_10g.onnx)") from e
        if CUDA in self.providers:
            for task, model in self.app.models.items():
                got = list(model.session.get_providers())
                if not got or got[0] != CUDA:
                    raise InsightFaceError(f"insightface model '{task}' runs on {got}, not CUDA: onnxruntime could "
                                           f"not initialise CUDAExecutionProvider (check the CUDA/cuDNN libraries "
                                           f"match onnxruntime-gpu)")
        ctx_id = 0 if CUDA in self.providers else -1
        self.app.prepare(ctx_id=ctx_id, det_thresh=det_threshold, det_size=(cfg.det_size, cfg.det_size))
        det = self.app.models["detection"]
        if hasattr(det, "nms_thresh"):
            det.nms_thresh = nms_threshold
        self.tasks = sorted(self.app.models)
        log.info("insightface pack %s: %s on %s", self.pack_dir, self.tasks, self.providers)

    def detect(self, image: np.ndarray) -> list[Detection]:
        """Faces in an HxWx3 uint8 RGB image, highest score first."""
        faces = self.app.get(np.ascontiguousarray(image[:, :, ::-1]))
        out = []
        for f in faces:
            kps = f.kps if f.kps is not None else _kps_from_box(f.bbox)
            extras: dict = {}
            if f.gender is not None and f.age is not None:
                extras["gender"] = "male" if int(f.gender) == 1 else "female"
                extras["age"] = float(f.age)
            if f.landmark_2d_106 is not None:
                extras["landmarks"] = np.asarray(f.landmark_2d_106, np.float32)[:, :2]
            if f.pose is not None:
                pitch, yaw, roll = (float(v) for v in f.pose)
                extras["pose"] = np.array([yaw, pitch, roll], np.float32)
            emb = f.normed_embedding
            out.append(Detection(bbox=np.asarray(f.bbox, np.float32)[:4], score=float(f.det_score),
                                 kps=np.asarray(kps, np.float32).reshape(5, 2),
                                 embedding=None if emb is None else np.asarray(emb, np.float32), extras=extras))
        out.sort(key=lambda d: -d.score)
        return out


def _kps_from_box(bbox: np.ndarray) -> np.ndarray:
    """Template keypoints inside a box, for detectors without landmarks (RetinaFace w/o kps)."""
    from workflows.faces.align import ARCFACE_TEMPLATE

    x0, y0, x1, y1 = (float(v) for v in bbox[:4])
    return np.stack([x0 + ARCFACE_TEMPLATE[:, 0] * (x1 - x0), y0 + ARCFACE_TEMPLATE[:, 1] * (y1 - y0)], 1)
