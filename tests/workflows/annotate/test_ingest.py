import json
import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from workflows.annotate.ingest import InputError, discover
from workflows.core import storage


def _touch(p, data=b"x"):
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(data)
    return str(p)


def test_directory_discovery_filters_media_and_ids_are_stable(tmp_path):
    a = _touch(tmp_path / "c" / "a.mp4")
    b = _touch(tmp_path / "c" / "sub" / "b.JPG")
    _touch(tmp_path / "c" / "notes.txt")
    srcs, rej = discover(str(tmp_path / "c"))
    assert [s.uri for s in srcs] == [a, b] and rej == []
    again, _ = discover(str(tmp_path / "c"))
    assert [s.video_id for s in srcs] == [s.video_id for s in again]
    assert len({s.video_id for s in srcs}) == 2
    # New content at the same URI -> a new id.
    _touch(tmp_path / "c" / "a.mp4", b"different content")
    changed, _ = discover(str(tmp_path / "c"))
    assert changed[0].video_id != srcs[0].video_id and changed[1].video_id == srcs[1].video_id


def test_missing_root_is_an_input_error(tmp_path):
    with pytest.raises(InputError, match="input not found"):
        discover(str(tmp_path / "nope"))


@pytest.mark.parametrize("fmt", ["csv", "jsonl", "parquet"])
def test_manifests_resolve_relative_and_reject_bad_lines(tmp_path, fmt):
    v1 = _touch(tmp_path / "m" / "v1.mp4")
    v2 = _touch(tmp_path / "other" / "v2.mov")
    outside = _touch(tmp_path / "secret.mp4")
    entries = ["v1.mp4", v2, "../secret.mp4", "", "v1.mp4", "notes.txt", f"file://{outside}"]
    man = tmp_path / "m" / f"list.{fmt}"
    if fmt == "csv":
        man.write_text("uri,label\n" + "\n".join(f"{e},x" for e in entries) + "\n")
    elif fmt == "jsonl":
        man.write_text("\n".join(json.dumps({"uri": e}) for e in entries) + "\n")
    else:
        pq.write_table(pa.table({"uri": entries}), man)
    srcs, rej = discover(str(man))
    assert [s.uri for s in srcs] == [v1, v2]
    reasons = {r.entry: r.reason for r in rej}
    assert "escapes" in reasons["../secret.mp4"]
    assert reasons[""] == "empty uri"
    assert "not a supported media suffix" in reasons["notes.txt"]
    assert "outside the allowed roots" in reasons[f"file://{outside}"]
    assert any(r.reason == "duplicate entry" for r in rej)
    first_line = {"csv": 2, "jsonl": 1, "parquet": 1}[fmt]
    assert [r.line for r in rej if r.entry == "../secret.mp4"] == [first_line + 2]


def test_symlink_out_of_allowed_root_rejected(tmp_path):
    secret = _touch(tmp_path / "secret" / "x.mp4")
    os.makedirs(tmp_path / "m")
    os.symlink(secret, tmp_path / "m" / "link.mp4")
    man = tmp_path / "m" / "list.csv"
    man.write_text("uri\nlink.mp4\n")
    srcs, rej = discover(str(man), allowed_roots=[str(tmp_path / "m")])
    assert srcs == [] and "outside the allowed roots" in rej[0].reason


def test_manifest_without_uri_column(tmp_path):
    man = tmp_path / "list.csv"
    man.write_text("path\na.mp4\n")
    with pytest.raises(InputError, match="no 'uri' column"):
        discover(str(man))


def test_s3_prefix_and_manifest(s3_bucket):
    storage.write_bytes(f"{s3_bucket}/corpus/a.mp4", b"a")
    storage.write_bytes(f"{s3_bucket}/corpus/b.png", b"b")
    storage.write_text(f"{s3_bucket}/corpus/list.jsonl", '{"uri": "a.mp4"}\n{"uri": "../x.mp4"}\n')
    srcs, _ = discover(f"{s3_bucket}/corpus")
    assert [s.uri for s in srcs] == [f"{s3_bucket}/corpus/a.mp4", f"{s3_bucket}/corpus/b.png"]
    srcs, rej = discover(f"{s3_bucket}/corpus/list.jsonl")
    assert [s.uri for s in srcs] == [f"{s3_bucket}/corpus/a.mp4"] and "escapes" in rej[0].reason


def test_videos_are_dispatched_largest_first():
    """A long video listed last would run alone at the end of the job: the largest files go
    first, unknown sizes last, listing order among equal sizes."""
    from workflows.annotate.ingest import VideoSource
    from workflows.annotate.pipeline import largest_first

    srcs = [VideoSource(str(i), f"/d/{i}.mp4", size, "fp") for i, size in
            enumerate([10, None, 300, 10, 5000, 0])]
    assert [s.video_id for s in largest_first(srcs)] == ["4", "2", "0", "3", "1", "5"]
