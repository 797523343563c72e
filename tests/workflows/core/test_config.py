import dataclasses

import pytest

from workflows.core.config import ConfigError, load_config, parse_overrides, to_dict


@dataclasses.dataclass
class Inner:
    size: int = 224
    name: str = "x"
    ratio: float = 0.5

    def validate(self):
        return [] if self.size > 0 else ["size: must be > 0"]


@dataclasses.dataclass
class Outer:
    inner: Inner = dataclasses.field(default_factory=Inner)
    flag: bool = False
    tags: list[str] = dataclasses.field(default_factory=list)
    maybe: str | None = None


def test_defaults_yaml_and_overrides_merge_in_order(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("inner:\n  size: 336\n  name: yaml\nflag: true\n")
    cfg = load_config(Outer, f, ["inner.name=cli", "tags=[a, b]", "inner.ratio=1"])
    assert cfg.inner.size == 336 and cfg.inner.name == "cli" and cfg.flag is True
    assert cfg.tags == ["a", "b"] and cfg.inner.ratio == 1.0 and cfg.maybe is None
    assert to_dict(cfg)["inner"] == {"size": 336, "name": "cli", "ratio": 1.0}


def test_every_problem_reported_at_once_with_keys(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("inner:\n  sise: 3\n  size: -1\nflag: maybe\nunknown_top: 1\n")
    with pytest.raises(ConfigError) as ei:
        load_config(Outer, f, ["inner.ratio=abc"])
    msg = str(ei.value)
    probs = ei.value.problems
    assert any(p.startswith("inner.sise: unknown key") and "did you mean 'size'" in p for p in probs)
    assert any(p.startswith("flag: expected true/false") for p in probs)
    assert any(p.startswith("unknown_top: unknown key") for p in probs)
    assert any(p.startswith("inner.ratio: expected a number") for p in probs)
    assert str(f) in msg


def test_validate_hook_runs_after_types_are_right():
    with pytest.raises(ConfigError) as ei:
        load_config(Outer, None, ["inner.size=0"])
    assert ei.value.problems == ["inner.size: must be > 0"]


def test_bad_override_syntax():
    with pytest.raises(ConfigError):
        parse_overrides(["novalue"])
    assert parse_overrides(["a.b.c=3", "a.d=x"]) == {"a": {"b": {"c": 3}, "d": "x"}}


def test_missing_config_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(Outer, tmp_path / "nope.yaml")


@dataclasses.dataclass
class Pools:
    # Two fields of one class with different defaults, like ray.faces / ray.mllm.
    cpu: Inner = dataclasses.field(default_factory=Inner)
    gpu: Inner = dataclasses.field(default_factory=lambda: Inner(size=336, name="gpu"))


def test_overriding_one_key_keeps_the_fields_own_defaults():
    cfg = load_config(Pools, None, ["gpu.ratio=0.25"])
    assert cfg.gpu == Inner(size=336, name="gpu", ratio=0.25)  # not Inner()'s size/name
    assert cfg.cpu == Inner()


def test_annotate_mllm_override_keeps_gpu_and_batch_defaults():
    from workflows.annotate.pipeline import AnnotateConfig

    cfg = load_config(AnnotateConfig, None, ["ray.mllm.concurrency=2"])
    assert (cfg.ray.mllm.concurrency, cfg.ray.mllm.num_gpus, cfg.ray.mllm.batch_size) == (2, -1.0, 4)


def test_descriptions_and_model_settings_are_run_time_options_of_annotate():
    from workflows.annotate.pipeline import AnnotateConfig, _check_model
    from workflows.core.config import ConfigError, load_config

    cfg = load_config(AnnotateConfig, None, ["model.describe=per_track", "model.overrides=[prior_weight=0.3]"])
    assert cfg.model.load_overrides() == ["generation.enabled=true", "generation.mode=per_track", "prior_weight=0.3"]
    _check_model(cfg)  # valid for the default model
    with pytest.raises(ConfigError, match="describe: one of off"):
        load_config(AnnotateConfig, None, ["model.describe=sometimes"])
    bad = load_config(AnnotateConfig, None, ["model.overrides=[generation.max_new_tokenz=4]"])
    with pytest.raises(ConfigError, match="max_new_tokenz"):
        _check_model(bad)  # named before any actor starts


def test_the_cost_of_descriptions_is_stated_before_the_run(caplog):
    from workflows.annotate.pipeline import AnnotateConfig, _check_model
    from workflows.core.config import load_config

    cfg = load_config(AnnotateConfig, None, ["model.describe=fraction", "model.batch_size=16",
                                             "model.overrides=[generation.max_new_tokens=24]"])
    with caplog.at_level("WARNING", logger="workflows.annotate.pipeline"):
        _check_model(cfg)
    assert ("descriptions are on (model.describe=fraction): one LLM decode of up to 24 new tokens for each track of "
            "about 10% of the tracks in every batch of 16 faces") in caplog.text
    assert "--set model.describe=off" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="workflows.annotate.pipeline"):
        _check_model(load_config(AnnotateConfig, None, []))
    assert "descriptions" not in caplog.text


ROOT = __import__("pathlib").Path(__file__).resolve().parents[3]


def _keys(problems):
    return [p.split(": ", 1)[0] for p in problems]


def test_nan_negative_and_absurd_values_of_the_annotate_config_are_all_refused_at_once():
    from workflows.annotate.pipeline import AnnotateConfig

    with pytest.raises(ConfigError) as ei:
        load_config(AnnotateConfig, None, [
            "ray.crash_passes=-1", "ray.max_task_retries=-1", "ray.faces.num_cpus=nan",
            "decode.limits.max_duration_s=nan", "decode.seek_min_gap_s=-1", "ray.faces.concurrency=1000000",
            "ray.mllm.num_cpus=.inf", "decode.threads=-1"])
    probs = ei.value.problems
    # one problem per key, each naming the key and the value
    assert sorted(_keys(probs)) == sorted([
        "ray.crash_passes", "ray.max_task_retries", "ray.faces.num_cpus", "decode.limits.max_duration_s",
        "decode.seek_min_gap_s", "ray.faces.concurrency", "ray.mllm.num_cpus", "decode.threads"])
    assert "ray.crash_passes: must be >= 0, got -1" in probs
    assert "ray.faces.num_cpus: must be a finite number, got nan" in probs
    assert "ray.mllm.num_cpus: must be a finite number, got inf" in probs
    assert "decode.limits.max_duration_s: must be a finite number, got nan" in probs
    assert "ray.faces.concurrency: must be <= 100000, got 1000000" in probs


def test_absurd_retry_counts_are_refused_and_sane_ones_kept():
    from workflows.annotate.pipeline import AnnotateConfig

    with pytest.raises(ConfigError) as ei:
        load_config(AnnotateConfig, None, ["ray.crash_passes=1000", "ray.max_task_retries=101"])
    assert ei.value.problems == ["ray.max_task_retries: must be <= 100, got 101",
                                 "ray.crash_passes: must be <= 100, got 1000"]
    cfg = load_config(AnnotateConfig, None, ["ray.crash_passes=0", "ray.max_task_retries=100"])
    assert (cfg.ray.crash_passes, cfg.ray.max_task_retries) == (0, 100)


def test_an_unknown_key_does_not_hide_bad_values_given_beside_it(tmp_path):
    from workflows.annotate.pipeline import AnnotateConfig

    f = tmp_path / "c.yaml"
    f.write_text("ray:\n  crash_pases: 1\noutput:\n  jpeg_quality: 0\n")
    with pytest.raises(ConfigError) as ei:
        load_config(AnnotateConfig, f, ["ray.max_task_retries=-1", "decode.limits.max_duration_s=nan"])
    probs = ei.value.problems
    assert any(p.startswith("ray.crash_pases: unknown key (did you mean 'crash_passes'?)") for p in probs)
    assert "ray.max_task_retries: must be >= 0, got -1" in probs
    assert "decode.limits.max_duration_s: must be a finite number, got nan" in probs
    assert "output.jpeg_quality: must be in 1..100" in probs  # a validate() check, same error


def test_declared_negative_sentinels_still_load():
    from model.config import load_model_config
    from workflows.annotate.pipeline import AnnotateConfig

    cfg = load_config(AnnotateConfig, None, ["ray.mllm.num_gpus=-1", "ray.faces.num_gpus=0"])
    assert cfg.ray.mllm.num_gpus == -1.0
    with pytest.raises(ConfigError, match=r"ray.faces.num_gpus: must be >= -1, got -2"):
        load_config(AnnotateConfig, None, ["ray.faces.num_gpus=-2"])
    model = load_model_config(str(ROOT / "jobs/configs/model/tiny_cpu.yaml"),
                              ["vision.intermediate_layers=[-4, -1]", "prior.neutral_bias=-0.5",
                               "prior.per_au={AU12: [8.0, -0.1]}"])
    assert model.vision.intermediate_layers == [-4, -1] and model.prior.per_au == {"AU12": [8.0, -0.1]}
    with pytest.raises(ConfigError, match=r"prior.per_au.AU12\[1\]: must be a finite number, got nan"):
        load_model_config(str(ROOT / "jobs/configs/model/tiny_cpu.yaml"), ["prior.per_au={AU12: [8.0, .nan]}"])


def test_a_nan_learning_rate_is_refused_by_name():
    from workflows.training.config import load_train_config

    with pytest.raises(ConfigError) as ei:
        load_train_config(str(ROOT / "jobs/configs/train/tiny_cpu.yaml"), ["optim.lr=nan", "optim.betas=[0.9, nan]"])
    assert ei.value.problems == ["optim.lr: must be a finite number, got nan",
                                 "optim.betas[1]: must be a finite number, got nan"]


def test_an_out_of_range_value_is_reported_once_not_again_by_validate():
    with pytest.raises(ConfigError) as ei:
        load_config(Outer, None, ["inner.size=-1"])
    assert ei.value.problems == ["inner.size: must be >= 0, got -1"]  # not also Inner.validate's "> 0"


def test_a_face_config_built_in_code_gets_the_same_number_checks():
    from workflows.faces.config import FaceConfig, TrackConfig, check_config

    with pytest.raises(ConfigError) as ei:
        check_config(FaceConfig(num_gpus=-1.0, track=TrackConfig(max_gap_s=float("nan"))))
    assert ei.value.problems == ["faces.num_gpus: must be >= 0, got -1.0",
                                 "faces.track.max_gap_s: must be a finite number, got nan"]


def test_mien_annotate_refuses_a_bad_value_before_touching_the_output(tmp_path, capsys):
    from jobs.cli import main

    out = tmp_path / "out"
    assert main(["annotate", "--input", str(tmp_path), "--output", str(out), "--set", "ray.crash_passes=-1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("mien annotate: 1 configuration problem(s)")
    assert "ray.crash_passes: must be >= 0, got -1" in err
    assert not out.exists()
