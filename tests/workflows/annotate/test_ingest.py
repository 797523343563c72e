import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.conftest import environ
from workflows.annotate.ingest import NO_CREDENTIALS, InputError, discover
from workflows.annotate.pipeline import AnnotateSummary
from workflows.core import storage
from workflows.core.storage import strip_file_scheme

ROOT = Path(__file__).resolve().parents[3]


def _touch(p, data=b"x"):
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(data)
    return str(p)


def test_directory_discovery_filters_media_and_ids_are_stable(tmp_path):
    a = _touch(tmp_path / "c" / "a.mp4")
    b = _touch(tmp_path / "c" / "sub" / "b.JPG")
    _touch(tmp_path / "c" / "notes.txt")
    found = discover(str(tmp_path / "c"))
    srcs = found.sources
    assert [s.uri for s in srcs] == [a, b] and found.rejected == []
    again = discover(str(tmp_path / "c")).sources
    assert [s.video_id for s in srcs] == [s.video_id for s in again]
    assert len({s.video_id for s in srcs}) == 2
    # New content at the same URI -> a new id.
    _touch(tmp_path / "c" / "a.mp4", b"different content")
    changed = discover(str(tmp_path / "c")).sources
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
    found = discover(str(man))
    srcs, rej = found.sources, found.rejected
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
    found = discover(str(man), allowed_roots=[str(tmp_path / "m")])
    assert found.sources == [] and "outside the allowed roots" in found.rejected[0].reason


def test_manifest_without_uri_column(tmp_path):
    man = tmp_path / "list.csv"
    man.write_text("path\na.mp4\n")
    with pytest.raises(InputError, match="no 'uri' column"):
        discover(str(man))


def test_s3_prefix_and_manifest(s3_bucket):
    storage.write_bytes(f"{s3_bucket}/corpus/a.mp4", b"a")
    storage.write_bytes(f"{s3_bucket}/corpus/b.png", b"b")
    storage.write_text(f"{s3_bucket}/corpus/list.jsonl", '{"uri": "a.mp4"}\n{"uri": "../x.mp4"}\n')
    found = discover(f"{s3_bucket}/corpus")
    assert [s.uri for s in found.sources] == [f"{s3_bucket}/corpus/a.mp4", f"{s3_bucket}/corpus/b.png"]
    assert found.skipped_non_media == {".jsonl": 1}  # the manifest, listed as a file of the prefix
    found = discover(f"{s3_bucket}/corpus/list.jsonl")
    assert [s.uri for s in found.sources] == [f"{s3_bucket}/corpus/a.mp4"] and "escapes" in found.rejected[0].reason


def test_videos_are_dispatched_largest_first():
    """A long video listed last would run alone at the end of the job: the largest files go
    first, unknown sizes last, listing order among equal sizes."""
    from workflows.annotate.ingest import VideoSource
    from workflows.annotate.plan import largest_first

    srcs = [VideoSource(str(i), f"/d/{i}.mp4", size, "fp") for i, size in
            enumerate([10, None, 300, 10, 5000, 0])]
    assert [s.video_id for s in largest_first(srcs)] == ["4", "2", "0", "3", "1", "5"]


def test_one_unreadable_csv_line_is_rejected_alone(tmp_path):
    """A field over the csv module's size limit used to abort the whole run."""
    v1, v2 = _touch(tmp_path / "m" / "v1.mp4"), _touch(tmp_path / "m" / "v2.mp4")
    man = tmp_path / "m" / "list.csv"
    man.write_text("uri,subject\nv1.mp4,a\n" + "x" * 200_000 + ".mp4,b\n\nv2.mp4,c\n")
    found = discover(str(man))
    assert [s.uri for s in found.sources] == [v1, v2]
    [bad] = found.rejected
    assert bad.line == 3 and "field larger than field limit" in bad.reason


def test_bad_jsonl_lines_are_rejected_alone_with_reasons(tmp_path):
    """Each line stands alone: invalid or too deeply nested JSON, a doubled 'uri' key, a 'uri'
    that is not a string; the good lines run (one holds U+2028, which is not a line break)."""
    v1, v2 = _touch(tmp_path / "m" / "v1.mp4"), _touch(tmp_path / "m" / "v\u2028two.mp4")
    lines = ['{"uri": "v1.mp4"}', "[" * 100_000 + "]" * 100_000, "{not json", '{"uri": "a.mp4", "uri": "b.mp4"}',
             '["v1.mp4"]', '{"uri": 3}', json.dumps({"uri": "v\u2028two.mp4", "subject": "s1"}, ensure_ascii=False)]
    man = tmp_path / "m" / "list.jsonl"
    man.write_text("\n".join(lines) + "\n")
    found = discover(str(man))
    assert [s.uri for s in found.sources] == [v1, v2]
    reasons = {r.line: r.reason for r in found.rejected}
    assert sorted(reasons) == [2, 3, 4, 5, 6]
    assert "nested too deeply" in reasons[2] and "not readable as JSON" in reasons[3]
    assert "'uri' key appears more than once" in reasons[4]
    assert "an object with a 'uri' key is required" in reasons[5] and "must be a string, got int" in reasons[6]


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_two_uri_columns_make_the_manifest_unusable_with_a_clear_message(tmp_path, fmt):
    man = tmp_path / f"list.{fmt}"
    if fmt == "csv":
        man.write_text("uri,uri\na.mp4,b.mp4\n")
    else:
        pq.write_table(pa.Table.from_arrays([pa.array(["a.mp4"]), pa.array(["b.mp4"])], names=["uri", "uri"]), man)
    with pytest.raises(InputError, match="has 2 'uri' columns .*give exactly one column named 'uri'"):
        discover(str(man))


