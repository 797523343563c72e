"""Typed configuration: dataclasses loaded from YAML plus ``--set dotted.key=value`` overrides.

Every config in mien is a (nested) dataclass. :func:`load_config` merges, in order, the
dataclass defaults, a YAML file and dotted overrides, then validates the whole tree and
raises one :class:`ConfigError` that lists every problem with the offending key. Unknown
keys are errors: a typo must never be silently ignored, nor hide a bad value given beside it.

Every number is checked without any per-field code: a float must be finite (NaN slips through
every ``<``/``>`` comparison and so through every guard written with one) and a number must not
be negative, unless its field declares another range with :func:`bounded`.

A dataclass may define ``validate(self) -> list[str]`` returning problems as
``"key: message"`` strings (keys relative to that dataclass); they are prefixed with the
dataclass' path in the tree. It runs on values of the right types and, for its own fields,
within their ranges.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import types
import typing
from collections.abc import Iterable, Iterator, Mapping
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


# The range of a number in a config unless its field declares another with ``bounded``.
_DEFAULT_RANGE: tuple[float | None, float | None] = (0, None)


def bounded(default: Any = dataclasses.MISSING, *, lo: float | None = 0, hi: float | None = None,
            default_factory: Any = dataclasses.MISSING) -> Any:
    """A config field whose numbers may lie in ``[lo, hi]`` (``None``: unbounded on that side)
    instead of the loader's default of any number >= 0; for a list or mapping of numbers the range
    holds for each of them. E.g. ``num_gpus: float = bounded(0.0, lo=-1)`` for a -1 sentinel."""
    return dataclasses.field(default=default, default_factory=default_factory, metadata={"range": (lo, hi)})


@dataclasses.dataclass
class _Problems:
    """What loading a tree found: every message, and the keys whose built value is not of its
    declared type (a ``validate()`` above such a key would compare the wrong things)."""

    messages: list[str] = dataclasses.field(default_factory=list)
    mistyped: set[str] = dataclasses.field(default_factory=set)

    def add(self, key: str, message: str, mistyped: bool = True) -> None:
        self.messages.append(f"{key}: {message}")
        if mistyped:
            self.mistyped.add(key)

    def extend(self, other: _Problems) -> None:
        self.messages += other.messages
        self.mistyped |= other.mistyped

    def mistyped_under(self, prefix: str) -> bool:
        return any(not prefix or k == prefix or k.startswith((f"{prefix}.", f"{prefix}[")) for k in self.mistyped)


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
    problems = _Problems()
    obj = _build(cls, data, "", problems)
    _validate_tree(obj, "", problems)
    if problems.messages:
        raise ConfigError(problems.messages, source)
    return obj


def validate_config(obj: Any, prefix: str = "") -> list[str]:
    """Every problem of a config tree built in code (not loaded): the number checks and each
    ``validate()``, keys prefixed with ``prefix``."""
    problems = _Problems()
    _validate_tree(obj, prefix, problems)
    return problems.messages


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


def _build(cls: type, data: Any, prefix: str, problems: _Problems) -> Any:
    if not isinstance(data, Mapping):
        problems.add(prefix or "<root>", f"expected a mapping, got {data!r}")
        return None
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    for key in data:
        if key not in fields:
            close = difflib.get_close_matches(str(key), fields, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            # Ignored while building, so it does not spoil the values beside it: they are checked too.
            problems.add(_key(prefix, str(key)), f"unknown key{hint}; valid keys: {', '.join(fields)}",
                         mistyped=False)
    kwargs = {}
    for name, f in fields.items():
        if name not in data:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                problems.add(_key(prefix, name), "required")
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


def _coerce(tp: Any, value: Any, key: str, problems: _Problems) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        non_none = [a for a in args if a is not type(None)]
        sub = _Problems()
        for a in non_none:
            sub = _Problems()
            out = _coerce(a, value, key, sub)
            if not sub.mistyped:
                problems.extend(sub)
                return out
        if len(non_none) == 1:
            problems.extend(sub)
        else:
            problems.add(key, f"{value!r} matches none of {tp}")
        return None
    if origin is typing.Literal:
        if value not in args:
            problems.add(key, f"must be one of {', '.join(map(repr, args))}, got {value!r}")
        return value
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, key, problems)
    if origin in (list, tuple):
        if isinstance(value, str | bytes) or not isinstance(value, Iterable) or isinstance(value, Mapping):
            problems.add(key, f"expected a list, got {value!r}")
            return value
        item_t = args[0] if args else Any
        items = [_coerce(item_t, v, f"{key}[{i}]", problems) for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, Mapping):
            problems.add(key, f"expected a mapping, got {value!r}")
            return value
        vt = args[1] if len(args) == 2 else Any
        return {str(k): _coerce(vt, v, f"{key}.{k}", problems) for k, v in value.items()}
    if tp is bool:
        if isinstance(value, bool):
            return value
        problems.add(key, f"expected true/false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        problems.add(key, f"expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads "1e9" as a string
            try:
                return float(value)
            except ValueError:
                pass
        problems.add(key, f"expected a number, got {value!r}")
        return value
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, int | float) and not isinstance(value, bool):
            return str(value)
        problems.add(key, f"expected a string, got {value!r}")
        return value
    return value


def _validate_tree(obj: Any, prefix: str, problems: _Problems) -> None:
    """The number checks of every field, then each dataclass' ``validate()`` where its subtree
    holds values of the right types and its own numbers are in range (its checks assume both)."""
    if not dataclasses.is_dataclass(obj):
        return
    hints = typing.get_type_hints(type(obj))
    in_range = True
    for f in dataclasses.fields(obj):
        key, value = _key(prefix, f.name), getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            _validate_tree(value, key, problems)
            continue
        lo, hi = f.metadata.get("range", _DEFAULT_RANGE)
        for k, number in _numbers(hints[f.name], value, key):
            message = _range_problem(number, lo, hi)
            if message:
                problems.add(k, message, mistyped=False)
                in_range = False
    validate = getattr(obj, "validate", None)
    if callable(validate) and in_range and not problems.mistyped_under(prefix):
        problems.messages.extend(_key(prefix, p) for p in validate())


def _numbers(tp: Any, value: Any, key: str) -> Iterator[tuple[str, int | float]]:
    """``(key, number)`` for each number in ``value`` where its type hint ``tp`` declares an int or
    a float (``Any`` holds no declared numbers: ``hf_config`` passes through untouched)."""
    if isinstance(value, bool):
        return
    if tp in (int, float):
        if isinstance(value, int | float):
            yield key, value
        return
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        for a in args:
            found = list(_numbers(a, value, key))
            if found:
                yield from found
                return
    elif origin in (list, tuple) and args and isinstance(value, list | tuple):
        for i, v in enumerate(value):
            yield from _numbers(args[0], v, f"{key}[{i}]")
    elif origin is dict and len(args) == 2 and isinstance(value, Mapping):
        for k, v in value.items():
            yield from _numbers(args[1], v, f"{key}.{k}")


def _range_problem(number: int | float, lo: float | None, hi: float | None) -> str | None:
    if isinstance(number, float) and not math.isfinite(number):
        return f"must be a finite number, got {number}"
    if lo is not None and number < lo:
        return f"must be >= {lo}, got {number}"
    if hi is not None and number > hi:
        return f"must be <= {hi}, got {number}"
    return None
