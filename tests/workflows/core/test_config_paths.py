"""Relative paths written in config files resolve where their author meant them, on the driver."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]


def test_resolve_relative_prefers_the_working_dir_then_the_search_dirs(tmp_path, monkeypatch):
    from workflows.core.config import resolve_relative

    (tmp_path / "cwd").mkdir()
    (tmp_path / "cfgdir").mkdir()
    (tmp_path / "cfgdir" / "t.yaml").write_text("a: 1\n")
    monkeypatch.chdir(tmp_path / "cwd")
    assert resolve_relative("t.yaml", [tmp_path / "cfgdir"]) == str(tmp_path / "cfgdir" / "t.yaml")
    (tmp_path / "cwd" / "t.yaml").write_text("a: 2\n")
    assert resolve_relative("t.yaml", [tmp_path / "cfgdir"]) == str(tmp_path / "cwd" / "t.yaml")
    assert resolve_relative("s3://b/t.yaml", [tmp_path]) == "s3://b/t.yaml"
    assert resolve_relative("missing.yaml", [tmp_path]) == "missing.yaml"  # validation names it


def test_retrain_finds_its_train_config_beside_it_from_any_working_dir(tmp_path, monkeypatch):
    """A retrain config copied with its train config to another directory keeps working when the
    job starts elsewhere (cron, a Ray job's working_dir), and the path is absolute before any
    worker sees it."""
    from workflows.retrain.cycle import load_candidate_train_config, load_retrain_config

    shutil.copy(ROOT / "jobs/configs/train/tiny_cpu.yaml", tmp_path / "train.yaml")
    text = (ROOT / "jobs/configs/retrain/local.yaml").read_text()
    text = text.replace("config: jobs/configs/train/tiny_cpu.yaml", "config: train.yaml")
    (tmp_path / "retrain.yaml").write_text(text)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    cfg = load_retrain_config(str(tmp_path / "retrain.yaml"))
    assert cfg.train.config == str(tmp_path / "train.yaml")
    assert load_candidate_train_config(cfg).data.crop_size > 0


def test_shipped_default_train_config_is_found_from_the_install_root(tmp_path, monkeypatch):
    from workflows.core.config import ConfigError
    from workflows.retrain.cycle import load_retrain_config

    (tmp_path / "r.yaml").write_text("model_name: m\n")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match="tiny_cpu.yaml"):
        load_retrain_config(str(tmp_path / "r.yaml"))  # the default names a shipped file
    cfg = load_retrain_config(str(tmp_path / "r.yaml"), search_dirs=[ROOT])
    assert cfg.train.config == str(ROOT / "jobs/configs/train/tiny_cpu.yaml")


def test_the_cli_searches_the_install_root_it_ships_configs_in():
    from jobs.commands.retrain import INSTALL_ROOT

    assert (Path(INSTALL_ROOT) / "jobs" / "configs" / "train" / "tiny_cpu.yaml").is_file()
