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
