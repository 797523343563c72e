"""Actor-pool sizing from the cluster's resources (``runner.stage_plan``): no Ray needed."""

from __future__ import annotations

import pytest

from workflows.annotate.pipeline import AnnotateConfig
from workflows.annotate.runner import stage_plan
from workflows.core.config import load_config


def _plan(resources, *overrides):
    return stage_plan(load_config(AnnotateConfig, None, ["ray.fuse_stages=never", *overrides]), resources)


@pytest.mark.parametrize("cpus", [1, 2, 4, 16])
def test_one_face_actor_per_cpu_left_by_the_mllm_actor(cpus):
    p = _plan({"CPU": float(cpus)})
    faces, mllm = p["faces"], p["mllm"]
    # 2 CPUs minus a 0.25-CPU MLLM actor must give 2 face actors (truncating gave 1: one
    # core idle for the whole job).
    assert faces["concurrency"] == cpus
    assert mllm["concurrency"] == 1 and mllm["num_gpus"] == 0
    reserved = faces["concurrency"] * faces["num_cpus"] + mllm["concurrency"] * mllm["num_cpus"]
    assert reserved <= cpus - 0.1 + 1e-9, "pools must leave headroom or Ray Data stalls"
    assert faces["num_cpus"] >= 0.5


def test_gpu_node_gets_one_mllm_actor_per_gpu_and_faces_on_the_rest():
    p = _plan({"CPU": 16.0, "GPU": 2.0})
    assert p["mllm"]["concurrency"] == 2 and p["mllm"]["num_gpus"] == 1.0
    assert p["faces"]["concurrency"] == 16 and p["faces"]["num_cpus"] <= (16 - 0.5 - 0.1) / 16


def test_explicit_sizes_are_kept():
    p = _plan({"CPU": 8.0}, "ray.faces.concurrency=3", "ray.faces.num_cpus=2", "ray.mllm.num_cpus=1")
    assert p["faces"]["concurrency"] == 3 and p["faces"]["num_cpus"] == 2
    assert p["mllm"]["num_cpus"] == 1


def test_half_cpu_face_actors_double_the_pool():
    p = _plan({"CPU": 4.0}, "ray.faces.num_cpus=0.5")
    assert p["faces"]["concurrency"] == 8 and p["faces"]["num_cpus"] <= 0.5


def test_auto_pools_never_outnumber_the_videos():
    p = stage_plan(load_config(AnnotateConfig, None, []), {"CPU": 16.0, "GPU": 4.0}, n_videos=3)
    assert not p["mllm"]["fused"], "a GPU MLLM keeps its own pool"
    assert p["faces"]["concurrency"] == 3 and p["mllm"]["concurrency"] == 3
    p = stage_plan(load_config(AnnotateConfig, None, ["ray.faces.concurrency=5"]), {"CPU": 16.0}, n_videos=1)
    assert p["faces"]["concurrency"] == 5, "an explicit size is the user's choice"


@pytest.mark.parametrize("nodes", [[1, 1], [16, 16, 16, 16], [0, 8, 8]], ids=["2x1cpu", "4x16cpu", "cpu-less-head"])
def test_every_pool_fits_on_some_node(nodes):
    # Ray Data waits forever for an actor no node can hold: after each node takes its face
    # actors, some node must still fit the MLLM actor.
    res = [{"CPU": float(c)} for c in nodes]
    total = {"CPU": float(sum(nodes))}
    p = stage_plan(load_config(AnnotateConfig, None, ["ray.fuse_stages=never"]), total, nodes=res)
    c, need = p["faces"]["num_cpus"], p["mllm"]["num_cpus"]
    left = []
    placed = 0
    for n in nodes:  # Ray packs face actors wherever they fit; fill each node up
        k = int((n + 1e-9) // c) if c else 0
        k = min(k, p["faces"]["concurrency"] - placed)
        placed += k
        left.append(n - k * c)
    assert placed == p["faces"]["concurrency"]
    assert max(left) >= need, (p, left)
    assert p["faces"]["concurrency"] == sum(nodes)  # one per CPU, the head's none


def test_gpu_nodes_keep_cpu_for_their_mllm_actors():
    nodes = [{"CPU": 8.0, "GPU": 1.0}, {"CPU": 8.0}]
    p = stage_plan(load_config(AnnotateConfig, None, []), {"CPU": 16.0, "GPU": 1.0}, nodes=nodes)
    assert p["mllm"]["concurrency"] == 1 and p["mllm"]["num_gpus"] == 1.0
    c = p["faces"]["num_cpus"]
    assert p["faces"]["concurrency"] == 16
    # the GPU node, full of face actors, still holds the MLLM actor's CPUs
    assert 8 - min(int(8 // c), 16) * c >= p["mllm"]["num_cpus"]


def test_cpu_mllm_of_the_default_model_runs_inside_the_face_actors():
    p = stage_plan(load_config(AnnotateConfig, None, []), {"CPU": 2.0})
    assert p["mllm"]["fused"] and p["mllm"]["concurrency"] == 0
    assert p["faces"]["concurrency"] == 2 and p["faces"]["num_cpus"] == 0.95  # no CPU kept for an MLLM actor
    # a model directory may load an LLM into every actor: own pool unless asked
    assert not stage_plan(load_config(AnnotateConfig, None, ["model.uri=/m"]), {"CPU": 2.0})["mllm"]["fused"]
    assert stage_plan(load_config(AnnotateConfig, None, ["model.uri=/m", "ray.fuse_stages=always"]),
                      {"CPU": 2.0})["mllm"]["fused"]
    assert not stage_plan(load_config(AnnotateConfig, None, ["ray.mllm.concurrency=1"]), {"CPU": 2.0})["mllm"]["fused"]


def test_fuse_stages_is_checked():
    from workflows.core.config import ConfigError

    with pytest.raises(ConfigError, match="fuse_stages"):
        load_config(AnnotateConfig, None, ["ray.fuse_stages=yes"])


def test_each_stage_declares_its_pool_and_the_summary_loops_over_them():
    """Pool utilisation comes from the stages' own declarations: with fused stages the face pool
    does both stages' work; with two pools each pool its own."""
    from workflows.annotate.pipeline import AnnotateSummary
    from workflows.annotate.stages import FUSED_PIPELINE, PIPELINE, DecodeFacesStage, MllmStage

    assert [c.pool for c in PIPELINE] == ["faces", "mllm"] and [c.pool for c in FUSED_PIPELINE] == ["faces"]
    assert DecodeFacesStage.constructor_args("cfg", "r", "out") == ("cfg",)
    assert MllmStage.constructor_args("cfg", "r", "out") == ("cfg", "r", "out")
    two = AnnotateSummary("r", "out", wall_s=10.0, decode_faces_s=16.0, mllm_s=4.0,
                          plan={"faces": {"concurrency": 2}, "mllm": {"concurrency": 1, "fused": False}})
    assert two.utilisation() == {"faces": 0.8, "mllm": 0.4}
    fused = AnnotateSummary("r", "out", wall_s=10.0, decode_faces_s=16.0, mllm_s=2.0,
                            plan={"faces": {"concurrency": 2}, "mllm": {"concurrency": 0, "fused": True}})
    assert fused.utilisation() == {"faces": 0.9, "mllm": None}
