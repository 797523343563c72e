"""Small jobs, timed as a user meets them: the whole ``mien annotate`` process, start to exit.

    .venv/bin/python -m bench.bench_small [--pairs 3] [--clips 16] [--json out.json]

Prints, from one run on one machine (noisy: compare the ratios, taken over alternating runs):
- one clip (the 19.7-s 640x360 smiling sample, 40 sampled frames at fps:2): wall seconds of ``mien annotate`` with the local
  executor and with Ray, alternating, and each one's breakdown of the wall time (run JSON);
- ``--clips`` short clips: ``mien annotate`` (auto executor: local) vs the hand-written Ray Data
  script (``bench/handwritten_raydata.py``: every frame decoded, the face models on 2 frames per
  second, one model actor per CPU, ``write_parquet``) vs the sequential loop of ``bench_pipeline`` (same stages, one process,
  models loaded in the timed process), alternating, and the ratios.
Every run writes to a fresh output (MLflow on, a fresh sqlite store each time: what a first run
in a new directory pays).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from workflows.core import assets

ROOT = Path(__file__).resolve().parents[1]
MIEN = [sys.executable, "-m", "jobs.cli"]


def _timed(cmd: list[str], cwd: Path) -> float:
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, check=False,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return wall


def annotate(corpus: Path, work: Path, executor: str) -> dict:
    """``mien annotate`` as a whole process; its wall time and the run's own breakdown."""
    work.mkdir(parents=True)
    wall = _timed([*MIEN, "annotate", "--input", str(corpus), "--output", str(work / "out"), "--no-progress",
                   "--executor", executor], work)
    (run_json,) = (work / "out" / "runs").glob("*.json")
    doc = json.loads(run_json.read_text())
    return {"wall_s": wall, "run_s": doc["timings"]["wall_s"], "breakdown": doc["timings"]["breakdown"],
            "executor": doc["timings"]["executor"], "faces": doc["counts"]["faces"]}


def handwritten(corpus: Path, work: Path) -> dict:
    work.mkdir(parents=True)
    return {"wall_s": _timed([sys.executable, "-m", "bench.handwritten_raydata", str(corpus), str(work / "out")],
                             work)}


def sequential(corpus: Path, work: Path) -> dict:
    """``bench_pipeline``'s sequential loop, as a whole process (imports and model loads included)."""
    work.mkdir(parents=True)
    code = ("import sys; from pathlib import Path; from bench.bench_pipeline import sequential; "
            "from workflows.annotate.pipeline import AnnotateConfig; from workflows.core.config import load_config; "
            "sequential(Path(sys.argv[1]), load_config(AnnotateConfig, None, ['mlflow.enabled=false']))")
    return {"wall_s": _timed([sys.executable, "-c", code, str(corpus)], work)}


def corpus(dest: Path, n: int) -> Path:
    dest.mkdir(parents=True)
    src = assets.resolve("sample_smiling_video")
    for i in range(n):
        shutil.copyfile(src, dest / f"clip{i:03d}{src.suffix}")
    return dest


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pairs", type=int, default=3, help="alternating runs of each variant")
    ap.add_argument("--clips", type=int, default=16)
    ap.add_argument("--json", default="")
    a = ap.parse_args()
    runs: dict[str, list[dict]] = {"one_local": [], "one_ray": [], "many_mien": [], "many_script": [],
                                   "many_sequential": []}
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        one, many = corpus(d / "one", 1), corpus(d / "many", a.clips)
        annotate(one, d / "warm", "local")  # page cache, first-import costs: not timed
        for i in range(a.pairs):
            runs["one_local"].append(annotate(one, d / f"one-local-{i}", "local"))
            runs["one_ray"].append(annotate(one, d / f"one-ray-{i}", "ray"))
            runs["many_mien"].append(annotate(many, d / f"many-mien-{i}", "auto"))
            runs["many_script"].append(handwritten(many, d / f"many-script-{i}"))
            runs["many_sequential"].append(sequential(many, d / f"many-seq-{i}"))

    def med(key: str) -> float:
        return statistics.median(r["wall_s"] for r in runs[key])

    def ratios(num: str, den: str) -> str:
        rs = [n["wall_s"] / m["wall_s"] for n, m in zip(runs[num], runs[den], strict=True)]
        return ", ".join(f"{r:.2f}" for r in rs) + f" (median {statistics.median(rs):.2f}x)"

    cpus = os.cpu_count() or 1
    print(f"{cpus} CPUs, {a.pairs} alternating run(s) of each")
    print(f"one clip, whole process: local {med('one_local'):.1f} s, ray {med('one_ray'):.1f} s; "
          f"ray/local {ratios('one_ray', 'one_local')}")
    for key in ("one_local", "one_ray"):
        b = runs[key][len(runs[key]) // 2]["breakdown"]
        print(f"  {key} breakdown: " + ", ".join(f"{k} {v:.1f}" for k, v in b.items()))
    print(f"{a.clips} clips, whole process: mien {med('many_mien'):.1f} s ({runs['many_mien'][0]['executor']}), "
          f"hand-written Ray Data {med('many_script'):.1f} s, sequential loop {med('many_sequential'):.1f} s")
    print(f"  script/mien {ratios('many_script', 'many_mien')}")
    print(f"  sequential/mien {ratios('many_sequential', 'many_mien')}")
    if a.json:
        Path(a.json).write_text(json.dumps({"cpus": cpus, "clips": a.clips, "runs": runs}, indent=2))


if __name__ == "__main__":
    main()
