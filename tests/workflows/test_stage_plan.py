"""Actor-pool sizing from the cluster's resources (``ray_adapter.stage_plan``): no Ray needed."""

from __future__ import annotations

import pytest

from workflows.annotate import AnnotateConfig
from workflows.config import load_config
from workflows.ray_adapter import stage_plan


def _plan(resources, *overrides):
    return stage_plan(load_config(AnnotateConfig, None, list(overrides)), resources)


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
    assert p["faces"]["concurrency"] == 3 and p["mllm"]["concurrency"] == 3
    p = stage_plan(load_config(AnnotateConfig, None, ["ray.faces.concurrency=5"]), {"CPU": 16.0}, n_videos=1)
    assert p["faces"]["concurrency"] == 5, "an explicit size is the user's choice"
