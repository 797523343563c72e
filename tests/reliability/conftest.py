"""Reliability fixtures: face clips rendered at test time, per-module Ray clusters, helpers."""

from __future__ import annotations

import contextlib
import shutil
import threading
import time
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import environ
from workflows.annotate.pipeline import AnnotateConfig
from workflows.core.config import load_config

ROOT = Path(__file__).resolve().parents[2]


def render_face_clip(path: Path, face: np.ndarray, n_frames: int = 10, fps: int = 5, size=(320, 240),
                     seed: int = 0) -> Path:
    """An H.264 clip of a real face still drifting over a noisy background (frames differ)."""
    import av
    import cv2

    w, h = size
    scale = 0.8 * min(w, h) / max(face.shape[:2])
    f = cv2.resize(face, (int(face.shape[1] * scale), int(face.shape[0] * scale)))
    rng = np.random.default_rng(seed)
    tb = Fraction(1, 1000)
    with av.open(str(path), "w") as out:
        s = out.add_stream("libx264", rate=fps)
        s.width, s.height, s.pix_fmt, s.time_base = w, h, "yuv420p", tb
        s.options = {"crf": "23", "preset": "ultrafast"}
        for i in range(n_frames):
            img = rng.integers(90, 110, (h, w, 3), dtype=np.uint8)
            x = int((w - f.shape[1]) * (0.5 + 0.4 * np.sin(i / 3 + seed)))
            y = (h - f.shape[0]) // 2
            img[y:y + f.shape[0], x:x + f.shape[1]] = f
            frame = av.VideoFrame.from_ndarray(img, format="rgb24")
            frame.pts, frame.time_base = int(i * 1000 / fps), tb
            for pkt in s.encode(frame):
                out.mux(pkt)
        for pkt in s.encode():
            out.mux(pkt)
    return path


def face_image(asset, name: str = "sample_single_face_jpg") -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(asset(name)).convert("RGB"))


@pytest.fixture(scope="session")
def face_corpus(tmp_path_factory, asset) -> Path:
    """Eight short clips with one real face each, a real still and a face-less clip: every
    video takes a moment, so a fault injected mid-run always finds work in flight."""
    from tests.media import render_video

    d = tmp_path_factory.mktemp("face_corpus")
    names = ("sample_single_face_jpg", "posed_happy_jpg", "posed_surprise_jpg")
    faces = [face_image(asset, n) for n in names]
    for i in range(8):
        render_face_clip(d / f"clip{i:02d}.mp4", faces[i % 3], n_frames=10 + 2 * i, fps=5, seed=i)
    shutil.copyfile(asset("sample_single_face_jpg"), d / "still.jpg")
    render_video(d / "noface.mp4", n_frames=10, fps=5)
    return d


def annotate_cfg(tmp_path: Path, *extra: str) -> AnnotateConfig:
    """Small-machine settings: fractional CPUs so both stages always run (ASSETS.md), no MLflow."""
    return load_config(AnnotateConfig, None, ["mlflow.enabled=false", "ray.faces.concurrency=2",
                                              "ray.faces.num_cpus=0.5", "ray.mllm.num_cpus=0.25",
                                              "output.crops=false", *extra])


@contextlib.contextmanager
def local_ray(num_cpus: int = 2, **env: str | None) -> Iterator[None]:
    """A fresh local Ray whose workers inherit ``env`` (set before the raylet starts)."""
    import ray

    assert not ray.is_initialized(), "another test left Ray running"
    with environ(**env):
        ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, configure_logging=False,
                 log_to_driver=False)
        try:
            yield
        finally:
            ray.shutdown()


def videos_table(out: str):
    import pyarrow.dataset as pads

    from workflows.core import storage

    fs, path = storage.filesystem(out)
    return pads.dataset(f"{path}/videos", filesystem=fs, format="parquet").to_table().to_pandas()


def faces_per_video(out: str) -> dict[str, int]:
    v = videos_table(out)
    ok = v[v.status == "ok"]
    return dict(zip(ok.video_uri.map(lambda u: u.rsplit("/", 1)[-1]), ok.n_faces.astype(int), strict=True))


def check_contract(out: str) -> None:
    """The output contract (docs/OUTPUT.md), checked as `mien inspect OUT --check` checks it."""
    from workflows.corpus.contract import check_output

    assert check_output(str(out)) == []


class RssSampler:
    """Peak resident memory of the processes under ``root_pid`` (e.g. the raylet), sampled
    every ``interval_s`` on a thread: ``with RssSampler(pid) as s: ...; s.peak_by_pid``."""

    def __init__(self, root_pids: list[int], interval_s: float = 0.1):
        self.root_pids = root_pids
        self.interval_s = interval_s
        self.peak_by_pid: dict[int, tuple[int, str]] = {}
        self.peak_total = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        import psutil

        while not self._stop.is_set():
            total = 0
            for root in self.root_pids:
                try:
                    procs = psutil.Process(root).children(recursive=True)
                except psutil.Error:
                    continue
                for p in procs:
                    try:
                        rss = p.memory_info().rss
                        name = " ".join(p.cmdline()[:1]) or p.name()
                    except psutil.Error:
                        continue
                    total += rss
                    if rss > self.peak_by_pid.get(p.pid, (0, ""))[0]:
                        self.peak_by_pid[p.pid] = (rss, p.name() or name)
            self.peak_total = max(self.peak_total, total)
            time.sleep(self.interval_s)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def peak_worker(self) -> tuple[int, str]:
        return max(self.peak_by_pid.values(), default=(0, ""))


@pytest.fixture(scope="session")
def reference_faces(face_corpus) -> dict[str, int]:
    """Faces per video of a clean run of the face stage, in-process (no Ray, no faults)."""
    from workflows.annotate.stages import DecodeFacesStage

    stage = DecodeFacesStage(annotate_cfg(face_corpus))
    counts = {}
    for p in sorted(face_corpus.iterdir()):
        row = stage.process_video(p.name, str(p))
        assert row["status"] == "ok", row
        counts[p.name] = row["n_faces"]
    stage.extractor.close()
    return counts
