"""mien retrain: watermarks, selection, the promotion rule, dry runs, crash safety, real cycles.

Annotate outputs are written directly (``workflows.corpus.schema`` tables, committed the way the
sink commits them: faces part first, videos part of the same name last) with synthetic face
crops whose colour determines the expression, so the tiny CPU model can learn them. The
holdout is a labeled set of such crops. MLflow is a sqlite store in a temporary directory;
training is the real ``mien train`` (Ray Train, 2 workers, gloo, DeepSpeed ZeRO-2).
"""

from __future__ import annotations

import datetime as dt
import io
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from workflows.core.assets import sha256_file
from workflows.core.config import ConfigError
from workflows.corpus import schema

ROOT = Path(__file__).resolve().parents[3]  # the repository
RETRAIN_CONFIGS = sorted((ROOT / "jobs" / "configs" / "retrain").glob("*.yaml"))
COLOURS = {"happiness": (220, 60, 60), "sadness": (60, 60, 220), "surprise": (60, 200, 60),
           "neutral": (200, 200, 200)}
SWAPPED = {"happiness": "sadness", "sadness": "happiness", "surprise": "neutral", "neutral": "surprise"}
T0 = dt.datetime(2026, 11, 1, 2, 0, tzinfo=dt.UTC)


def crop_jpeg(label: str, rng: np.random.Generator, size: int = 32) -> bytes:
    from PIL import Image

    pixels = np.clip(np.array(COLOURS[label])[None, None] + rng.normal(0, 20, (size, size, 3)), 0, 255)
    buf = io.BytesIO()
    Image.fromarray(pixels.astype(np.uint8)).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def write_run(root: Path, run_id: str, start: dt.datetime, videos: list[str], *, per_class: int = 2,
              labels: dict[str, str] | None = None, seed: int = 0, commit: bool = True,
              error_videos: tuple[str, ...] = ()) -> None:
    """One annotate run's chunk: every video holds ``per_class`` one-face tracks of each colour,
    pseudo-labeled ``labels[true class]`` (default: correctly) with confidence 0.9."""
    rng = np.random.default_rng(seed)
    faces, rows = [], []
    for i, vid in enumerate(videos):
        rows.append({"video_id": vid, "video_uri": f"/corpus/{vid}.mp4", "status": "ok", "run_id": run_id,
                     "finished_at": start + dt.timedelta(seconds=i), "n_faces": per_class * len(COLOURS)})
        track = 0
        for label in COLOURS:
            for _ in range(per_class):
                pseudo = (labels or {}).get(label, label)
                faces.append({"video_id": vid, "frame_index": track * 5, "timestamp_s": track / 5, "track_id": track,
                              "bbox": [0.0, 0.0, 32.0, 32.0], "det_score": 0.95, "fe_label": pseudo,
                              "fe_confidence": 0.9, "fe_probs": [(pseudo, 0.9)], "crop_jpeg": crop_jpeg(label, rng),
                              "model_id": "annotator-v0", "run_id": run_id})
                track += 1
    for vid in error_videos:
        rows.append({"video_id": vid, "video_uri": f"/corpus/{vid}.mp4", "status": "error", "error": "bad",
                     "run_id": run_id, "finished_at": start})
    part = f"{run_id}-00000.parquet"
    (root / "faces").mkdir(parents=True, exist_ok=True)
    pq.write_table(schema.table("faces", faces), root / "faces" / part)
    if commit:  # the videos part commits the chunk (workflows.corpus.writer)
        (root / "videos").mkdir(parents=True, exist_ok=True)
        pq.write_table(schema.table("videos", rows), root / "videos" / part)


def labeled_holdout(root: Path, per_class: int = 6, seed: int = 99) -> str:
    """A labeled set of colour crops as instruction Parquet (what `holdout.uri` points at)."""
    from workflows.training.instructions import instructions_from_records, write_instructions

    rng = np.random.default_rng(seed)
    records = []
    for label in COLOURS:
        for i in range(per_class):
            path = root / "images" / f"{label}_{i}.jpg"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(crop_jpeg(label, rng))
            records.append({"id": f"holdout/{label}_{i}", "dataset": "synth", "split": None, "media": "image",
                            "uri": str(path), "fe_label": label})
    built = instructions_from_records(pd.DataFrame(records), tasks=["fe_category"], embed_images=True)
    write_instructions(built.table, str(root / "instructions"))
    return str(root / "instructions")


