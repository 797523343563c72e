"""The output tools read an annotate output on S3 (a real S3 endpoint: moto server) and write there."""

import json

import fsspec

from tests.outputs.conftest import mien


def test_inspect_report_export_render_on_s3(annotated, s3_bucket, tmp_path, capsys):
    root = f"{s3_bucket}/annotations"
    fs = fsspec.filesystem("s3")
    fs.put(str(annotated.root), root.removeprefix("s3://"), recursive=True)

    assert mien("inspect", root, "--json") == 0
    doc = json.loads(capsys.readouterr().out)
    assert (doc["faces"], doc["videos_ok"], doc["videos_error"]) == (annotated.n_faces, 2, 1)

    assert mien("report", "--input", root) == 0  # default: OUT/report.html, on S3
    assert "report: " + f"{root}/report.html" in capsys.readouterr().out
    assert b"<!doctype html>" in fs.cat_file(f"{root}/report.html".removeprefix("s3://"))[:100]

    assert mien("export", "openface", "--input", root, "--output", f"{s3_bucket}/openface") == 0
    assert fs.exists(f"{s3_bucket}/openface/interview-{annotated.video_id}.csv".removeprefix("s3://"))

    out = tmp_path / "r.mp4"
    assert mien("render", "--input", root, "--video", annotated.video_id, "--output", out) == 0
    assert out.stat().st_size > 1000
