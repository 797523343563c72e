"""`mien annotate` end to end on real media, a real local Ray and real MLflow (sqlite)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time

import pandas as pd
import pyarrow.dataset as pads
import pytest

from tests.integration.conftest import shared_checker
from workflows.annotate.pipeline import AnnotateConfig, annotate
from workflows.core.config import load_config
from workflows.corpus import schema
from workflows.corpus.contract import check_output

pytestmark = pytest.mark.timeout(900)

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _cfg(tmp_path, *extra):
    return load_config(AnnotateConfig, None, [f"mlflow.tracking_uri=sqlite:///{tmp_path}/mlflow.db",
                                              "ray.faces.concurrency=2", "ray.faces.num_cpus=0.8", *extra])


def _read(out, name):
    return pads.dataset(os.path.join(out, name), format="parquet").to_table().to_pandas()


def _check_contract(out):
    assert check_output(str(out)) == []
    for name, sch in schema.TABLES.items():  # exactly the contract's columns, none added
        t = pads.dataset(os.path.join(out, name), format="parquet").to_table()
        assert t.schema.equals(sch), name


@pytest.fixture(scope="module")
def first_run(corpus, tmp_path_factory, local_ray):
    tmp = tmp_path_factory.mktemp("run1")
    out = str(tmp / "out")
    summary = annotate(str(corpus), out, _cfg(tmp), progress=False)
    return tmp, out, summary


def test_mixed_corpus_contract_and_statuses(first_run, corpus):
    tmp, out, summary = first_run
    _check_contract(out)
    videos = _read(out, "videos").set_index("video_uri")
    assert len(videos) == 6 and summary.videos_ok == 4 and summary.videos_error == 2
    bad = videos.loc[str(corpus / "broken_text.mp4")]
    assert bad.status == "error" and bad.error_kind == "invalid_data" and "not a decodable" in bad.error
    assert videos.loc[str(corpus / "broken_truncated.mp4")].status == "error"
    assert videos.loc[str(corpus / "no_face.mp4")].status == "ok"
    assert videos.loc[str(corpus / "synthetic_noface.mp4")].n_faces == 0
    smile = videos.loc[str(corpus / "smiling.mp4")]
    assert smile.status == "ok" and smile.n_frames >= 15 and smile.n_faces >= smile.n_frames * 0.8
    assert smile.width == 640 and smile.height == 360
    still = videos.loc[str(corpus / "single_face.jpg")]
    assert still.n_frames == 1 and still.n_faces == 1


def test_the_shared_checker_agrees_with_the_contract_check(first_run, tmp_path):
    """The workspace's own checker (outside this repository) and mien's, on the same real output:
    both accept it, and both reject it once a committed chunk is there twice (a video with two ok
    rows of one run, each face twice)."""
    checker = shared_checker()
    if checker is None:
        pytest.skip("no ../shared/tools/check_annotate_output.py beside the repository to compare with")
    _, out, _ = first_run

    def shared(root):
        r = subprocess.run([sys.executable, str(checker), str(root)], capture_output=True, text=True)
        assert r.returncode in (0, 1), r.stdout + r.stderr
        return r.returncode == 0, r.stdout

    ok, report = shared(out)
    assert ok and check_output(out) == [], report
    twice = tmp_path / "out"
    shutil.copytree(out, twice)
    for name in ("faces", "tracks", "videos"):  # the commit order
        part = sorted((twice / name).glob("*.parquet"))[0]
        shutil.copyfile(part, part.with_name("20990101T000000Z-copy0000-00000.parquet"))
    ok, report = shared(twice)
    problems = check_output(str(twice))
    assert not ok and "more than one ok row" in report, report
    assert any("several rows from one run" in p for p in problems), problems
    assert any(p.startswith("faces: ") and "duplicate row(s)" in p for p in problems) == \
        ("duplicate face rows" in report), (problems, report)


def test_faces_and_tracks_are_meaningful(first_run, corpus):
    _, out, _ = first_run
    videos = _read(out, "videos").set_index("video_uri")
    faces = _read(out, "faces")
    smile_id = videos.loc[str(corpus / "smiling.mp4")].video_id
    f = faces[faces.video_id == smile_id]
    assert f.track_id.nunique() == 1  # one person, one stable track
    assert (f.fe_label == "happiness").mean() >= 0.6
    for _, row in f.head(3).iterrows():
        probs = dict(row.fe_probs)
        assert set(probs) == {"neutral", "happiness", "sadness", "surprise", "fear", "disgust", "anger"}
        assert abs(sum(probs.values()) - 1) < 1e-4
        assert all(k.startswith("AU") and 0 <= v <= 1 for k, v in dict(row.au_probs).items())
        x0, y0, x1, y1 = row.bbox
        assert 0 <= x0 < x1 <= 640 and 0 <= y0 < y1 <= 360
        assert row.crop_jpeg[:2] == b"\xff\xd8"
    assert "AU12" in set().union(*[set(a) for a in f.au_active])
    tracks = _read(out, "tracks")
    t = tracks[tracks.video_id == smile_id]
    assert t.n_frames.sum() == len(f) and (t.start_s <= t.end_s).all()


def test_rerun_skips_done_and_force_redoes(first_run, corpus):
    tmp, out, first = first_run
    faces_before = len(_read(out, "faces"))
    again = annotate(str(corpus), out, _cfg(tmp), progress=False)
    # The two broken files failed in the file itself: a rerun leaves them (and says so) ...
    assert again.videos_skipped == 4 and again.videos_ok == 0 and again.videos_error == 0
    assert sum(again.errors_not_retried.values()) == 2 and "invalid_data" in again.errors_not_retried
    assert "2 video(s) not retried" in again.render() and "--retry-errors" in again.render()
    # ... --retry-errors tries them again, and the output still holds one current row per video.
    retried = annotate(str(corpus), out, _cfg(tmp), retry_errors=True, progress=False)
    assert retried.videos_skipped == 4 and retried.videos_error == 2 and not retried.errors_not_retried
    from workflows.corpus.reader import AnnotationOutput

    current = AnnotationOutput(out).current_videos()
    assert len(current) == 6 and sorted(r["attempts"] for r in current if r["status"] == "error") == [2, 2]
    forced = annotate(str(corpus), out, _cfg(tmp), force=True, progress=False)
    assert forced.videos_skipped == 0 and forced.videos_ok == 4
    _check_contract(out)
    v = _read(out, "videos")
    assert (v[v.status == "ok"].groupby("video_id").size() == 1).all()
    assert len(_read(out, "faces")) == faces_before


def test_run_json_and_mlflow(first_run):
    import json

    import mlflow

    tmp, out, summary = first_run
    with open(os.path.join(out, "runs", f"{summary.run_id}.json")) as fh:
        doc = json.load(fh)
    assert doc["counts"]["videos_ok"] == 4 and doc["model_id"] and doc["config"]["decode"]["sampling"] == "fps:2"
    assert doc["assets"]["yunet"]["sha256"]
    # Where the time went: stage busy seconds and pool utilisation for capacity planning.
    t = doc["timings"]
    assert t["decode_faces_s"] > 0 and t["mllm_s"] > 0 and 0 < t["first_result_s"] <= t["wall_s"]
    assert 0 < t["utilisation"]["faces"] <= 1.0 and doc["stage_plan"]["faces"]["concurrency"] == 2
    assert doc["stage_plan"]["mllm"]["fused"] and t["utilisation"]["mllm"] is None  # default model, no GPU
    assert "pools: faces 2 actor(s)" in summary.render() and "inside the face actors" in summary.render()
    client = mlflow.MlflowClient(f"sqlite:///{tmp}/mlflow.db")
    exp = client.get_experiment_by_name("mien-annotate")
    runs = client.search_runs([exp.experiment_id], filter_string=f"tags.`mien.run_id` = '{summary.run_id}'")
    assert len(runs) == 1 and runs[0].data.metrics["videos_ok"] == 4
    assert runs[0].data.params["decode.sampling"] == "fps:2"


def test_readable_with_duckdb_and_pandas(first_run):
    import duckdb

    _, out, _ = first_run
    n = duckdb.sql(f"select count(*) from read_parquet('{out}/faces/*.parquet')").fetchall()[0][0]
    assert n == len(pd.read_parquet(os.path.join(out, "faces")))
    top = duckdb.sql(f"select fe_label, count(*) c from read_parquet('{out}/faces/*.parquet') "
                     "group by 1 order by 2 desc limit 1").fetchall()[0]
    assert top[0] == "happiness"


def _cli(args, env_extra=None, **kw):
    env = dict(os.environ, **(env_extra or {}))
    return subprocess.Popen([sys.executable, "-m", "jobs.cli", *args], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kw)


def test_cli_exit_codes_for_bad_config_and_input(tmp_path):
    p = _cli(["annotate", "--input", str(tmp_path / "nope"), "--output", str(tmp_path / "o")])
    out, _ = p.communicate(timeout=120)
    assert p.returncode == 2 and "input not found" in out
    p = _cli(["annotate", "--input", str(tmp_path), "--output", str(tmp_path / "o"), "--set", "decode.smapling=x"])
    out, _ = p.communicate(timeout=120)
    assert p.returncode == 2 and "decode.smapling: unknown key" in out and "did you mean 'sampling'" in out
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    if os.geteuid() != 0:  # root can write anywhere
        p = _cli(["annotate", "--input", str(tmp_path), "--output", str(ro / "o")])
        out, _ = p.communicate(timeout=120)
        assert p.returncode == 2 and "not writable" in out


def test_killed_driver_then_rerun_equals_clean_run(corpus, tmp_path, first_run):
    """kill -9 the driver after the first committed chunk; the rerun completes it exactly."""
    import shutil

    _, clean_out, _ = first_run
    clean = pd.read_parquet(os.path.join(clean_out, "videos")).drop_duplicates("video_uri", keep="last")
    clean_faces = dict(zip(clean.video_uri.map(os.path.basename), clean.n_faces, strict=True))
    # Several seconds of face work per video, so the kill lands with videos still in flight.
    kill_corpus = tmp_path / "corpus"
    kill_corpus.mkdir()
    for i in range(5):
        shutil.copyfile(corpus / "smiling.mp4", kill_corpus / f"smiling_{i}.mp4")
    for name in ("single_face.jpg", "broken_text.mp4"):
        shutil.copyfile(corpus / name, kill_corpus / name)
    out = tmp_path / "out"
    args = ["annotate", "--input", str(kill_corpus), "--output", str(out), "--no-progress",
            "--set", "output.flush_every_videos=1", "--set", "mlflow.enabled=false",
            "--set", "ray.faces.concurrency=1"]
    p = _cli(args)
    deadline = time.time() + 300
    while time.time() < deadline and p.poll() is None:
        if (out / "videos").exists() and list((out / "videos").glob("*.parquet")):
            break
        time.sleep(0.05)
    assert p.poll() is None, "the run finished before it could be killed: " + (p.stdout.read() or "")
    p.kill()  # SIGKILL: no cleanup, no flush
    p.wait()
    committed = len(pd.read_parquet(out / "videos"))
    assert 1 <= committed < 7
    p = _cli(args)
    log, _ = p.communicate(timeout=600)
    assert p.returncode == 0, log
    _check_contract(str(out))
    v = pd.read_parquet(out / "videos")
    ok = v[v.status == "ok"]
    assert ok.video_id.is_unique and len(ok) == 6
    got = dict(zip(ok.video_uri.map(os.path.basename), ok.n_faces, strict=True))
    assert got == {**{f"smiling_{i}.mp4": clean_faces["smiling.mp4"] for i in range(5)},
                   "single_face.jpg": clean_faces["single_face.jpg"]}
    f = pd.read_parquet(out / "faces")
    assert not f.duplicated(["video_id", "frame_index", "track_id"]).any()
    assert len(f) == sum(got.values())


def test_s3_in_and_out_with_manifest(corpus, s3_bucket, tmp_path, local_ray):
    import pyarrow.dataset as pads

    from workflows.core import storage

    for name in ("single_face.jpg", "broken_text.mp4"):
        storage.write_bytes(f"{s3_bucket}/in/{name}", (corpus / name).read_bytes())
    storage.write_text(f"{s3_bucket}/in/manifest.jsonl",
                       '{"uri": "single_face.jpg"}\n{"uri": "broken_text.mp4"}\n{"uri": "../escape.mp4"}\n')
    out = f"{s3_bucket}/out"
    # Two pools here (the MLLM in its own actor), fused in the other tests: both shapes run.
    summary = annotate(f"{s3_bucket}/in/manifest.jsonl", out, _cfg(tmp_path, "ray.fuse_stages=never"),
                       progress=False)
    assert summary.videos_ok == 1 and summary.videos_error == 1 and len(summary.rejected) == 1
    assert summary.plan["mllm"]["concurrency"] == 1 and not summary.plan["mllm"]["fused"]
    fs, path = storage.filesystem(out)
    faces = pads.dataset(f"{path}/faces", filesystem=fs, format="parquet").to_table()
    videos = pads.dataset(f"{path}/videos", filesystem=fs, format="parquet").to_table().to_pandas()
    assert len(faces) == 1 and faces.schema.equals(schema.FACES)
    assert set(videos.video_uri) == {f"{s3_bucket}/in/single_face.jpg", f"{s3_bucket}/in/broken_text.mp4"}
    assert storage.list_files(f"{out}/runs", (".json",))
    again = annotate(f"{s3_bucket}/in/manifest.jsonl", out, _cfg(tmp_path), progress=False)
    assert again.videos_skipped == 1