@pytest.fixture
def no_aws_credentials(tmp_path):
    """No credential source botocore could find (the S3 test server's keys may be in the environment)."""
    import s3fs

    none = str(tmp_path / "no-such-file")
    with environ(AWS_ACCESS_KEY_ID=None, AWS_SECRET_ACCESS_KEY=None, AWS_SESSION_TOKEN=None, AWS_PROFILE=None,
                 AWS_SHARED_CREDENTIALS_FILE=none, AWS_CONFIG_FILE=none, AWS_EC2_METADATA_DISABLED="true",
                 AWS_CONTAINER_CREDENTIALS_RELATIVE_URI=None, AWS_CONTAINER_CREDENTIALS_FULL_URI=None,
                 AWS_WEB_IDENTITY_TOKEN_FILE=None):
        s3fs.S3FileSystem.clear_instance_cache()
        yield
    s3fs.S3FileSystem.clear_instance_cache()


def test_s3_entries_without_credentials_are_rejected_lines(tmp_path, no_aws_credentials):
    v1 = _touch(tmp_path / "m" / "v1.mp4")
    man = tmp_path / "m" / "list.csv"
    man.write_text("uri\ns3://bucket/a.mp4\nv1.mp4\ns3://bucket/b.mp4\n")
    found = discover(str(man))
    assert [s.uri for s in found.sources] == [v1]
    assert [(r.entry, r.line, r.reason) for r in found.rejected] == [
        ("s3://bucket/a.mp4", 2, NO_CREDENTIALS), ("s3://bucket/b.mp4", 4, NO_CREDENTIALS)]
    with pytest.raises(InputError, match="cannot list s3://bucket/corpus: no credentials .*AWS_ACCESS_KEY_ID"):
        discover("s3://bucket/corpus")


def test_files_that_are_not_media_are_counted_by_extension(tmp_path):
    for name in ["a.mp4", "README.txt", "sub/notes.TXT", "sub/take1.wav", "clip.y4m", ".DS_Store"]:
        _touch(tmp_path / "c" / name)
    found = discover(str(tmp_path / "c"))
    assert [Path(s.uri).name for s in found.sources] == ["a.mp4"]
    assert found.skipped_non_media == {".txt": 2, "(no extension)": 1, ".wav": 1, ".y4m": 1}
    assert discover(str(tmp_path / "c" / "README.txt")).skipped_non_media == {".txt": 1}


def test_the_summary_prints_one_line_per_error_whatever_the_file_name_holds():
    """A newline or a terminal escape in a file name must not forge lines of the summary."""
    uri = "/d/a\n  error /d/b.mp4: [ok] fine\x1b[2J.mp4"
    text = AnnotateSummary(run_id="r", output="o", videos_error=1, skipped_non_media={".txt": 2, ".wav": 1},
                           errors=[{"video_uri": uri, "error_kind": "not_found",
                                    "error": f"no such file: {uri}"}]).render()
    lines = text.splitlines()
    assert len(lines) == 4 and "\x1b" not in text and lines[2] == "skipped 3 non-media file(s): .txt 2, .wav 1"
    assert lines[3].startswith("  error /d/a\\x0a  error /d/b.mp4")


