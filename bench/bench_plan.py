"""Driver memory of planning a large input: peak RSS at 10k vs 100k manifest entries.

    .venv/bin/python -m bench.bench_plan [--sizes 10000 100000] [--json out.json]

A corpus of N entries (hard links to four copies of a shipped clip, so every entry is a distinct
file with its own URI) and a CSV manifest with a ``subject`` column. Each figure is one fresh
process's peak RSS (``ru_maxrss``):
- ``dry_run``: ``mien annotate --dry-run`` (discovery, resume check, deny-list, plan, every chunk
  read back; nothing runs or is written): what a run holds before its first video starts;
- ``resume``: the same, on an output where every entry already has a committed ``ok`` row;
- ``rerun``: a real run (not dry) on that output: it also tidies the output before planning
  (orphaned parts, replaced rows) and writes its run record, with nothing left to annotate;
- ``listed``: for comparison, what annotate held before its plan streamed: every source as an
  object (``ingest.discover``), the to-do list and one dict per video for the executor (this
  process imports less than annotate does, so compare its growth, not its level).
The ratio 100k / 10k is the figure to read (goal: within 1.10 for the streamed plan).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from workflows.core import assets

ROOT = Path(__file__).resolve().parents[1]
BASES = 4  # a file takes at most 65000 hard links on ext4
CHILD = """
import resource, sys
mode, manifest, out = sys.argv[1:4]
if mode == "listed":
    from workflows.annotate.ingest import discover
    found = discover(manifest)
    todo = [s for s in found.sources]
    rows = [{"video_id": s.video_id, "uri": s.uri} for s in todo]
    rc = 0
else:
    from jobs.cli import main
    rc = main(["annotate", "--input", manifest, "--output", out, "--no-progress", "--set", "mlflow.enabled=false",
               *(["--dry-run"] if mode != "rerun" else [])])
print("MAXRSS_KB", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
sys.exit(rc)
"""


def make_corpus(root: Path, n: int) -> Path:
    """``root``/v/ with ``n`` hard links and ``root``/mN.csv listing them (kept between runs)."""
    v = root / "v"
    v.mkdir(parents=True, exist_ok=True)
    for b in range(BASES):
        if not (v / f"base{b}.mp4").exists():
            shutil.copyfile(assets.resolve("sample_single_face_video"), v / f"base{b}.mp4")
    for i in range(n):
        link = v / f"c{i:07d}.mp4"
        if not link.exists():
            os.link(v / f"base{i % BASES}.mp4", link)
    manifest = root / f"m{n}.csv"
    if not manifest.exists():
        with open(manifest, "w") as f:
            f.write("uri,subject\n")
            f.writelines(f"v/c{i:07d}.mp4,S{i % 50:03d}\n" for i in range(n))
    return manifest


def commit_all(manifest: Path, out: Path) -> None:
    """An output where every entry of ``manifest`` has a committed ``ok`` row (no faces): what a
    rerun after a finished job meets."""
    import datetime as dt

    from workflows.annotate.ingest import iter_discover
    from workflows.annotate.pipeline import OutputConfig
    from workflows.corpus import schema
    from workflows.corpus.writer import AnnotationSink

    # Chunks as a run commits them (output.flush_every_videos videos a part).
    sink = AnnotationSink(str(out), "20260101T000000Z-bench000", OutputConfig().flush_every_videos, flush_every_s=1e9)
    now = dt.datetime.now(dt.UTC)
    for s in iter_discover(str(manifest)):
        row = {"video_id": s.video_id, "video_uri": s.uri, "status": "ok", "n_frames": 1, "n_faces": 0, "n_tracks": 0,
               "run_id": sink.run_id, "finished_at": now}
        sink.add(schema.table("videos", [row]), schema.FACES.empty_table(), schema.TRACKS.empty_table(), 1)
    sink.flush()


def peak_kb(mode: str, manifest: Path, out: Path) -> tuple[int, str]:
    """Peak RSS (KiB) of one fresh process running ``mode`` (module docstring), and what it printed."""
    proc = subprocess.run([sys.executable, "-c", CHILD, mode, str(manifest), str(out)], cwd=ROOT,
                          capture_output=True, text=True, check=False, env={**os.environ, "PYTHONPATH": str(ROOT)})
    line = [x for x in proc.stdout.splitlines() if x.startswith("MAXRSS_KB")]
    if proc.returncode != 0 or not line:
        raise SystemExit(f"{mode} on {manifest} failed (exit {proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return int(line[-1].split()[1]), proc.stdout


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    ap.add_argument("--corpus", help="directory to keep the corpus in between runs (default: a temporary one)")
    ap.add_argument("--json")
    args = ap.parse_args()
    keep = args.corpus is not None
    root = Path(args.corpus or tempfile.mkdtemp(prefix="mien-bench-plan-"))
    result: dict[str, dict[str, int]] = {}
    try:
        for n in args.sizes:
            manifest = make_corpus(root, n)
            fresh, done = root / f"out-fresh-{n}", root / f"out-done-{n}"
            shutil.rmtree(fresh, ignore_errors=True)
            if not (done / "videos").exists():
                commit_all(manifest, done)
            result[str(n)] = {mode: peak_kb(mode, manifest, done if mode in ("resume", "rerun") else fresh)[0]
                              for mode in ("dry_run", "resume", "rerun", "listed")}
            print(f"{n:>8} entries: " + ", ".join(f"{m} {kb / 1024:.0f} MiB" for m, kb in result[str(n)].items()),
                  flush=True)
        lo, hi = str(min(args.sizes)), str(max(args.sizes))
        ratios = {m: result[hi][m] / result[lo][m] for m in result[lo]}
        print(f"peak RSS {hi} / {lo} entries: " + ", ".join(f"{m} {r:.2f}x" for m, r in ratios.items()))
        if args.json:
            Path(args.json).write_text(json.dumps({"peak_rss_kb": result, "ratio": ratios}, indent=2))
    finally:
        if not keep:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
