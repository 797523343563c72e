"""`mien retrain` on a small corpus: when no video hashes into the pseudo-label holdout, the message
says why and names the fixes (dry run too), and the fix it names for a few multi-face videos,
splitting by face track, gives the cycle a holdout."""

from __future__ import annotations

from tests.workflows.retrain.test_retrain import ROOT, T0, write_run
from workflows.training.instructions import DEFAULT_SPLITS, split_of


def _retrain(tmp_path, out, *sets: str) -> list[str]:
    args = ["retrain", "--config", str(ROOT / "jobs/configs/retrain/local.yaml"), "--data", str(out), "--dry-run",
            "--set", f"work_dir={tmp_path}/work", "--set", f"mlflow.tracking_uri=sqlite:///{tmp_path}/mlflow.db"]
    for s in sets:
        args += ["--set", s]
    return args


def test_a_corpus_too_small_for_a_holdout_names_the_fixes(tmp_path, capsys) -> None:
    """Before: 'holdout too small: 0 faces, holdout.min_faces is 8; nothing trained', no hint."""
    from jobs.cli import main

    videos = [v for v in (f"clip{i}" for i in range(40)) if split_of(v, DEFAULT_SPLITS) != "holdout"][:5]
    out = tmp_path / "out"
    write_run(out, "r1", T0, videos)  # 5 videos of 8 one-face tracks each
    assert main(_retrain(tmp_path, out)) == 0
    text = capsys.readouterr().out
    assert "holdout too small: 0 faces, holdout.min_faces is 8; nothing trained" in text
    assert "(data.splits: 10% of them), and 5 videos have faces that pass the filter" in text
    for fix in ("set holdout.uri to a labeled set", "annotate more videos", "data.filter.group_by=track",
                "lower holdout.min_faces"):
        assert fix in text, fix
    assert not (tmp_path / "work").exists()

    tracks = [f"{v}/{t}" for v in videos for t in range(8)]
    assert any(split_of(t, DEFAULT_SPLITS) == "holdout" for t in tracks)
    assert main(_retrain(tmp_path, out, "data.filter.group_by=track", "holdout.min_faces=1")) == 0
    text = capsys.readouterr().out
    assert "holdout too small" not in text and "dry run: nothing was written" in text
