"""What only a GPU can show: CUDA scores equal CPU scores for the tiny models, the pool plan hands
out the GPUs Ray sees, and one bf16 ZeRO-2 training run on NCCL. Marked ``gpu``: excluded from
``make test``; run them where a GPU is (``pytest -m gpu tests/gpu``), e.g. on the device machine
with the runbook of docs/PERFORMANCE.md. Without CUDA each test is skipped with the reason."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU visible to torch here")]

FAMILIES = ("llava", "llava_next", "qwen2_vl", "qwen2_5_vl", "idefics3")


def _faces(rows: int = 4) -> dict:
    rng = np.random.default_rng(3)
    return {"crop": rng.integers(0, 255, (rows, 112, 112, 3), dtype=np.uint8),
            "au_evidence": rng.random((rows, 23)).astype(np.float32),
            "fe_prior": rng.dirichlet(np.ones(7), rows).astype(np.float32),
            "age": np.full(rows, 30.0, np.float32), "gender": ["female"] * rows, "track_key": np.arange(rows)}


@pytest.fixture(scope="module")
def tiny_vlms(tmp_path_factory):
    from model.vlm.tiny import build_tiny_vlm

    root = tmp_path_factory.mktemp("gpu-vlms")
    return {f: build_tiny_vlm(f, root / f) for f in FAMILIES}


@pytest.mark.parametrize("family", FAMILIES)
def test_tiny_vlm_scores_on_cuda_equal_cpu(tiny_vlms, family):
    from model import load_model

    torch.backends.cuda.matmul.allow_tf32 = False  # fp32 on both sides, not TF32 on the GPU
    torch.backends.cudnn.allow_tf32 = False
    on_cpu = load_model(str(tiny_vlms[family]), device="cpu").annotate(_faces())
    on_gpu = load_model(str(tiny_vlms[family]), device="cuda").annotate(_faces())
    np.testing.assert_allclose(on_gpu["fe_probs"], on_cpu["fe_probs"], atol=1e-4)
    np.testing.assert_allclose(on_gpu["au_probs"], on_cpu["au_probs"], atol=1e-4, equal_nan=True)


def test_pool_plan_hands_out_the_gpus_ray_sees():
    import ray

    from workflows.annotate.pipeline import AnnotateConfig
    from workflows.annotate.runner import stage_plan
    from workflows.core.config import load_config

    ray.init(address="local", include_dashboard=False, configure_logging=False, log_to_driver=False)
    try:
        gpus = int(ray.cluster_resources().get("GPU", 0))
        assert gpus == torch.cuda.device_count() >= 1
        plan = stage_plan(load_config(AnnotateConfig, None, ["model.uri=/models/m"]), ray.cluster_resources())
        assert plan["mllm"]["num_gpus"] == 1.0 and plan["mllm"]["concurrency"] == gpus
        assert not plan["mllm"]["fused"]  # a GPU model never runs inside the CPU face actors

        @ray.remote(num_gpus=plan["mllm"]["num_gpus"])
        def visible() -> tuple[list, bool]:
            import torch as t

            return ray.get_gpu_ids(), t.cuda.is_available()

        ids, cuda = ray.get(visible.remote())
        assert len(ids) == 1 and cuda
    finally:
        ray.shutdown()


def test_one_bf16_zero2_run_on_nccl(tmp_path):
    """One Ray Train worker on one GPU: bf16 + DeepSpeed ZeRO-2 over NCCL; the loss falls and the
    exported adapters reload to the scores of the model that was trained."""
    import ray

    from model import load_model
    from model.vlm.tiny import build_tiny_vlm
    from tests.workflows.training.test_train import colour_records
    from tests.workflows.training.test_train_vlm import fe_scores, vlm_config
    from workflows.training.instructions import instructions_from_records, write_instructions
    from workflows.training.ray_train import train

    base = build_tiny_vlm("qwen2_vl", tmp_path / "base")
    built = instructions_from_records(colour_records(tmp_path, per_class=16), tasks=["fe_category"], embed_images=True)
    write_instructions(built.table, str(tmp_path / "instructions"))
    cfg = vlm_config(tmp_path, f"model.vlm.source={base}", "scaling.device=cuda", "scaling.num_workers=1",
                     "precision=bf16", "deepspeed=zero2")
    ray.init(address="local", include_dashboard=False, configure_logging=False, log_to_driver=True)
    try:
        result = train(cfg, str(tmp_path / "instructions"), str(tmp_path / "model"))
    finally:
        ray.shutdown()
    losses = [h["loss"] for h in result.history]
    assert losses[-1] < losses[0], losses
    trained = load_model(str(tmp_path / "model"), device="cuda")
    assert trained.model_id == result.model_id
    assert float((fe_scores(trained.mllm).float().cpu() - fe_scores(load_model(str(base)).mllm)).abs().max()) > 1e-3
