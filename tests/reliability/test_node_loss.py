"""Node loss on a real multi-node Ray (``ray.cluster_utils.Cluster``: separate raylets and
object stores in one machine): a worker node is killed while `annotate` runs on it."""

from __future__ import annotations

import threading
import time

import pytest

from tests.reliability.conftest import annotate_cfg, check_contract, faces_per_video, videos_table
from workflows.annotate.pipeline import annotate

pytestmark = [pytest.mark.slow, pytest.mark.timeout(480)]  # ~70 s on 2 cores: a 3-node cluster, two passes


def _raylet_pid(node) -> int:
    from ray._private import ray_constants

    return node.all_processes[ray_constants.PROCESS_TYPE_RAYLET][0].process.pid


def _gone(pid: int) -> bool:
    import psutil

    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _node_running(nodes, title: str):
    """The node whose raylet parents a live worker with ``title`` in its process title."""
    import psutil

    by_raylet = {_raylet_pid(n): n for n in nodes}
    for p in psutil.process_iter(["cmdline", "ppid"]):
        cmd = " ".join(p.info["cmdline"] or [])
        if title in cmd and p.info["ppid"] in by_raylet:
            return by_raylet[p.info["ppid"]]
    return None


def test_worker_node_lost_mid_run(face_corpus, reference_faces, tmp_path, monkeypatch):
    """Head with no CPUs (driver only) + two 2-CPU workers. The driver is held at its first
    commit (``commit_pause``: Ray Data goes on in the background) and, while it is held, the worker
    hosting the MLLM actor is killed (no graceful shutdown): its actors, in-flight tasks and object
    store vanish. The job must still finish with exactly one ok row per video and the clean run's
    face counts. (Waiting for the first commit without holding the driver raced a fast run: the
    node could go after the last video.)"""
    import ray
    from ray.cluster_utils import Cluster

    state = tmp_path / "faults"
    state.mkdir()
    monkeypatch.setenv("MIEN_FAULT_INJECT", "commit_pause:clip")  # every clip's commit waits for its marker
    monkeypatch.setenv("MIEN_FAULT_STATE_DIR", str(state))

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False})
    workers = [cluster.add_node(num_cpus=2) for _ in range(2)]
    cluster.wait_for_nodes()
    out = tmp_path / "out"
    # Two pools, so the MLLM actor has a node of its own to lose.
    cfg = annotate_cfg(tmp_path, f"ray.address={cluster.address}", "output.flush_every_videos=1",
                       "ray.fuse_stages=never")
    killed: dict[str, object] = {}

    running = threading.Event()

    def kill_when_busy() -> None:
        deadline = time.time() + 240
        while time.time() < deadline and not list(state.glob("*.paused")):
            time.sleep(0.05)
        victim = _node_running(workers, "MllmStage") or _node_running(workers, "DecodeFacesStage")
        if victim is not None:
            killed.update(node=victim, raylet=_raylet_pid(victim), at=time.time())
            cluster.remove_node(victim, allow_graceful=False)
        while running.is_set():  # let every held commit go on (this one and the later ones)
            for marker in state.glob("*.paused"):
                marker.unlink(missing_ok=True)
            time.sleep(0.05)

    killer = threading.Thread(target=kill_when_busy, daemon=True)
    try:
        running.set()
        killer.start()
        t0 = time.time()
        summary = annotate(str(face_corpus), str(out), cfg, progress=False)
        done = time.time()
        running.clear()
        killer.join(timeout=5)
        assert "node" in killed, "no worker node was removed"
        print(f"node loss run: {done - t0:.1f} s; node removed {killed['at'] - t0:.1f} s in")
        assert killed["at"] < done - 0.5, "the node was removed after the run"
        assert _gone(killed["raylet"]), "the removed node's raylet still runs"
    finally:
        ray.shutdown()
        cluster.shutdown()
    assert (summary.videos_total, summary.videos_ok, summary.videos_error) == (10, 10, 0), summary.render()
    v = videos_table(str(out))
    assert len(v) == 10 and (v.status == "ok").all() and v.video_id.is_unique
    assert faces_per_video(str(out)) == reference_faces
    check_contract(str(out))