def retrain_overrides(tmp: Path, *extra: str, holdout: str | None = None) -> list[str]:
    """``--set`` items of the test cycles over jobs/configs/retrain/local.yaml."""
    base = [f"work_dir={tmp}/work", f"mlflow.tracking_uri=sqlite:///{tmp}/mlflow.db", "model_name=mien-test",
            "data.filter.min_fe_confidence=0.5", "data.filter.max_per_track=1", "data.min_train_rows=8",
            "promotion.minimum=0.4", "promotion.margin=0.05", "holdout.min_faces=8",
            # 2 workers x 4 faces per step; a fixed number of steps whatever the split sizes
            "train.overrides=[data.crop_size=32, scaling.cpus_per_worker=0.5, max_steps=14, epochs=100, "
            "val_every_steps=100, checkpoint.every_steps=100]"]
    if holdout:
        base += [f"holdout.uri={holdout}", "data.splits.train=0.85", "data.splits.val=0.15",
                 "data.splits.holdout=0.0"]
    return [*base, *extra]


def retrain_config(tmp: Path, *extra: str, holdout: str | None = None):
    from workflows.retrain.cycle import load_retrain_config

    return load_retrain_config(str(ROOT / "jobs/configs/retrain/local.yaml"),
                               retrain_overrides(tmp, *extra, holdout=holdout))


def _aliases(client) -> dict[str, str]:
    return {k: str(v) for k, v in client.get_registered_model("mien-test").aliases.items()}


# ----------------------------------------------------------------------------------- configs


@pytest.mark.parametrize("path", RETRAIN_CONFIGS, ids=lambda p: p.name)
def test_shipped_retrain_configs_load_and_validate(path: Path) -> None:
    from workflows.retrain.cycle import load_candidate_train_config, load_retrain_config

    first = path.read_text().splitlines()[0]
    assert first.startswith(f"# mien retrain --config jobs/configs/retrain/{path.name}")
    cfg = load_retrain_config(str(path))
    train_cfg = load_candidate_train_config(cfg)
    assert train_cfg.model is not None and cfg.promotion.metric == "fe/uar"
    if path.name == "cluster.yaml":
        assert cfg.mlflow.tracking_uri is None and cfg.work_dir.startswith("s3://")
        assert train_cfg.scaling.device == "cuda" and cfg.evaluate.num_gpus == 1
    else:
        assert cfg.mlflow.tracking_uri.startswith("sqlite:///") and train_cfg.scaling.device == "cpu"


def test_config_errors_are_collected_and_named(tmp_path) -> None:
    from workflows.retrain.cycle import load_retrain_config

    local = str(ROOT / "jobs/configs/retrain/local.yaml")
    with pytest.raises(ConfigError) as e:
        load_retrain_config(local, ["promotion.metrik=fe/uar", "data.window=some"])
    assert "promotion.metrik: unknown key (did you mean 'metric'?)" in str(e.value)
    assert "data.window: must be one of" in str(e.value)
    with pytest.raises(ConfigError) as e:
        load_retrain_config(local, ["data.splits.holdout=0.5", "promotion.margin=-1",
                                    "train.config=jobs/configs/train/nope.yaml", "holdout.split=test"])
    text = str(e.value)
    assert "data.splits: fractions must be >= 0 and sum to 1" in text and "promotion.margin" in text
    assert "train.config: config file not found" in text and "holdout.split: 'test' is not one of" in text
    with pytest.raises(ConfigError, match=r"train.config: optim.lrr: unknown key"):
        load_retrain_config(local, ["train.overrides=[optim.lrr=1]"])


# ----------------------------------------------------------------------- pure decision rule


def _report(uar: float | None, n: int = 40) -> dict:
    fe = None if uar is None else {"n": n, "accuracy": uar, "uar": uar, "war": uar, "ece": 0.1,
                                   "per_class_recall": {}}
    return {"fe": fe, "au": None, "n_faces": n}


