"""Live-run leases on an output root: who is live, who yields which videos, and a run that
lost its lease stops before committing."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from workflows.core import storage
from workflows.corpus import schema
from workflows.corpus.lease import LeaseLost, RunLease, lease_uri, read_leases
from workflows.corpus.reader import AnnotationOutput
from workflows.corpus.writer import AnnotationSink

EARLY, LATE = "20260101T000000Z-aaaa1111", "20260101T000005Z-bbbb2222"


def test_a_later_run_leaves_the_videos_an_earlier_live_run_claimed(tmp_path):
    root = str(tmp_path / "out")
    with RunLease(root, EARLY) as early:
        with RunLease(root, LATE) as late:
            # started together: each sees the other's claims; only the later one yields
            assert late.claim(["v1", "v2", "v3"]) == {}
            held = early.claim(["v2", "v3", "v4"])
            assert held == {}
            held = late.claim(["v1", "v2", "v3"])
            assert sorted(held) == ["v2", "v3"] and held["v2"].run_id == EARLY
            assert "run " + EARLY in held["v2"].describe() and "pid" in held["v2"].describe()
            assert set(read_leases(root)) == {EARLY, LATE}
        assert set(read_leases(root)) == {EARLY}  # an ended run removes its lease and claims
    assert read_leases(root) == {}
    with RunLease(root, LATE) as late:  # the earlier run ended: nothing is held any more
        assert late.claim(["v2"]) == {}


def test_a_lease_is_dead_when_its_process_is_gone_or_its_heartbeat_stale(tmp_path):
    root = str(tmp_path / "out")
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True)
    with RunLease(root, EARLY) as lease:
        doc = json.loads(storage.read_text(lease.uri))
    storage.write_text(lease_uri(root, EARLY), json.dumps({**doc, "pid": int(gone.stdout)}))
    storage.write_text(lease_uri(root, LATE), json.dumps({**doc, "run_id": LATE, "host": "elsewhere",
                                                          "heartbeat_at": time.time() - 500}))
    leases = read_leases(root)
    assert "process" in leases[EARLY].dead_because() and "gone" in leases[EARLY].dead_because()
    assert "no heartbeat for 500 s" in leases[LATE].dead_because()
    with RunLease(root, "20260101T000009Z-cccc3333") as live:
        assert read_leases(root)[live.run_id].dead_because() is None
        assert live.claim(["v1"]) == {}  # dead runs' claims do not count
        assert AnnotationSink(root, live.run_id).remove_orphans() == []
    assert read_leases(root) == {}  # the dead runs' leases were removed with their leftovers


def test_a_run_that_cannot_refresh_its_lease_commits_nothing(tmp_path):
    """Another run takes a run without heartbeat for ttl as dead and may remove its uncommitted
    parts: the run stops before its commit (at ttl/2) instead of committing faces that may be gone."""
    root = tmp_path / "out"
    with RunLease(str(root), EARLY, ttl_s=0.4) as lease:
        sink = AnnotationSink(str(root), EARLY, lease=lease)
        sink.add(schema.table("videos", [{"video_id": "v1", "video_uri": "/c/v1.mp4", "status": "ok",
                                          "run_id": EARLY, "finished_at": sink.commit_time()}]),
                 schema.FACES.empty_table(), schema.TRACKS.empty_table(), n_videos=1)
        lease_file = root / "_runs" / f"{EARLY}.lease"
        lease_file.unlink()
        lease_file.mkdir()  # every refresh now fails, as on a lasting storage outage
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                lease.check()
            except LeaseLost:
                break
            time.sleep(0.05)
        with pytest.raises(LeaseLost, match="stops before committing"):
            sink.flush()
    assert not (root / "videos").exists()  # nothing committed
    assert AnnotationOutput(str(root), must_exist=False).committed_videos().empty
