"""Privacy mode writes no face crop, and denied videos are never decoded: real ``mien annotate``
runs (the local executor, real clips) and the output's files as they are on disk."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.outputs.conftest import build_annotated_output, mien
from workflows.annotate.ingest import discover
from workflows.annotate.pipeline import AnnotateConfig, annotate
from workflows.core.config import ConfigError, load_config
from workflows.corpus.privacy import STRICT_NO_CROPS, forgotten_uri, read_deny_list, record_forgotten

pytestmark = pytest.mark.timeout(600)

JPEG_MAGIC = b"\xff\xd8\xff"


def _cfg(*extra: str) -> AnnotateConfig:
    return load_config(AnnotateConfig, None, ["mlflow.enabled=false", "executor.kind=local", *extra])


@pytest.fixture(scope="module")
def clips(three_clips) -> Path:
    return three_clips


def jpeg_bytes_under(root: Path) -> list[str]:
    """Files under ``root`` holding JPEG data: its magic in the raw bytes, or, in a Parquet file
    (compressed pages hide it), in any decoded binary value."""
    found = []
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        if JPEG_MAGIC in path.read_bytes():
            found.append(str(path))
        elif path.suffix == ".parquet":
            t = pq.read_table(path)
            if any(bytes(v).startswith(JPEG_MAGIC) for col in t.columns if pa.types.is_binary(col.type)
                   for v in col.to_pylist() if v is not None):
                found.append(str(path))
    return found


def test_a_strict_run_writes_no_face_crop_and_commands_needing_crops_say_why(clips, tmp_path, capsys):
    assert jpeg_bytes_under(build_annotated_output(tmp_path / "default").root)  # the search finds crops

    out = tmp_path / "strict"
    summary = annotate(str(clips), str(out), _cfg("output.privacy=strict", "output.crops=true"), progress=False,
                       limit=2)
    assert summary.videos_ok == 2 and summary.faces > 0
    assert jpeg_bytes_under(out) == []
    [record] = [json.loads(p.read_text()) for p in (out / "runs").glob("*.json")]
    assert record["config"]["output"]["privacy"] == "strict" and record["config"]["output"]["crops"] is False

    capsys.readouterr()
    assert mien("review", "export", "--input", out, "--output", tmp_path / "review") == 2
    err = capsys.readouterr().err
    assert STRICT_NO_CROPS in err and "Traceback" not in err
    assert mien("report", "--input", out) == 0  # no crops to show is not an error
    assert not (tmp_path / "review" / "tasks.json").exists()


def test_privacy_mode_is_checked_when_the_config_loads():
    with pytest.raises(ConfigError, match=r"output.privacy: must be one of off, strict, got 'paranoid'"):
        _cfg("output.privacy=paranoid")


def test_denied_videos_are_never_decoded_and_are_counted(clips, tmp_path, monkeypatch):
    """a_smile is denied by video_id, c_smile by URI through a deny-list file. A worker that met
    either would die (fault injection), so an error-free run proves neither was decoded."""
    monkeypatch.setenv("MIEN_FAULT_INJECT", "faces_exit:a_smile,faces_exit:c_smile")
    monkeypatch.setenv("MIEN_FAULT_STATE_DIR", str(tmp_path))
    ids = {Path(s.uri).name: s.video_id for s in discover(str(clips)).sources}
    listing = tmp_path / "deny.txt"
    listing.write_text(f"# people who asked not to be annotated\n{clips / 'c_smile.mp4'}\n\n")
    out = tmp_path / "out"
    summary = annotate(str(clips), str(out), _cfg(f"ingest.deny_list=[{ids['a_smile.mp4']}]",
                                                  f"ingest.deny_list_file={listing}"), progress=False)
    assert (summary.denied, summary.videos_total, summary.videos_ok, summary.videos_error) == (2, 3, 1, 0)
    assert "2 video(s) on the deny-list not annotated" in summary.render()
    [record] = [json.loads(p.read_text()) for p in (out / "runs").glob("*.json")]
    assert record["counts"]["denied"] == 2
    assert set(pq.read_table(out / "videos", columns=["video_id"]).column("video_id").to_pylist()) == {
        ids["b_single.mp4"]}


def test_a_deny_list_file_that_cannot_be_read_stops_the_run_before_anything_is_annotated(clips, tmp_path):
    out = tmp_path / "out"
    with pytest.raises(ConfigError, match=r"ingest.deny_list_file: cannot read .*missing.txt"):
        annotate(str(clips), str(out), _cfg(f"ingest.deny_list_file={tmp_path / 'missing.txt'}"), progress=False)
    assert not (out / "videos").exists() and not list((out / "_runs").glob("*"))


def test_the_outputs_own_list_names_no_uri_and_denies_the_uri_again(tmp_path):
    out = str(tmp_path / "out")
    video = tmp_path / "corpus" / "alice_interview.mp4"
    assert record_forgotten(out, [("v1", str(video)), ("v2", None)]) == 2
    assert record_forgotten(out, [("v1", str(video))]) == 0  # a rerun adds nothing
    text = Path(forgotten_uri(out)).read_text()
    assert "alice" not in text and [json.loads(line)["video_id"] for line in text.splitlines()] == ["v1", "v2"]
    deny = read_deny_list(out)
    assert deny.denies("v2", "/elsewhere/x.mp4")
    assert deny.denies("a new file at that path", str(video))
    assert not deny.denies("v3", str(tmp_path / "corpus" / "bob.mp4"))