@pytest.mark.parametrize("cand,champ,mode,promote,why", [
    (0.50, None, "max", True, "reaches the minimum"),
    (0.30, None, "max", False, "does not reach the minimum 0.4"),
    (0.60, 0.50, "max", True, "improvement +0.1000 >= margin 0.05"),
    (0.53, 0.50, "max", False, "improvement +0.0300 < margin 0.05"),
    (0.45, 0.50, "max", False, "improvement -0.0500 < margin 0.05"),
    (0.20, 0.30, "min", True, "reduction +0.1000 >= margin 0.05"),
    (None, 0.50, "max", False, "the candidate's report has no fe/uar"),
])
def test_promotion_rule(cand, champ, mode, promote, why) -> None:
    from workflows.retrain.cycle import PromotionConfig, decide

    p = PromotionConfig(metric="fe/uar", mode=mode, margin=0.05, minimum=0.4 if mode == "max" else 0.35)
    d = decide(_report(cand), None if champ is None else _report(champ), p, holdout_faces=40, min_faces=20,
               candidate_version="2", champion_version=None if champ is None else "1")
    assert d.promote is promote
    assert any(why in r for r in d.reasons), d.reasons


def test_a_champion_graded_on_its_own_pseudo_labels_is_a_loud_warning_in_the_decision() -> None:
    from workflows.retrain.cycle import PromotionConfig, decide

    champion = {**_report(0.5), "self_graded": True}
    d = decide(_report(0.6), champion, PromotionConfig(metric="fe/uar", margin=0.05, minimum=0.4),
               holdout_faces=40, min_faces=20, candidate_version="2", champion_version="1")
    warnings = [r for r in d.reasons if r.startswith("WARNING")]
    assert len(warnings) == 1 and "pseudo-labels of the champion itself" in warnings[0]
    assert "holdout.uri" in warnings[0]
    clean = decide(_report(0.6), _report(0.5), PromotionConfig(metric="fe/uar", margin=0.05, minimum=0.4),
                   holdout_faces=40, min_faces=20, candidate_version="2", champion_version="1")
    assert not [r for r in clean.reasons if r.startswith("WARNING")]


def test_a_holdout_labeled_by_the_champion_with_descriptions_on_is_still_the_champions() -> None:
    from types import SimpleNamespace

    from workflows.retrain.cycle import RetrainPlan, _warn_about_holdout

    champion = SimpleNamespace(tags={"mien.model_id": "mien-x-v1+0123abcd"})  # a registry model version
    for labeler, warned in (("mien-x-v1+0123abcd+describe:per_track/32tok", True), ("mien-y-v1+99999999", False)):
        plan = RetrainPlan("mien-x", None, None, "1", None, [], {}, holdout={"label_models": [labeler]})
        _warn_about_holdout(plan, champion)
        assert bool(plan.warnings) == warned and all("labeled by the champion itself" in w for w in plan.warnings)


def test_a_small_holdout_never_promotes() -> None:
    from workflows.retrain.cycle import PromotionConfig, decide

    d = decide(_report(0.9, n=5), None, PromotionConfig(), holdout_faces=5, min_faces=20)
    assert not d.promote and "fewer than holdout.min_faces=20" in d.reasons[0]


# ------------------------------------------------------------------- selection without training


def test_only_committed_ok_videos_are_read_and_prefixes_are_searched(tmp_path) -> None:
    from workflows.corpus.reader import AnnotationOutput, discover_outputs

    night1, night2 = tmp_path / "annotations" / "night1", tmp_path / "annotations" / "night2"
    write_run(night1, "r1", T0, ["a", "b"], error_videos=("broken",))
    write_run(night1, "r2", T0 + dt.timedelta(hours=1), ["c"], commit=False)  # crashed mid-chunk
    write_run(night2, "r3", T0 + dt.timedelta(days=1), ["d"])
    assert discover_outputs(str(tmp_path / "annotations")) == [str(night1), str(night2)]
    assert discover_outputs(str(night1)) == [str(night1)]
    with pytest.raises(FileNotFoundError, match="no mien annotate output"):
        discover_outputs(str(night1 / "faces"))
    videos = AnnotationOutput(str(night1)).committed_videos()
    assert sorted(videos["video_id"]) == ["a", "b"] and set(videos["part"]) == {"r1-00000.parquet"}
    faces = AnnotationOutput(str(night1)).faces_of(videos)
    assert sorted(faces["video_id"].unique()) == ["a", "b"] and len(faces) == 16
    assert set(faces["video_uri"]) == {"/corpus/a.mp4", "/corpus/b.mp4"}


