"""Writing a model's weights into a model directory and loading them back into a model.

``save_model`` turns a :class:`model.annotator.FacialAnnotator` / :class:`model.mllm.FacialMLLM`
(or a pretrained-VLM model, :class:`model.vlm.facial.VLMFacialModel`) into the directory that
``model.model_dir`` describes: trained parts as safetensors, base components referenced by source +
sha256 (bundled under ``base/`` only when they have no other source; a VLM base never), the
manifest written last. ``load_parts_into`` loads verified part blobs into a built
model strictly, so saved tensors that do not fit the architecture raise
:class:`~model.model_dir.ArchitectureMismatchError` naming the keys and shapes;
``apply_overrides`` merges load-time overrides into the saved architecture.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from model.config import ModelConfig, config_to_dict
from model.model_dir import (
    FORMAT,
    FORMAT_VERSION,
    MANIFEST,
    ArchitectureMismatchError,
    MissingPartError,
    compute_model_id,
    derive_licences,
    file_sha256s,
    sha256_bytes,
    tree_sha256,
)
from workflows.core.licences import to_dicts

if TYPE_CHECKING:
    from model.annotator import FacialAnnotator
    from model.mllm import FacialMLLM

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- saving

def _safetensors_bytes(tensors: Mapping[str, Any]) -> bytes:
    from safetensors.torch import save

    return save({k: v.detach().to("cpu").contiguous() for k, v in tensors.items()})


def save_model(m: FacialAnnotator | FacialMLLM, uri: str, metrics: Mapping[str, float] | None = None,
               bundle_base: bool = False) -> str:
    """Write ``m`` as a model directory at ``uri`` (local or ``s3://``); returns its model id.

    Trained parts go to safetensors; base components are referenced by source + sha256, and
    bundled under ``base/`` only when they have no other source (random init), are fully
    fine-tuned, or ``bundle_base`` is set. The manifest is written last, so an interrupted
    save never looks like a model. Under ZeRO-3, gather the parameters first (e.g.
    ``deepspeed.zero.GatheredParameters``) and call this on rank 0."""
    from model.annotator import FacialAnnotator
    from model.config import GEMMA_ASSET
    from model.llm import save_base_pretrained
    from workflows.core import storage

    ann = m if isinstance(m, FacialAnnotator) else FacialAnnotator.from_mllm(m)
    cfg = ann.config
    arch = config_to_dict(cfg)
    tmp = Path(tempfile.mkdtemp(prefix="mien-save-"))
    files: dict[str, bytes] = {}
    parts: dict[str, dict[str, Any]] = {}
    components: dict[str, dict[str, Any]] = {}
    try:
        fresh: list[str] = []
        if cfg.is_vlm:
            fresh = _save_vlm_parts(ann, files, parts, components)
            arch["vlm"]["source"] = components["vlm"]["source"]
        needs_llm = bool(cfg.llm.enabled and (not cfg.llm.source or cfg.llm.trainable or cfg.llm.lora.enabled
                                              or bundle_base or ann.llm_loaded or _has_trained_parts(cfg)))
        mllm = ann.mllm if needs_llm else None
        if mllm is not None:
            _add_parts(_trained_tensors(mllm, cfg.llm.lora.enabled), files, parts)
        if cfg.llm.enabled:
            if mllm is not None and (not cfg.llm.source or cfg.llm.trainable or bundle_base):
                save_base_pretrained(mllm.llm, tmp / "base" / "llm")
                components["llm"] = _bundled(tmp, "base/llm")
            elif cfg.llm.source == GEMMA_ASSET:
                from workflows.core.assets import MULTIPART_ASSETS

                components["llm"] = {"source": GEMMA_ASSET, "sha256": MULTIPART_ASSETS["gemma3_270m_gguf"].sha256}
            else:
                components["llm"] = {"source": cfg.llm.source, "sha256": ann.component_sha("llm")}
            if mllm is not None and (cfg.llm.tokenizer == "builtin:words" or components["llm"]["source"]
                                     .startswith("bundled:")):
                mllm.tokenizer.save_pretrained(tmp / "base" / "tokenizer")
                components["tokenizer"] = _bundled(tmp, "base/tokenizer")
        if cfg.vision.enabled:
            if mllm is not None and (not cfg.vision.source or cfg.vision.trainable or bundle_base):
                mllm.vision.encoder.save_pretrained(tmp / "base" / "vision", safe_serialization=True)
                components["vision"] = _bundled(tmp, "base/vision")
            else:
                components["vision"] = {"source": cfg.vision.source, "sha256": ann.component_sha("vision")}
        for p in sorted((tmp / "base").rglob("*")) if (tmp / "base").exists() else []:
            if p.is_file():
                files[p.relative_to(tmp).as_posix()] = p.read_bytes()
        manifest = {
            "format": FORMAT, "format_version": FORMAT_VERSION,
            "name": cfg.name, "version": cfg.version,
            "architecture": arch, "components": components, "parts": parts,
            "metrics": dict(metrics or {}),
            "created_at": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        }
        if fresh:
            manifest["fresh_parts"] = fresh
        manifest["licences"] = to_dicts(derive_licences(manifest))
        model_id = compute_model_id(manifest)
        manifest["model_id"] = model_id
        storage.makedirs(uri)
        for rel, data in files.items():
            storage.write_bytes(storage.join(uri, rel), data)
        storage.write_bytes(storage.join(uri, MANIFEST), json.dumps(manifest, indent=2, sort_keys=True).encode())
        return model_id
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _trained_tensors(mllm: Any, lora: bool) -> dict[str, Mapping[str, Any]]:
    """The state of every trained part of ``mllm`` (its part modules, plus the LLM's LoRA adapters)."""
    from model.llm import lora_state_dict

    tensors = {name: module.state_dict() for name, module in mllm.part_modules().items()}
    if lora:
        tensors["lora"] = lora_state_dict(mllm.llm)
    return tensors


def _add_parts(tensors: Mapping[str, Mapping[str, Any]], files: dict[str, bytes],
               parts: dict[str, dict[str, Any]]) -> None:
    for name, sd in tensors.items():
        data = _safetensors_bytes(sd)
        files[f"{name}.safetensors"] = data
        parts[name] = {"file": f"{name}.safetensors", "sha256": sha256_bytes(data), "size": len(data),
                       "tensors": len(sd), "parameters": int(sum(v.numel() for v in sd.values()))}


def _bundled(tmp: Path, rel: str) -> dict[str, Any]:
    """Component meta of a base saved under ``tmp/rel``: sha256 over its files and of each file (so a
    changed file is named when the directory is verified)."""
    files = file_sha256s(tmp / rel)
    return {"source": f"bundled:{rel}", "sha256": tree_sha256(files=files), "files": files}


def _save_vlm_parts(ann: FacialAnnotator, files: dict[str, bytes], parts: dict[str, dict[str, Any]],
                    components: dict[str, dict[str, Any]]) -> list[str]:
    """A pretrained-VLM model's trained parts (LoRA adapters of its language model, the projector)
    and its base as component ``vlm`` (URI, sha256 overall and per file, architecture; never the
    weights). Parts the model has not trained yet are not built to be saved: a directory that
    ``mien model init`` wrote lists them as ``fresh_parts``, which start from their initialisation
    when loaded (LoRA B = 0: the base's own scores). Returns the fresh parts."""
    from model.vlm.base import base_component, open_base
    from workflows.core.storage import absolute

    cfg = ann.config
    fresh = [] if ann.llm_loaded else [p for p in ann.manifest.get("fresh_parts", []) if p in cfg.vlm.trained_parts]
    wanted = [p for p in cfg.vlm.trained_parts if p not in fresh]
    mllm = ann.mllm if wanted else None
    if mllm is not None:
        _add_parts(_trained_tensors(mllm, cfg.vlm.lora.enabled), files, parts)
    source = absolute(cfg.vlm.source)  # the manifest is read from other working directories
    meta = ann.manifest.get("components", {}).get("vlm") or {}
    if meta.get("files") and absolute(meta.get("uri") or meta.get("source", "")) == source:
        component = {k: v for k, v in meta.items() if k != "uri"}  # hashed when it was opened
    else:
        component = base_component(source, getattr(mllm, "base_dir", None) or open_base(cfg.vlm.source))
    components["vlm"] = {**component, "source": source}
    return fresh


def _has_trained_parts(cfg: ModelConfig) -> bool:
    return bool(cfg.face_prior.enabled or cfg.vision.enabled or cfg.fim.local_clue or cfg.clip.frames)


# --------------------------------------------------------------------------- loading

def load_state_strict(module: Any, tensors: Mapping[str, Any], part: str) -> None:
    """``load_state_dict`` that names every missing/unexpected key and shape difference."""
    expected = module.state_dict()
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    shapes = [f"{k}: saved {tuple(tensors[k].shape)} vs built {tuple(expected[k].shape)}"
              for k in expected if k in tensors and tuple(tensors[k].shape) != tuple(expected[k].shape)]
    if missing or unexpected or shapes:
        raise ArchitectureMismatchError(_mismatch_text(part, missing, unexpected, shapes))
    module.load_state_dict(dict(tensors), strict=True)


def _mismatch_text(part: str, missing: Sequence[str], unexpected: Sequence[str], shapes: Sequence[str]) -> str:
    bits = []
    if missing:
        bits.append(f"missing {len(missing)} tensor(s) e.g. {missing[:3]}")
    if unexpected:
        bits.append(f"unexpected {len(unexpected)} e.g. {unexpected[:3]}")
    if shapes:
        bits.append(f"shape differences e.g. {shapes[:3]}")
    return (f"part {part!r} does not fit the architecture in {MANIFEST}: " + "; ".join(bits)
            + ". The manifest's architecture section must be the config the part was trained with")


def load_parts_into(mllm: FacialMLLM, blobs: Mapping[str, bytes], fresh: Sequence[str] = ()) -> None:
    """Load verified safetensors blobs into ``mllm`` (strict: architecture mismatches raise).
    ``fresh``: parts the manifest says start from their initialisation (``fresh_parts``)."""
    from safetensors.torch import load

    from model.llm import load_lora_state_dict, lora_state_dict

    modules = mllm.part_modules()
    lora = mllm.cfg.llm.lora.enabled or (mllm.cfg.is_vlm and mllm.cfg.vlm.lora.enabled)
    expected = set(modules) | ({"lora"} if lora else set())
    absent = sorted(expected - set(blobs) - set(fresh))
    if absent:
        raise MissingPartError(f"the architecture has trained part(s) {absent} but {MANIFEST} lists none for them")
    extra = sorted(set(blobs) - expected)
    if extra:
        raise ArchitectureMismatchError(f"{MANIFEST} lists part(s) {extra} that the architecture does not have")
    for name, data in blobs.items():
        tensors = load(data)
        if name == "lora":
            current = lora_state_dict(mllm.llm)
            missing = sorted(set(current) - set(tensors))
            unexpected = sorted(set(tensors) - set(current))
            shapes = [f"{k}: saved {tuple(tensors[k].shape)} vs built {tuple(current[k].shape)}"
                      for k in current if k in tensors and tensors[k].shape != current[k].shape]
            if missing or unexpected or shapes:
                raise ArchitectureMismatchError(_mismatch_text("lora", missing, unexpected, shapes))
            load_lora_state_dict(mllm.llm, {k: v.to(current[k].dtype) for k, v in tensors.items()})
        else:
            ref = modules[name].state_dict()
            load_state_strict(modules[name], {k: v.to(ref[k].dtype) if k in ref else v for k, v in tensors.items()},
                              name)


def apply_overrides(arch: Mapping[str, Any], overrides: Sequence[str] | Mapping[str, Any] | None) -> dict[str, Any]:
    """Architecture dict with ``key=value`` strings or a nested/dotted mapping merged in."""
    from workflows.core.config import deep_merge, parse_overrides

    if not overrides:
        return dict(arch)
    if isinstance(overrides, Mapping):
        nested: dict[str, Any] = {}
        for k, v in overrides.items():
            node = nested
            parts = k.split(".")
            for p in parts[:-1]:
                node = node.setdefault(p, {})
            node[parts[-1]] = v
        return deep_merge(arch, nested)
    return deep_merge(arch, parse_overrides(overrides))


def flat_overrides(overrides: Sequence[str] | Mapping[str, Any] | None) -> dict[str, Any]:
    """Top-level-key -> value view of overrides (for the model id)."""
    if not overrides:
        return {}
    if isinstance(overrides, Mapping):
        items = list(overrides.items())
    else:
        items = [tuple(o.split("=", 1)) for o in overrides]
    out: dict[str, Any] = {}
    for k, v in items:
        out.setdefault(k.split(".", 1)[0], {})[k] = v
    return out


__all__ = ["apply_overrides", "flat_overrides", "load_parts_into", "load_state_strict", "save_model"]