def test_a_latin1_file_name_is_annotated_under_a_uri_that_leads_back_to_it(asset, tmp_path):
    """Old archives hold names that are not UTF-8. Parquet cannot store them as they are: the
    video is annotated under a percent-encoded file:// URI that maps back to the file, with a
    stable video_id; the README beside it is counted, not lost."""
    corpus = tmp_path / "in"
    corpus.mkdir()
    latin1 = os.path.join(os.fsencode(corpus), b"entr\xe9e.mp4")
    shutil.copyfile(asset("sample_single_face_video"), latin1)
    (corpus / "README.txt").write_text("what these clips are\n")
    out = tmp_path / "out"
    sets = [x for s in ["mlflow.enabled=false", "output.crops=false"] for x in ("--set", s)]
    r = subprocess.run([sys.executable, "-m", "jobs.cli", "annotate", "--input", str(corpus), "--output", str(out),
                        "--no-progress", *sets], cwd=ROOT, capture_output=True, text=True, timeout=600,
                       env={k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"})  # a local run
    assert r.returncode == 0, r.stdout + r.stderr
    assert "skipped 1 non-media file(s): .txt 1" in r.stdout
    [row] = pd.read_parquet(out / "videos").to_dict("records")
    assert row["status"] == "ok" and row["n_faces"] > 0, row
    assert row["video_uri"].startswith("file://") and row["video_uri"].endswith("/entr%E9e.mp4")
    assert os.path.samefile(strip_file_scheme(row["video_uri"]), latin1)
    assert row["video_id"] == discover(str(corpus)).sources[0].video_id  # the same id on the next run
    from jobs.cli import main

    assert main(["render", "--input", str(out), "--video", row["video_id"], "--output", str(tmp_path / "r.mp4")]) == 0
    assert (tmp_path / "r.mp4").stat().st_size > 0  # the tools that reopen the source find it too
    [run] = (out / "runs").glob("*.json")
    assert json.loads(run.read_text())["counts"]["skipped_non_media"] == {".txt": 1}


@pytest.mark.parametrize("fmt", ["csv", "jsonl", "parquet"])
def test_a_manifest_s_other_columns_travel_with_each_entry(tmp_path, fmt):
    _touch(tmp_path / "a.mp4")
    _touch(tmp_path / "b.mp4")
    rows = [{"uri": "a.mp4", "subject": "S017", "session": 2}, {"uri": "b.mp4", "subject": None, "session": 3}]
    man = tmp_path / f"list.{fmt}"
    if fmt == "csv":
        man.write_text("subject,uri,session\nS017,a.mp4,2\n,b.mp4,3\n")
    elif fmt == "jsonl":
        man.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    else:
        pq.write_table(pa.Table.from_pylist(rows), man)
    a, b = discover(str(man)).sources
    assert dict(a.meta) == {"subject": "S017", "session": "2"}  # as text, whatever the format typed
    assert dict(b.meta) == {"session": "3"}  # an empty or null value is no entry
    assert discover(str(tmp_path)).sources[0].meta is None  # a directory has no columns


def test_manifest_columns_reach_the_videos_table_of_ok_and_error_rows(asset, tmp_path):
    """Users keep subject, session and split beside each URI; the annotation must keep them, on
    the row of a video that failed too, so results can be grouped without a join on paths."""
    import mien

    shutil.copyfile(asset("sample_single_face_video"), tmp_path / "good.mp4")
    (tmp_path / "broken.mp4").write_bytes(b"not a video at all" * 100)
    man = tmp_path / "list.csv"
    man.write_text("uri,subject,split\ngood.mp4,S001,train\nbroken.mp4,S002,val\n")
    out = tmp_path / "out"
    sets = [x for s in ["mlflow.enabled=false", "output.crops=false"] for x in ("--set", s)]
    r = subprocess.run([sys.executable, "-m", "jobs.cli", "annotate", "--input", str(man), "--output", str(out),
                        "--no-progress", *sets], cwd=ROOT, capture_output=True, text=True, timeout=600,
                       env={k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"})
    assert r.returncode == 0, r.stdout + r.stderr
    raw = {Path(strip_file_scheme(v["video_uri"])).name: v for v in pd.read_parquet(out / "videos").to_dict("records")}
    assert raw["good.mp4"]["status"] == "ok" and raw["broken.mp4"]["status"] == "error"
    assert dict(raw["good.mp4"]["meta"]) == {"subject": "S001", "split": "train"}
    videos = mien.read(out).videos.set_index("meta_subject")
    assert videos.loc["S002", "status"] == "error" and videos.loc["S002", "meta_split"] == "val"
    assert videos.loc["S001", "meta_split"] == "train" and videos.loc["S001", "n_faces"] > 0
    from jobs.cli import main

    assert main(["export", "hf", "--input", str(out), "--output", str(tmp_path / "hf")]) == 0
    datasets = pytest.importorskip("datasets")
    hf = datasets.load_dataset(str(tmp_path / "hf"), "videos", split="train")
    assert sorted((r["meta"]["subject"], r["meta"]["split"]) for r in hf) == [("S001", "train"), ("S002", "val")]


def test_duplicate_entries_are_found_across_thousands_of_lines(tmp_path):
    """The duplicate check keeps compact sorted hashes once past a few thousand entries: a repeat of
    the first, a middle and the last entry is still rejected, and nothing else is."""
    (tmp_path / "v").mkdir()
    n = 9000
    for i in range(n):
        (tmp_path / "v" / f"c{i}.mp4").write_bytes(b"")
    lines = [f"v/c{i}.mp4" for i in range(n)] + ["v/c0.mp4", f"./v/c{n // 2}.mp4", f"v/c{n - 1}.mp4"]
    (tmp_path / "m.csv").write_text("uri\n" + "\n".join(lines) + "\n")
    found = discover(str(tmp_path / "m.csv"))
    assert len(found.sources) == n
    assert [(r.line, r.reason) for r in found.rejected] == [(n + 2, "duplicate entry"), (n + 3, "duplicate entry"),
                                                            (n + 4, "duplicate entry")]
