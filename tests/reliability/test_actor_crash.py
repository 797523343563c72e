"""Actor crashes injected with the MIEN_FAULT_INJECT chaos hook: a worker process that dies
on one video (as a segfault or the OOM killer would kill it) loses only that video."""

from __future__ import annotations

import shutil
import time

import pytest

from tests.reliability.conftest import annotate_cfg, check_contract, faces_per_video, local_ray, videos_table
from workflows.annotate.pipeline import annotate
from workflows.core.faults import InjectedFault, injected_faults

pytestmark = pytest.mark.timeout(420)


def test_fault_spec_parsing(monkeypatch):
    monkeypatch.delenv("MIEN_FAULT_INJECT", raising=False)
    assert injected_faults("mllm") == ()
    monkeypatch.setenv("MIEN_FAULT_INJECT", "mllm_exit:a.mp4, faces_exit_once:b.mp4,bogus:c,mllm_exit:")
    assert injected_faults("mllm") == (InjectedFault("mllm", "a.mp4"),)
    assert injected_faults("faces") == (InjectedFault("faces", "b.mp4", once=True),)


def test_crashing_actors_lose_only_their_own_video(face_corpus, reference_faces, tmp_path):
    """The MLLM actor dies on every attempt at clip03 (in a batch with 3 other videos); a face
    actor dies once on clip01. clip03 ends as one `worker_crash` error row; everything else is
    annotated exactly once, with the clean run's face counts."""
    state = tmp_path / "fault_state"
    state.mkdir()
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    names = ["clip00.mp4", "clip01.mp4", "clip02.mp4", "clip03.mp4", "still.jpg"]
    for n in names:
        shutil.copyfile(face_corpus / n, corpus / n)
    out = str(tmp_path / "out")
    # One Ray-level retry per task and one isolated crash pass (defaults: 2 and 2) keep it short.
    cfg = annotate_cfg(tmp_path, "ray.max_task_retries=1", "ray.crash_passes=1", "ray.mllm.batch_size=4")
    t0 = time.perf_counter()
    with local_ray(MIEN_FAULT_INJECT="mllm_exit:clip03.mp4,faces_exit_once:clip01.mp4",
                   MIEN_FAULT_STATE_DIR=str(state)):
        summary = annotate(str(corpus), out, cfg, progress=False)
    wall = time.perf_counter() - t0
    assert list(state.iterdir()), "the once-fault on clip01 never fired"
    assert (summary.videos_total, summary.videos_ok, summary.videos_error) == (5, 4, 1), summary.render()
    v = videos_table(out)
    assert len(v) == 5 and v.video_id.is_unique
    crashed = v[v.video_uri.str.endswith("clip03.mp4")].iloc[0]
    assert crashed.status == "error" and crashed.error_kind == "worker_crash"
    assert "died on every try (2 pass(es) x 2 tries" in crashed.error
    got = faces_per_video(out)
    want = {k: reference_faces[k] for k in names if k != "clip03.mp4"}
    assert got == want
    check_contract(out)
    print(f"crash run: {wall:.1f} s")


def test_a_video_delivered_twice_is_written_once(tmp_path, monkeypatch):
    """Ray may re-execute a block whose output was lost with a node; if both copies arrive,
    the second is dropped (no duplicate rows), and a video that never arrives is retried."""
    from workflows.annotate import runner
    from workflows.core import cluster

    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for n in ("a.mp4", "b.mp4"):
        (corpus / n).write_bytes(b"x")
    calls = []

    def fake_pipeline(rows, cfg, run_id, plan, progress=True, output_uri=""):
        calls.append(([r["uri"].rsplit("/", 1)[-1] for r in rows], plan))
        first = rows[:1] * 2 if len(rows) > 1 else []  # the first video twice; b never comes back
        for r in first:
            yield {"video_id": r["video_id"], "video_uri": r["uri"], "status": "error", "error_kind": "x",
                   "error": "test", "faces_ipc": None, "tracks_ipc": None, "n_frames": 0}

    monkeypatch.setattr(cluster, "init_ray", lambda *a, **k: {"CPU": 2.0})
    monkeypatch.setattr(runner, "run_pipeline", fake_pipeline)
    summary = annotate(str(corpus), str(tmp_path / "out"), annotate_cfg(tmp_path, "executor.kind=ray"),
                       progress=False)
    v = videos_table(str(tmp_path / "out"))
    assert len(v) == 2 and v.video_id.is_unique and summary.videos_error == 2 and summary.faces == 0
    assert [c[0] for c in calls] == [["a.mp4", "b.mp4"], ["b.mp4"], ["b.mp4"]]
    assert calls[1][1]["mllm"] == {**calls[0][1]["mllm"], "batch_size": 1, "max_tasks_in_flight": 1}
    assert v.set_index("video_uri").loc[str(corpus / "b.mp4")].error_kind == "worker_crash"