def test_dry_run_without_a_champion_plans_and_writes_nothing(tmp_path, capsys) -> None:
    from jobs.cli import main

    out = tmp_path / "out"
    write_run(out, "r1", T0, [f"v{i}" for i in range(12)])
    holdout = labeled_holdout(tmp_path / "labeled")
    cfg_file = tmp_path / "retrain.yaml"
    cfg_file.write_text((ROOT / "jobs/configs/retrain/local.yaml").read_text())
    args = ["retrain", "--config", str(cfg_file), "--data", str(out), "--dry-run",
            "--set", f"work_dir={tmp_path}/work", "--set", f"holdout.uri={holdout}",
            "--set", f"mlflow.tracking_uri=sqlite:///{tmp_path}/mlflow.db",
            "--set", "data.filter.max_per_track=1"]
    before = sorted(p.name for p in tmp_path.iterdir())
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "new data: 12 video(s) from 1 annotate run(s)" in text and "runs r1" in text
    assert "96 faces read, 96 kept" in text and "champion: mien-tiny-cpu: none yet" in text
    assert f"holdout: {holdout} (24 faces)" in text and "from the config's architecture" in text
    assert "dry run: nothing was written" in text
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no work dir, no MLflow database


def test_labeled_holdout_images_are_never_trained_on(tmp_path) -> None:
    from workflows.retrain.cycle import retrain

    out = tmp_path / "out"
    write_run(out, "r1", T0, [f"v{i}" for i in range(6)])
    holdout_dir = tmp_path / "labeled"
    holdout = labeled_holdout(holdout_dir)
    # the same corpus was annotated: two holdout images appear among the annotated media
    images = sorted(str(p) for p in (holdout_dir / "images").iterdir())[:2]
    part = out / "videos" / "r1-00000.parquet"
    t = pq.read_table(part)
    uris = t.column("video_uri").to_pylist()
    uris[:2] = images
    pq.write_table(t.set_column(t.column_names.index("video_uri"), "video_uri", pa.array(uris)), part)
    result = retrain(retrain_config(tmp_path, "data.splits.train=1.0", "data.splits.val=0.0",
                                    holdout=holdout), [str(out)], dry_run=True)
    assert result.status == "dry_run"
    assert result.plan.data["leak_dropped"] == 16  # 2 videos x 8 faces, one fe_category row each
    assert result.plan.data["train_rows"] == 48 - 16


def test_pseudo_label_holdout_is_a_fixed_hash_split_of_videos(tmp_path) -> None:
    """Without holdout.uri the holdout is the `holdout` split of every source's pseudo-labels: whole
    videos, never in the training rows, and the same videos again once more data has arrived."""
    from workflows.retrain.cycle import retrain
    from workflows.training.instructions import split_of

    splits = {"train": 0.8, "val": 0.1, "holdout": 0.1}
    out = tmp_path / "out"
    first = [f"v{i:02d}" for i in range(30)]
    write_run(out, "r1", T0, first, per_class=1)
    held = {v for v in first if split_of(v, splits) == "holdout"}
    assert 0 < len(held) < len(first)
    cfg = retrain_config(tmp_path, "data.window=all")
    plan = retrain(cfg, [str(out)], dry_run=True).plan
    assert plan.holdout["faces"] == 4 * len(held) and plan.holdout["label_models"] == ["annotator-v0"]
    assert plan.data["train_rows"] + 4 * len(held) == 4 * len(first)  # one fe_category row per face

    write_run(out, "r2", T0 + dt.timedelta(days=1), [f"w{i:02d}" for i in range(30)], per_class=1)
    later = retrain(cfg, [str(out)], dry_run=True).plan
    more = {v for v in [f"w{i:02d}" for i in range(30)] if split_of(v, splits) == "holdout"}
    assert later.holdout["faces"] == 4 * (len(held) + len(more))  # the old holdout videos stay in it
    assert later.new_runs == ["r1", "r2"] and later.data["faces_read"] == 240  # window: all
    assert later.retrain_id != plan.retrain_id


