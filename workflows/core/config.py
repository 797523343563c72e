"""Typed configuration: dataclasses loaded from YAML plus ``--set dotted.key=value`` overrides.

Every config in mien is a (nested) dataclass. :func:`load_config` merges, in order, the
dataclass defaults, a YAML file and dotted overrides, then validates the whole tree and
raises one :class:`ConfigError` that lists every problem with the offending key. Unknown
keys are errors: a typo must never be silently ignored.

A dataclass may define ``validate(self) -> list[str]`` returning problems as
``"key: message"`` strings (keys relative to that dataclass); they are prefixed with the
dataclass' path in the tree.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import types
import typing
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import yaml

T = TypeVar("T")


class ConfigError(ValueError):
    """One or more configuration problems; ``problems`` holds each as ``"key: message"``."""

    def __init__(self, problems: list[str], source: str | None = None):
        self.problems = list(problems)
        where = f" in {source}" if source else ""
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"{len(self.problems)} configuration problem(s){where}:\n{lines}")


def parse_overrides(items: Iterable[str]) -> dict[str, Any]:
    """Turn ``["a.b=1", "c=x"]`` into a nested dict; values are parsed as YAML scalars."""
    out: dict[str, Any] = {}
    problems = []
    for item in items:
        if "=" not in item:
            problems.append(f"{item}: an override must look like dotted.key=value")
            continue
        key, raw = item.split("=", 1)
        key = key.strip()
        if not key or any(not part for part in key.split(".")):
            problems.append(f"{item}: empty key segment")
            continue
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            value = raw
        node = out
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                problems.append(f"{key}: conflicts with another override")
                break
        else:
            node[parts[-1]] = value
    if problems:
        raise ConfigError(problems, "--set")
    return out


def deep_merge(base: Mapping[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in update.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), Mapping):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = v
    return out


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping from a local path or URI; an empty file is an empty mapping."""
    from workflows.core import storage

    try:
        text = storage.read_text(str(path))
    except FileNotFoundError as e:
        raise ConfigError([f"config file not found: {path}"]) from e
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError([f"not valid YAML: {e}"], str(path)) from e
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError([f"top level must be a mapping, got {type(data).__name__}"], str(path))
    return data


def load_config(cls: type[T], path: str | Path | None = None, overrides: Iterable[str] = (),
                data: Mapping[str, Any] | None = None) -> T:
    """Build a validated ``cls`` from defaults, an optional YAML file and dotted overrides."""
    merged: dict[str, Any] = {}
    if path is not None:
        merged = read_yaml(path)
    if data:
        merged = deep_merge(merged, data)
    merged = deep_merge(merged, parse_overrides(overrides))
    return from_dict(cls, merged, source=str(path) if path else None)


def resolve_relative(path: str, search_dirs: Iterable[str | Path] = ()) -> str:
    """A path written in a config, made absolute where its author meant it: a URI or absolute
    path as is; a relative one against the working directory, then each of ``search_dirs`` (the
    directory of the config file that names it, then any the caller adds), first that exists.
    Unresolved paths come back unchanged so that validation reports them."""
    from workflows.core import storage

    if storage.is_remote(path) or os.path.isabs(path):
        return path
    for base in (os.getcwd(), *search_dirs):
        cand = os.path.join(str(base), path)
        if os.path.exists(cand):
            return os.path.abspath(cand)
    return path


def from_dict(cls: type[T], data: Mapping[str, Any], source: str | None = None) -> T:
    problems: list[str] = []
    obj = _build(cls, data, "", problems)
    if not problems:
        problems.extend(_validate_tree(obj, ""))
    if problems:
        raise ConfigError(problems, source)
    return obj


def to_dict(obj: Any) -> Any:
    """A plain (YAML/JSON-able) copy of a config tree."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, list | tuple):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


def _key(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _build(cls: type, data: Any, prefix: str, problems: list[str]) -> Any:
    if not isinstance(data, Mapping):
        problems.append(f"{prefix or '<root>'}: expected a mapping, got {data!r}")
        return None
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    for key in data:
        if key not in fields:
            close = difflib.get_close_matches(str(key), fields, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            problems.append(f"{_key(prefix, str(key))}: unknown key{hint}; valid keys: {', '.join(fields)}")
    kwargs = {}
    for name, f in fields.items():
        if name not in data:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                problems.append(f"{_key(prefix, name)}: required")
            elif dataclasses.is_dataclass(hints[name]) and f.default_factory is not dataclasses.MISSING:
                kwargs[name] = f.default_factory()
            continue
        value = data[name]
        if (isinstance(value, Mapping) and dataclasses.is_dataclass(hints[name])
                and f.default_factory is not dataclasses.MISSING):
            # Overriding one key keeps the field's own defaults for the others (a factory may
            # differ from the class defaults: ray.mllm is a StageResources with batch_size=4).
            value = deep_merge(to_dict(f.default_factory()), value)
        kwargs[name] = _coerce(hints[name], value, _key(prefix, name), problems)
    try:
        return cls(**kwargs)
    except TypeError:
        return None


def _coerce(tp: Any, value: Any, key: str, problems: list[str]) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        non_none = [a for a in args if a is not type(None)]
        sub: list[str] = []
        for a in non_none:
            sub = []
            out = _coerce(a, value, key, sub)
            if not sub:
                return out
        problems.extend(sub if len(non_none) == 1 else [f"{key}: {value!r} matches none of {tp}"])
        return None
    if origin is typing.Literal:
        if value not in args:
            problems.append(f"{key}: must be one of {', '.join(map(repr, args))}, got {value!r}")
        return value
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, key, problems)
    if origin in (list, tuple):
        if isinstance(value, str | bytes) or not isinstance(value, Iterable) or isinstance(value, Mapping):
            problems.append(f"{key}: expected a list, got {value!r}")
            return value
        item_t = args[0] if args else Any
        items = [_coerce(item_t, v, f"{key}[{i}]", problems) for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, Mapping):
            problems.append(f"{key}: expected a mapping, got {value!r}")
            return value
        vt = args[1] if len(args) == 2 else Any
        return {str(k): _coerce(vt, v, f"{key}.{k}", problems) for k, v in value.items()}
    if tp is bool:
        if isinstance(value, bool):
            return value
        problems.append(f"{key}: expected true/false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        problems.append(f"{key}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads "1e9" as a string
            try:
                return float(value)
            except ValueError:
                pass
        problems.append(f"{key}: expected a number, got {value!r}")
        return value
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, int | float) and not isinstance(value, bool):
            return str(value)
        problems.append(f"{key}: expected a string, got {value!r}")
        return value
    return value


def _validate_tree(obj: Any, prefix: str) -> list[str]:
    problems: list[str] = []
    if not dataclasses.is_dataclass(obj):
        return problems
    for f in dataclasses.fields(obj):
        problems.extend(_validate_tree(getattr(obj, f.name), _key(prefix, f.name)))
    validate = getattr(obj, "validate", None)
    if callable(validate):
        problems.extend(_key(prefix, p) for p in validate())
    return problems
