"""Licences of model components, and what each means for commercial use.

Most face and vision-language models are released for research only, so "may we use this model, and
the annotations it made, commercially?" needs an answer per component. Every component a model or an
annotate run uses is a :class:`Component`: what it is, where it comes from, its licence text, and
``commercial`` = :func:`classify` of that text:

    no          non-commercial or research-only (CC-BY-NC*, "non-commercial", "research only", "academic")
    conditions  commercial use under the licensor's terms or obligations (Gemma, Llama, OpenRAIL,
                "terms of use", copyleft such as GPL and CC-BY-SA)
    yes         permissive (MIT, BSD, Apache-2.0, CC0, CC-BY, ...)
    unknown     no licence recorded (a base without a model card) or one this table does not know

The list is written into ``mien_model.json`` (``licences``; :func:`model.model_dir.model_licences`
derives it for an older directory), the run JSON, the tags of every registered MLflow model version
(:func:`registry_tags`, set by :meth:`workflows.core.tracking.Tracker.log_model_dir`), the HTML report
and ``mien model inspect``; :func:`warn` says so in the log when a component may not be used commercially.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Literal

from workflows.core.assets import ASSETS, MULTIPART_ASSETS

log = logging.getLogger(__name__)

Commercial = Literal["yes", "conditions", "no", "unknown"]
# Most restrictive first: what a model as a whole allows is its most restrictive component's answer.
ORDER: tuple[Commercial, ...] = ("no", "unknown", "conditions", "yes")

# Weights mien initialises itself (random init, the built-in tokenizer): no third party's licence applies.
OWN = "mien's own (random init; Apache-2.0)"

_NO = re.compile(r"\bnc\b|non[- ]?commercial|not for commercial|research[- ](?:use[- ])?only|research purposes|"
                 r"research licen[cs]e|academic")
_CONDITIONS = re.compile(r"gemma|llama|openrail|terms of use|\bgpl|agpl|lgpl|\bmpl|cc-by-sa|\bepl|community licen[cs]e")
_YES = re.compile(r"\bmit\b|\bbsd|apache|cc0|cc-by\b|cc-by-\d|\bisc\b|unlicense|zlib|bsl-1|public domain")


def classify(licence: str) -> Commercial:
    """Whether ``licence`` (an SPDX id, a model-card ``license:`` value or free text) allows commercial use."""
    text = licence.strip().lower().replace("_", "-")
    if not text or text in ("unknown", "other"):
        return "unknown"
    if _NO.search(text):
        return "no"
    if _CONDITIONS.search(text):
        return "conditions"
    if _YES.search(text):
        return "yes"
    return "unknown"


def most_restrictive(answers: Iterable[str]) -> Commercial:
    """The most restrictive of ``answers`` ("unknown" for none)."""
    found = set(answers)
    return next((a for a in ORDER if a in found), "unknown")


@dataclasses.dataclass(frozen=True)
class Component:
    """One component and its licence; ``commercial`` is always :func:`classify` of ``licence``."""

    component: str  # an asset name (yunet, ...), a model component (llm, vlm, vision, tokenizer) or a trained part
    source: str  # asset:NAME (package), a base's URI, or the trained file and the base it was trained on
    licence: str  # "" when none is recorded

    @property
    def commercial(self) -> Commercial:
        return classify(self.licence)

    def as_dict(self) -> dict[str, str]:
        return {"component": self.component, "source": self.source, "licence": self.licence,
                "commercial": self.commercial}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Component:
        """From a recorded entry; ``commercial`` is classified again (the recorded one may be an older table's)."""
        return cls(str(d.get("component", "")), str(d.get("source", "")), str(d.get("licence") or ""))


def asset_licence(name: str) -> str:
    """The licence of pinned asset ``name`` (a multi-part asset's: its parts')."""
    if name in MULTIPART_ASSETS:
        return ", ".join(dict.fromkeys(ASSETS[p].licence for p in MULTIPART_ASSETS[name].parts))
    return ASSETS[name].licence


def face_components() -> list[Component]:
    """The pinned face models the annotate pipeline's face stage runs (detector, landmarker, age and
    gender, expression prior): every model's scores are computed from their output."""
    chunks = {p for m in MULTIPART_ASSETS.values() for p in m.parts}
    return [Component(a.name, f"asset:{a.name} ({a.package})", a.licence)
            for a in ASSETS.values() if a.kind == "model" and a.name not in chunks]


_CARD_MAX_BYTES = 1 << 16


def card_licence(directory: str | Path) -> str:
    """The ``license:`` of the model card (``README.md`` YAML front matter) in ``directory``, as Hugging
    Face checkpoints carry it (``license: other`` gives ``license_name``); "" when there is none."""
    import yaml

    path = Path(directory) / "README.md"
    try:
        if not path.is_file():
            return ""
        with open(path, encoding="utf-8", errors="replace") as f:
            text = f.read(_CARD_MAX_BYTES)
    except OSError:
        return ""
    match = re.match(r"\A\ufeff?---\s*\n(.*?)\n---\s*(?:\n|\Z)", text, re.S)
    if not match:
        return ""
    try:
        front = yaml.safe_load(match.group(1))
    except yaml.YAMLError:
        return ""
    if not isinstance(front, dict):
        return ""
    value = front.get("license")
    if isinstance(value, list):
        value = ", ".join(str(v) for v in value)
    if str(value).lower() == "other" and front.get("license_name"):
        value = front["license_name"]
    return "" if value is None else str(value)


def to_dicts(components: Iterable[Component]) -> list[dict[str, str]]:
    return [c.as_dict() for c in components]


def from_dicts(entries: Iterable[Mapping[str, Any]]) -> list[Component]:
    return [Component.from_dict(e) for e in entries if isinstance(e, Mapping)]


def registry_tags(components: Iterable[Component]) -> dict[str, str]:
    """MLflow model-version tags: ``mien.licence.<component>`` each, and ``mien.commercial_use`` = the
    most restrictive answer."""
    components = list(components)
    tags = {f"mien.licence.{c.component}": c.licence or "unknown" for c in components}
    tags["mien.commercial_use"] = most_restrictive(c.commercial for c in components)
    return tags


def recorded_tags(directory: str | Path) -> dict[str, str]:
    """:func:`registry_tags` of the ``licences`` recorded in the model directory ``directory``
    (``mien_model.json``, the name ``model.model_dir.MANIFEST`` gives it); {} when none are recorded."""
    try:
        manifest = json.loads((Path(directory) / "mien_model.json").read_text())
    except (OSError, ValueError):
        return {}
    entries = manifest.get("licences") if isinstance(manifest, dict) else None
    return registry_tags(from_dicts(entries)) if isinstance(entries, list) and entries else {}


def warn(components: Iterable[Component], subject: str) -> None:
    """One warning naming the components whose licence does not allow commercial use, and one info line
    naming those whose licence is unknown. ``subject``: what uses them (``model URI``)."""
    components = list(components)
    barred = [c for c in components if c.commercial == "no"]
    if barred:
        log.warning("%s uses %s, whose licence does not allow commercial use: the model and the annotations it "
                    "makes may not be usable commercially; use components whose licences allow it if you need "
                    "that", subject, _named(barred))
    unknown = [c for c in components if c.commercial == "unknown"]
    if unknown:
        log.info("%s: licence unknown for %s; check it before any commercial use (a Hugging Face base states it "
                 "as `license:` in its README.md front matter)", subject, _named(unknown))


def _named(components: Iterable[Component]) -> str:
    return ", ".join(f"{c.component} ({c.source}" + (f", licensed {c.licence!r})" if c.licence else ")")
                     for c in components)


__all__ = ["Component", "OWN", "asset_licence", "card_licence", "classify", "face_components", "from_dicts",
           "most_restrictive", "recorded_tags", "registry_tags", "to_dicts", "warn"]