def test_too_little_new_data_trains_nothing(tmp_path) -> None:
    from workflows.retrain.cycle import retrain

    out = tmp_path / "out"
    write_run(out, "r1", T0, ["v0"], per_class=1)
    result = retrain(retrain_config(tmp_path, "data.min_train_rows=50", holdout=labeled_holdout(tmp_path / "h")),
                     [str(out)])
    assert result.status == "not_enough_data" and "data.min_train_rows is 50" in result.message
    assert not (tmp_path / "work").exists() and not (tmp_path / "mlflow.db").exists()


# ------------------------------------------------------------------------------ real cycles


@pytest.fixture(scope="module")
def first_cycle(local_ray, tmp_path_factory) -> dict:
    """Cycle 1, crashed after registering and again after deciding, then finished by a third run."""
    import mlflow

    from workflows.retrain.cycle import RetrainInterrupted, retrain

    tmp = tmp_path_factory.mktemp("retrain")
    out = tmp / "annotations" / "night1"
    write_run(out, "r1", T0, [f"v{i}" for i in range(8)])
    holdout = labeled_holdout(tmp / "labeled")
    tracking = f"sqlite:///{tmp}/mlflow.db"
    client = mlflow.MlflowClient(tracking)
    data = [str(tmp / "annotations")]
    state: dict = {"tmp": tmp, "holdout": holdout, "tracking": tracking, "data": data, "attempts": []}

    with pytest.raises(RetrainInterrupted):
        retrain(retrain_config(tmp, "testing.fail_after=register", holdout=holdout), data)
    (work,) = [p for p in (tmp / "work").iterdir() if p.name.startswith("rt-")]
    state["after_register"] = {
        "train_json": (work / "train.json").exists(),
        "versions": [str(v.version) for v in client.search_model_versions("name='mien-test'")],
        "aliases": _aliases(client)}
    state["train_json_mtime"] = (work / "train.json").stat().st_mtime

    with pytest.raises(RetrainInterrupted):
        retrain(retrain_config(tmp, "testing.fail_after=decide", holdout=holdout), data)
    state["after_decide"] = {
        "decision": json.loads((work / "decision.json").read_text()),
        "aliases": _aliases(client)}

    result = retrain(retrain_config(tmp, holdout=holdout), data)
    state.update(result=result, work=work)
    return state


def test_first_cycle_survives_crashes_promotes_once_and_then_does_nothing(first_cycle) -> None:
    import mlflow

    from workflows.retrain.cycle import retrain

    s = first_cycle
    client = mlflow.MlflowClient(s["tracking"])
    # crash after register: trained and registered as candidate, nothing promoted
    assert s["after_register"]["train_json"] and s["after_register"]["versions"] == ["1"]
    assert s["after_register"]["aliases"] == {"candidate": "1"}
    # crash after the decision: recorded, the alias not moved yet
    decision = s["after_decide"]["decision"]
    assert decision["promote"] is True and decision["champion_version"] is None
    assert decision["candidate_value"] >= 0.4 and s["after_decide"]["aliases"] == {"candidate": "1"}

    result = s["result"]
    assert result.status == "promoted" and result.candidate_version == "1", result.render()
    assert "decision" in result.reused and "first champion" in result.message
    versions = client.search_model_versions("name='mien-test'")
    assert [str(v.version) for v in versions] == ["1"]  # trained and registered exactly once
    assert _aliases(client) == {"candidate": "1", "champion": "1"}
    train_runs = client.search_runs([client.get_experiment_by_name("mien-train").experiment_id])
    assert len(train_runs) == 1 and (s["work"] / "train.json").stat().st_mtime == s["train_json_mtime"]

    v1 = client.get_model_version("mien-test", "1")
    watermark = json.loads(v1.tags["mien.data_watermark"])
    assert watermark == {str(s["tmp"] / "annotations" / "night1"): "2026-11-01T02:00:07.000+00:00"}
    assert v1.tags["mien.retrain.decision"] == "promote" and v1.tags["mien.data_runs"] == "r1"
    assert "reaches the minimum 0.4" in v1.tags["mien.retrain.reasons"]
    assert float(v1.tags["holdout.fe/uar"]) == pytest.approx(decision["candidate_value"], abs=1e-5)
    run = client.get_run(v1.tags["mien.retrain.run_id"])
    assert run.info.status == "FINISHED" and run.data.metrics["decision/promote"] == 1.0
    assert run.data.metrics["data/new_videos"] == 8 and "candidate/fe/uar" in run.data.metrics
    retrain_exp = client.get_experiment_by_name("mien-retrain").experiment_id
    assert len(client.search_runs([retrain_exp])) == 1  # the three attempts shared one run

    # no new data: nothing happens, and it says so
    db = Path(s["tracking"][len("sqlite:///"):])
    before = (sha256_file(db), sorted(p.name for p in (s["tmp"] / "work").iterdir()))
    again = retrain(retrain_config(s["tmp"], holdout=s["holdout"]), s["data"])
    assert again.status == "no_new_data" and "no new data since the champion's watermark" in again.message
    assert (sha256_file(db), sorted(p.name for p in (s["tmp"] / "work").iterdir())) == before


