"""The comparison for small jobs: the Ray Data script a user would write instead of mien, with
the same shipped face models — every frame decoded, the models run on 2 frames per second (mien's
default sampling), one model actor per CPU, ``write_parquet``.

    .venv/bin/python -m bench.handwritten_raydata INPUT_DIR OUTPUT_DIR

It is what ``bench_small`` times as a whole process against ``mien annotate`` on the same clips.
No resume, no error rows, no tracks, no MLLM: the least a script does to get one row per face.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

SAMPLE_FPS = 2


class FaceRows:
    """One actor: the shipped detector/landmarks/expression models; a video in, one row per face out."""

    def __init__(self) -> None:
        from workflows.faces import FaceConfig, FaceExtractor

        self.extractor = FaceExtractor(FaceConfig())

    def __call__(self, batch: dict) -> dict:
        import av

        rows: dict[str, list] = {"path": [], "frame": [], "bbox": [], "fe_prior": []}
        for path in batch["path"]:
            with av.open(str(path)) as container:
                stream = container.streams.video[0]
                step = max(1, round(float(stream.average_rate or 30) / SAMPLE_FPS))
                for i, frame in enumerate(container.decode(stream)):
                    if i % step:
                        continue
                    img = frame.to_ndarray(format="rgb24")
                    for face in self.extractor.process_frame(_Frame(i, float(frame.time or 0.0), img)):
                        rows["path"].append(str(path))
                        rows["frame"].append(i)
                        rows["bbox"].append([float(x) for x in face.bbox])
                        rows["fe_prior"].append([] if face.fe_prior is None else [float(x) for x in face.fe_prior])
        return rows


class _Frame:
    def __init__(self, index: int, timestamp_s: float, image) -> None:
        self.index, self.timestamp_s, self.image = index, timestamp_s, image


def main() -> None:
    import ray

    src, dst = Path(sys.argv[1]), Path(sys.argv[2])
    t0 = time.perf_counter()
    ray.init(include_dashboard=False, configure_logging=False, log_to_driver=False)
    files = sorted(str(p) for p in src.iterdir() if p.suffix.lower() in (".mp4", ".mov", ".mkv", ".avi"))
    ds = ray.data.from_items([{"path": f} for f in files])
    ds = ds.map_batches(FaceRows, batch_size=1, concurrency=os.cpu_count() or 1)
    ds.write_parquet(str(dst))
    print(f"{len(files)} videos in {time.perf_counter() - t0:.1f} s")


if __name__ == "__main__":
    main()
