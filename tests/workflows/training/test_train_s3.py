"""mien train against a real S3 endpoint (moto): staged data, Ray Train checkpoints and the exported
model all live in the bucket, and a rerun resumes from the checkpoint there."""

from __future__ import annotations

import pytest

from tests.workflows.training.test_train import colour_records, tiny_cpu
from workflows.core import storage

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]


def test_checkpoints_data_and_model_on_s3(s3_bucket, tmp_path, monkeypatch) -> None:
    import ray

    from model import load_model
    from workflows.training.instructions import instructions_from_records, write_instructions
    from workflows.training.ray_train import TrainingError, train

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    built = instructions_from_records(colour_records(tmp_path), tasks=["fe_category"], embed_images=True)
    data = f"{s3_bucket}/instructions"
    write_instructions(built.table, data)
    if ray.is_initialized():  # workers must inherit the S3 endpoint of this session
        ray.shutdown()
    ray.init(address="local", num_cpus=2, include_dashboard=False, configure_logging=False)
    try:
        output = f"{s3_bucket}/models/tiny"
        cfg = tiny_cpu(tmp_path, "max_steps=6", "checkpoint.every_steps=100", "testing.fail_at_step=3",
                       "evaluate.enabled=false", f"checkpoint.storage_path={s3_bucket}/runs")
        with pytest.raises(TrainingError):
            train(cfg, data, output)
        assert storage.exists(f"{s3_bucket}/runs/run/checkpoint_00000003/mien_state.json")
        assert storage.exists(f"{s3_bucket}/runs/run/mien/train.parquet")
        result = train(cfg, data, output)
        assert result.start_step == 3 and result.steps == 6
        assert storage.exists(f"{output}/mien_model.json") and storage.exists(f"{output}/lora.safetensors")
        assert load_model(output).model_id == result.model_id
    finally:
        ray.shutdown()