def test_registration_falls_back_when_training_did_not_register(first_cycle) -> None:
    """`mien train` only warns when registering fails; the cycle then registers the model directory
    itself, once: a second attempt finds that version by its run instead of adding another."""
    import mlflow

    from workflows.core.tracking import Tracker
    from workflows.retrain.cycle import _Cycle

    s = first_cycle
    cfg = retrain_config(s["tmp"], "model_name=mien-fallback", holdout=s["holdout"])
    cyc = _Cycle(cfg, [], dry_run=False, ray_address=None)
    cyc.open_registry()
    cyc.run = Tracker.start(cyc.tracking, cfg.mlflow.experiment)
    info = {"train_run_id": None, "output": str(s["work"] / "model")}
    assert cyc.register(info) == "1" and cyc.register(info) == "1"
    client = mlflow.MlflowClient(s["tracking"])
    assert [str(v.version) for v in client.search_model_versions("name='mien-fallback'")] == ["1"]
    assert str(client.get_model_version_by_alias("mien-fallback", "candidate").version) == "1"


def test_holdout_scoring_in_a_ray_task_matches_in_process(first_cycle) -> None:
    """evaluate.ray_task (GPU clusters: the driver has no GPU) gives the report scored in-process."""
    from workflows.retrain.cycle import _Cycle, load_candidate_train_config

    s = first_cycle
    cfg = retrain_config(s["tmp"], "evaluate.ray_task=true", "evaluate.num_cpus=0.5", holdout=s["holdout"])
    cyc = _Cycle(cfg, [], dry_run=False, ray_address=None)
    cyc.work = str(s["tmp"] / "ray-task-eval")
    report = cyc.evaluate("candidate", str(s["work"] / "model"), s["holdout"], load_candidate_train_config(cfg))
    in_process = json.loads((s["work"] / "eval" / "candidate.json").read_text())
    assert report["fe"]["uar"] == pytest.approx(in_process["fe"]["uar"]) and report["n_faces"] == 24


def test_a_registry_champion_is_scored_from_the_cycles_registry(first_cycle, tmp_path, monkeypatch) -> None:
    """A champion whose files are only reachable as models:/NAME/VERSION (a tracking server's
    artifact store) loads through the cycle's configured registry, not a default one in the cwd."""
    from workflows.retrain.cycle import _Cycle, load_candidate_train_config

    s = first_cycle
    cfg = retrain_config(s["tmp"], holdout=s["holdout"])
    monkeypatch.chdir(tmp_path)
    cyc = _Cycle(cfg, [], dry_run=False, ray_address=None)
    cyc.work = str(tmp_path / "work")
    report = cyc.evaluate("champion", "models:/mien-test/1", s["holdout"], load_candidate_train_config(cfg))
    in_process = json.loads((s["work"] / "eval" / "candidate.json").read_text())
    assert report["fe"]["uar"] == pytest.approx(in_process["fe"]["uar"])
    assert not (tmp_path / "mlflow.db").exists()
    assert (s["tmp"] / "ray-task-eval" / "eval" / "candidate.json").exists()


