"""mien retrain replaces a champion: cycle 1 made a bad model champion (trained on wrong pseudo-labels),
cycle 2 trains on correct ones from it, beats it on the labeled holdout by the margin and moves
@champion from it (compare and set, also after a crash between the decision and the move);
`mien annotate --model models:/NAME@champion` then annotates with the new version.

No promotion minimum here (test_retrain.py tests it): the champion-vs-candidate rule decides.

Data, holdout and settings are test_retrain.py's: synthetic face crops whose colour is the
expression, real `mien train` (Ray Train, 2 workers, DeepSpeed ZeRO-2), a sqlite MLflow registry."""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys

import mlflow
import pytest

from tests.workflows.retrain.test_retrain import (
    ROOT,
    SWAPPED,
    T0,
    _aliases,
    labeled_holdout,
    retrain_config,
    write_run,
)

pytestmark = pytest.mark.timeout(900)
NO_MINIMUM = "promotion.minimum=0.0"


@pytest.fixture(scope="module")
def cycles(local_ray, tmp_path_factory) -> dict:
    from workflows.retrain.cycle import RetrainInterrupted, retrain

    tmp = tmp_path_factory.mktemp("replace")
    holdout = labeled_holdout(tmp / "labeled")
    data = [str(tmp / "annotations")]
    client = mlflow.MlflowClient(f"sqlite:///{tmp}/mlflow.db")
    write_run(tmp / "annotations" / "night1", "r1", T0, [f"v{i}" for i in range(8)], labels=SWAPPED)
    first = retrain(retrain_config(tmp, NO_MINIMUM, holdout=holdout), data)
    assert first.status == "promoted" and _aliases(client) == {"candidate": "1", "champion": "1"}, first.render()

    write_run(tmp / "annotations" / "night2", "r2", T0 + dt.timedelta(days=1), [f"w{i}" for i in range(8)], seed=5)
    with pytest.raises(RetrainInterrupted):  # the decision is recorded, the alias not moved yet
        retrain(retrain_config(tmp, NO_MINIMUM, "testing.fail_after=decide", holdout=holdout), data)
    after_decide = _aliases(client)
    second = retrain(retrain_config(tmp, NO_MINIMUM, holdout=holdout), data)
    return {"tmp": tmp, "client": client, "first": first, "second": second, "after_decide": after_decide}


def test_a_better_candidate_moves_the_champion_alias_from_the_old_champion(cycles) -> None:
    client, first, second = cycles["client"], cycles["first"], cycles["second"]
    assert cycles["after_decide"] == {"candidate": "2", "champion": "1"}
    assert second.status == "promoted" and "decision" in second.reused, second.render()
    assert "promoted mien-test v2 to @champion (was v1)" in second.message
    d = second.decision
    assert d.promote and d.champion_version == "1" and d.candidate_version == "2"
    assert d.champion_value == pytest.approx(first.decision.candidate_value)  # v1 scored on the same holdout
    assert d.candidate_value >= d.champion_value + 0.05, d.reasons  # 0.5 vs 0.0 when written
    assert _aliases(client) == {"candidate": "2", "champion": "2"}
    v2 = client.get_model_version("mien-test", "2")
    assert v2.tags["mien.retrain.decision"] == "promote" and v2.tags["mien.retrain.champion_version"] == "1"
    assert v2.tags["mien.retrain.base_version"] == "1" and v2.tags["mien.data_runs"] == "r2"
    assert "mien.retrain.promoted_at" in v2.tags
    # the replaced champion keeps its version and its own record
    v1 = client.get_model_version("mien-test", "1")
    assert v1.tags["mien.retrain.decision"] == "promote" and v1.tags["mien.model_id"] != v2.tags["mien.model_id"]
    assert v1.tags["mien.retrain.replaced_by"] == "2" and v1.tags["mien.retrain.replaced_at"]  # and says by what


def test_annotate_with_the_champion_alias_loads_the_new_version(cycles, asset, tmp_path) -> None:
    import pandas as pd

    from model import load_model
    from tests.conftest import environ

    tmp, client = cycles["tmp"], cycles["client"]
    tracking = f"sqlite:///{tmp}/mlflow.db"
    new_id = client.get_model_version("mien-test", "2").tags["mien.model_id"]
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "jobs.cli", "annotate", "--input", str(asset("sample_single_face_jpg")),
           "--output", str(out), "--model", "models:/mien-test@champion", "--executor", "local", "--no-progress",
           "--set", "mlflow.enabled=false"]
    p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600,
                       env={**os.environ, "MLFLOW_TRACKING_URI": tracking})
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    with environ(MLFLOW_TRACKING_URI=tracking):
        assert load_model("models:/mien-test@champion").model_id == new_id
    videos, faces = pd.read_parquet(out / "videos"), pd.read_parquet(out / "faces")
    assert list(videos.status) == ["ok"] and len(faces) == 1
    assert set(videos.model_id) == set(faces.model_id) == {new_id}
