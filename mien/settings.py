"""Keyword settings of the Python API → the same typed, validated configs as the CLI's ``--set``.

A Python keyword cannot hold a dot, so ``section__key=value`` stands for the dotted key
``section.key`` (``decode__sampling="fps:1"`` is ``--set decode.sampling=fps:1``). Values are
Python values, taken as they are (no YAML parsing). Unknown keys, wrong types and bad values
raise the CLI's :class:`~workflows.core.config.ConfigError`, every problem at once with its
dotted key and a "did you mean".
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any, TypeVar

from workflows.core.config import ConfigError, deep_merge, load_config

T = TypeVar("T")


def job_config(cls: type[T], config: str | os.PathLike[str] | None, settings: Mapping[str, Any]) -> T:
    """A validated ``cls`` from its defaults, the YAML file ``config`` (as ``--config``), then
    ``settings`` (``section__key=value``, the form of this module's docstring)."""
    data: dict[str, Any] = {}
    problems = []
    for key, value in settings.items():
        parts = key.split("__")
        if not all(parts):
            problems.append(f"{key}: empty key segment; write section__key, e.g. decode__sampling")
            continue
        for part in reversed(parts):
            value = {part: value}
        data = deep_merge(data, value)
    if problems:
        raise ConfigError(problems, "keyword settings")
    return load_config(cls, os.fspath(config) if config is not None else None, data=data)
