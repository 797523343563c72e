"""The retrain cycle's last step never takes @champion from a version promoted while it ran.

A cycle decides against the champion it started from and moves the alias last, compare and set
(``_Cycle.move_alias``). When someone promotes another version while the cycle trains and
evaluates (or removes the alias), the cycle leaves the alias as it finds it, tags its candidate
and says which version it would have replaced and where the alias is now. Driven on the
``tiny_registry`` sqlite store (no training: the decision is the one a cycle would have recorded).
"""

from __future__ import annotations

import pytest

from workflows.core.tracking import MlflowConfig, Registry, Tracker
from workflows.retrain.cycle import Decision, RetrainConfig, RetrainPlan, _Cycle, _finished

NAME = "mien-tiny"


@pytest.fixture
def cycle(tiny_registry, tiny_model_dir, tmp_path) -> _Cycle:
    """``mien-tiny`` v1 @champion, v2 this cycle's candidate, v3 another version; the cycle's registry open."""
    with Tracker.start(tiny_registry, "mien-tiny-more", artifact_location=str(tmp_path / "more")) as run:
        for _ in range(2):
            run.log_model_dir(str(tiny_model_dir), registered_model_name=NAME)
    cyc = _Cycle(RetrainConfig(model_name=NAME, mlflow=MlflowConfig(tracking_uri=tiny_registry)), [], False, None)
    cyc.open_registry()
    return cyc


def _promote(candidate: str, champion: str | None) -> Decision:
    return Decision(promote=True, reasons=["candidate beats the champion"], metric="fe/uar", mode="max", margin=0.0,
                    minimum=0.0, candidate_value=0.9, champion_value=0.5 if champion else None,
                    candidate_version=candidate, champion_version=champion, delta=0.4 if champion else None)


def _finish(cyc: _Cycle, decision: Decision) -> tuple[str, str]:
    status, alias_at = cyc.move_alias(decision)
    plan = RetrainPlan(NAME, "r-test", None, decision.champion_version, None, [], {})
    return status, _finished(cyc, plan, decision, status, alias_at).message


def _champion(registry: Registry) -> str | None:
    v = registry.aliased_version(NAME, "champion")
    return str(v.version) if v is not None else None


def test_a_champion_promoted_during_the_cycle_stays(cycle, tiny_registry) -> None:
    registry = Registry(tiny_registry)
    registry.set_alias(NAME, "champion", "3")  # promoted by someone else after the decision against v1
    status, message = _finish(cycle, _promote("2", "1"))
    assert status == "superseded"
    assert _champion(registry) == "3"  # not taken back to the candidate of an older comparison
    assert "v2 would have replaced v1 at @champion, but @champion moved to v3" in message, message
    assert "left at v3" in message
    assert registry.version(NAME, "2").tags["mien.retrain.superseded_by"] == "3"
    assert "mien.retrain.replaced_by" not in registry.version(NAME, "3").tags

    # the same decision again (a rerun) changes nothing either
    assert _finish(cycle, _promote("2", "1"))[0] == "superseded" and _champion(registry) == "3"


def test_a_removed_champion_alias_is_not_set_again(cycle, tiny_registry) -> None:
    registry = Registry(tiny_registry)
    registry.client.delete_registered_model_alias(NAME, "champion")
    status, message = _finish(cycle, _promote("2", "1"))
    assert status == "superseded" and _champion(registry) is None
    assert "v2 would have replaced v1 at @champion, but @champion was removed since the decision: left unset" in message
    assert registry.version(NAME, "2").tags["mien.retrain.superseded_by"] == "alias removed"


def test_a_first_champion_set_during_the_cycle_stays(cycle, tiny_registry) -> None:
    registry = Registry(tiny_registry)
    registry.set_alias(NAME, "champion", "3")
    status, message = _finish(cycle, _promote("2", None))  # decided when there was no champion
    assert status == "superseded" and _champion(registry) == "3"
    assert "v2 would have become the first @champion, but @champion moved to v3" in message, message
