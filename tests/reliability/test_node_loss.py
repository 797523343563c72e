"""Node loss on a real multi-node Ray (``ray.cluster_utils.Cluster``: separate raylets and
object stores in one machine): a worker node is killed while `annotate` runs on it."""

from __future__ import annotations

import contextlib
import threading
import time
from pathlib import Path

import pytest

from tests.reliability.conftest import annotate_cfg, check_contract, faces_per_video, videos_table
from workflows.annotate.pipeline import annotate
from workflows.corpus.reader import AnnotationOutput

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


def _node_of(nodes, pid: int):
    """The node whose raylet is an ancestor of process ``pid`` (None: not on one of ``nodes``)."""
    import psutil

    by_raylet = {_raylet_pid(n): n for n in nodes}
    try:
        return next((by_raylet[p.pid] for p in psutil.Process(pid).parents() if p.pid in by_raylet), None)
    except psutil.NoSuchProcess:
        return None


def _held_pid(state: Path) -> int | None:
    """The process a ``*_pause`` fault holds: it writes its pid into the marker file."""
    for marker in state.glob("*.paused"):
        with contextlib.suppress(OSError, ValueError, IndexError):  # deleted, or not written yet
            return int(marker.read_text().split()[0])
    return None


@pytest.mark.parametrize("sink", ["driver", "workers"])
def test_worker_node_lost_mid_run(face_corpus, reference_faces, tmp_path, monkeypatch, sink):
    """Head with no CPUs (driver only) + two 2-CPU workers. The run is held at its first chunk and,
    while it is held, the worker hosting the MLLM actor is killed (no graceful shutdown): its actors,
    in-flight tasks and object store vanish. The job must still finish with exactly one ok row per
    video and the clean run's face counts. (Waiting for the first commit without holding the run
    raced a fast run: the node could go after the last video.)

    ``driver`` sink: the driver is held at its first commit (``commit_pause``; Ray Data goes on in
    the background). ``workers`` sink: the MLLM actor is held right after writing its first chunk's
    parts (``written_pause``), so the node takes a chunk whose rows never reach the driver: its
    videos must be annotated again and the parts nobody committed removed."""
    import psutil
    import ray
    from ray.cluster_utils import Cluster

    state = tmp_path / "faults"
    state.mkdir()
    # every clip's commit (driver) or written chunk (workers) waits for its marker
    monkeypatch.setenv("MIEN_FAULT_INJECT", {"driver": "commit_pause:clip", "workers": "written_pause:clip"}[sink])
    monkeypatch.setenv("MIEN_FAULT_STATE_DIR", str(state))

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False})
    workers = [cluster.add_node(num_cpus=2) for _ in range(2)]
    cluster.wait_for_nodes()
    out = tmp_path / "out"
    # Two pools, so the MLLM actor has a node of its own to lose.
    cfg = annotate_cfg(tmp_path, f"ray.address={cluster.address}", "output.flush_every_videos=1",
                       "ray.fuse_stages=never", f"output.sink={sink}")
    killed: dict[str, object] = {}

    running = threading.Event()

    def kill_when_busy() -> None:
        deadline = time.time() + 240
        while time.time() < deadline and (held := _held_pid(state)) is None:
            time.sleep(0.05)
        if sink == "workers":  # the node of the MLLM actor held right after writing its chunk
            victim = _node_of(workers, held) if held is not None else None
        else:  # the driver (on the head) is held: the node of the MLLM actor, else of a face actor
            victim = _node_running(workers, "MllmStage") or _node_running(workers, "DecodeFacesStage")
        if victim is not None:
            in_flight = AnnotationOutput(str(out), must_exist=False).uncommitted_parts("faces")
            killed.update(node=victim, raylet=_raylet_pid(victim), at=time.time(), in_flight=in_flight)
            cluster.remove_node(victim, allow_graceful=False)
            if sink == "workers":
                # A lost machine's processes go with it; here the node's Ray workers notice their
                # raylet's death only later, and the held actor, let go, could still answer the driver.
                with contextlib.suppress(psutil.NoSuchProcess):
                    psutil.Process(held).kill()
                while not _gone(held) and time.time() < deadline:
                    time.sleep(0.05)
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
    if sink == "workers":  # the lost actor's chunk was written, never committed, and is gone
        assert killed["in_flight"] and not any(Path(p).exists() for p in killed["in_flight"]), killed["in_flight"]