@pytest.mark.slow
def test_worse_new_labels_leave_the_champion_in_place_with_reasons(first_cycle, capsys) -> None:
    """Cycle 2: a night of wrong pseudo-labels. The dry run changes nothing; the real run trains a
    candidate from the champion, finds it worse on the labeled holdout and keeps the champion."""
    import mlflow

    from jobs.cli import main
    from workflows.retrain.cycle import retrain

    s = first_cycle
    tmp, client = s["tmp"], mlflow.MlflowClient(s["tracking"])
    write_run(tmp / "annotations" / "night2", "r2", T0 + dt.timedelta(days=1), [f"w{i}" for i in range(8)],
              labels=SWAPPED, seed=5)

    db = Path(s["tracking"][len("sqlite:///"):])
    before = (sha256_file(db), sorted(p.name for p in (tmp / "work").iterdir()))
    args = ["retrain", "--config", str(ROOT / "jobs/configs/retrain/local.yaml"), "--data", *s["data"], "--dry-run"]
    for item in retrain_overrides(tmp, holdout=s["holdout"]):
        args += ["--set", item]
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "champion: mien-test v1" in text and "new data: 8 video(s) from 1 annotate run(s)" in text
    assert "runs r2" in text and "64 faces read, 64 kept" in text and "evaluate: candidate and v1" in text
    assert (sha256_file(db), sorted(p.name for p in (tmp / "work").iterdir())) == before

    result = retrain(retrain_config(tmp, holdout=s["holdout"]), s["data"])
    assert result.status == "not_promoted", result.render()
    d = result.decision
    assert d.champion_version == "1" and d.candidate_version == "2"
    assert d.candidate_value < d.champion_value - 0.05 and not d.promote
    assert _aliases(client) == {"candidate": "2", "champion": "1"}
    v2 = client.get_model_version("mien-test", "2")
    assert v2.tags["mien.retrain.decision"] == "keep_champion" and v2.tags["mien.retrain.champion_version"] == "1"
    assert "< margin 0.05" in v2.tags["mien.retrain.reasons"] and v2.tags["mien.data_runs"] == "r2"
    assert v2.tags["mien.retrain.base_version"] == "1"
    run = client.get_run(v2.tags["mien.retrain.run_id"])
    assert run.data.metrics["decision/promote"] == 0.0
    assert run.data.metrics["champion/fe/uar"] == pytest.approx(d.champion_value)
    # rerunning the same cycle repeats nothing: the decision stands, no third version
    again = retrain(retrain_config(tmp, holdout=s["holdout"]), s["data"])
    assert again.status == "not_promoted" and "decision" in again.reused
    assert len(client.search_model_versions("name='mien-test'")) == 2


def test_a_cycle_on_a_pretrained_vlm_trains_evaluates_registers_and_promotes(local_ray, tmp_path) -> None:
    """mien retrain with a LoRA-tuned pretrained VLM as the candidate (tiny random LLaVA base):
    pseudo-labels -> LoRA under Ray Train -> holdout evaluation -> registry -> champion alias,
    and the champion loads from the registry as the VLM it is."""
    import mlflow

    from model import load_model
    from model.vlm.tiny import build_tiny_vlm
    from tests.conftest import environ
    from workflows.retrain.cycle import retrain

    base = build_tiny_vlm("llava", tmp_path / "base")
    write_run(tmp_path / "annotations" / "night1", "r1", T0, [f"v{i}" for i in range(8)])
    holdout = labeled_holdout(tmp_path / "labeled", per_class=2)
    cfg = retrain_config(
        tmp_path, f"train.config={ROOT}/jobs/configs/train/tiny_vlm_cpu.yaml",
        f"train.overrides=[model.vlm.source={base}, data.crop_size=32, scaling.cpus_per_worker=0.5, max_steps=4, "
        "epochs=100, val_every_steps=100, checkpoint.every_steps=100, evaluate.enabled=false]",
        "promotion.minimum=0.0", "holdout.min_faces=4", holdout=holdout)
    tracking = f"sqlite:///{tmp_path}/mlflow.db"
    with environ(MLFLOW_TRACKING_URI=tracking):  # an earlier test's global MLflow URI must not leak in
        result = retrain(cfg, [str(tmp_path / "annotations")])
        assert result.status == "promoted", result.message
        assert _aliases(mlflow.MlflowClient(tracking))["champion"] == result.candidate_version
        champion = load_model("models:/mien-test@champion")
    assert champion.config.is_vlm and champion.model_id.startswith("mien-tiny-vlm-v1+")
