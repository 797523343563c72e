"""mien's facial MLLM: EMO-LLaMA / FEALLM style components, scoring, generation, load/save.

Entry points::

    from model import load_model, save_model, build_model
    m = load_model("default")               # or a local dir, s3://..., models:/name@alias
    out = m.annotate(batch)                 # fe_probs (B, 7), au_probs (B, 23), description
    mllm = build_model(cfg)                 # a FacialMLLM for training: collate -> forward -> loss
    init_from_base("ckpt/", "models/m")     # a model dir around a pretrained VLM (zero-shot or for LoRA)

Importing this package is cheap: torch and transformers load when a model is built.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from model.config import ModelConfig, config_from_dict, load_model_config

if TYPE_CHECKING:
    from model.annotator import FacialAnnotator
    from model.mllm import FacialMLLM

__all__ = ["ModelConfig", "build_model", "config_from_dict", "init_from_base", "load_model", "load_model_config",
           "open_model", "resolve_device", "save_model", "verify_model_files"]


def build_model(cfg: ModelConfig, device: str = "cpu", **kwargs: Any) -> FacialMLLM:
    """A :class:`model.mllm.FacialMLLM` for ``cfg``, or for a config with ``vlm.source`` the
    pretrained VLM with its trainable parts (see ``model.builder.build_model``)."""
    from model.builder import build_model as _build

    return _build(cfg, device=device, **kwargs)


def save_model(m: FacialAnnotator | FacialMLLM, uri: str, metrics: Mapping[str, float] | None = None,
               bundle_base: bool = False) -> str:
    """Write a model directory (``mien_model.json`` + safetensors) to ``uri``; returns the model id."""
    from model.checkpoint import save_model as _save

    return _save(m, uri, metrics=metrics, bundle_base=bundle_base)


def open_model(uri: str = "default") -> tuple[str | None, dict[str, Any]]:
    """The local directory (None for the default) and manifest of a model URI, nothing built.

    A mien model directory gives its ``mien_model.json`` (pickles refused); a plain Hugging Face
    VLM checkpoint gives a zero-shot manifest (:func:`model.vlm.base.base_manifest`: safetensors
    only, an architecture transformers loads, the checkpoint hashed)."""
    from model.default import default_manifest
    from model.model_dir import read_manifest, resolve_model_uri
    from model.vlm.base import base_manifest, is_hf_vlm_dir

    if uri == "default":
        return None, default_manifest()
    directory = resolve_model_uri(uri)
    return directory, base_manifest(uri, directory) if is_hf_vlm_dir(directory) else read_manifest(directory)


def verify_model_files(directory: str, manifest: Mapping[str, Any], vlm_source: str | None = None,
                       absent_ok: bool = False) -> None:
    """Check every file that loading the model at ``directory`` reads and that is on this machine:
    the parts and the components (a pinned asset, a bundled directory, a local base; the VLM base at
    ``vlm_source``, the architecture's once overrides are applied, default the manifest's).

    What a driver runs before any worker starts, so a bad file is one message naming it here instead
    of an error in every worker's constructor. A component on ``s3://`` or in MLflow is checked where
    a worker fetches it (a multi-GB base is not downloaded to the driver only to be hashed), and with
    ``absent_ok`` so is a local base path that is not on this machine (a cluster's nodes hold it)."""
    import os

    from model.model_dir import verify_component, verify_parts
    from model.vlm.base import is_hf_vlm_dir, verified_base
    from workflows.core import storage

    verify_parts(directory, manifest)
    if is_hf_vlm_dir(directory):
        return  # a plain checkpoint is its own manifest: hashed as it was opened, nothing to compare
    for name, meta in manifest.get("components", {}).items():
        source = (vlm_source or meta.get("source", "")) if name == "vlm" else meta.get("source", "")
        if storage.is_remote(source) or source.startswith(("models:/", "runs:/")):
            continue
        if absent_ok and not source.startswith(("asset:", "bundled:")) and not os.path.exists(source):
            continue
        if name == "vlm":
            verified_base(source, meta)
        else:
            verify_component(name, meta, directory)


def load_model(uri: str = "default", device: str = "cpu",
               overrides: Sequence[str] | Mapping[str, Any] | None = None) -> FacialAnnotator:
    """Load a model for annotation.

    ``uri``: ``"default"`` (the embedded offline model), a local directory (a mien model
    directory or a plain Hugging Face VLM checkpoint, run zero-shot), an ``s3://``
    prefix, or an MLflow ``models:/name@alias`` / ``models:/name/version`` / ``runs:/`` URI.
    ``overrides``: ``["generation.enabled=true", ...]`` or ``{"generation.enabled": True}``,
    applied to the saved architecture (validated; unknown keys raise).

    Checksums of every part are verified here; the MLLM itself is built now only if scores
    need it (``prior_weight < 1``) or generation is on, otherwise on first use."""
    from model.annotator import FacialAnnotator
    from model.checkpoint import apply_overrides, flat_overrides, load_parts_into
    from model.model_dir import (
        MANIFEST,
        compute_model_id,
        verify_component,
        verify_parts,
    )
    from model.vlm.base import is_hf_vlm_dir

    directory, manifest = open_model(uri)
    plain_vlm = directory is not None and is_hf_vlm_dir(directory)
    cfg = config_from_dict(apply_overrides(manifest["architecture"], overrides),
                           source=f"{uri} ({MANIFEST} architecture)")
    blobs = verify_parts(directory, manifest) if directory else {}
    components = manifest.get("components", {})
    verified = {name: verify_component(name, meta, directory or "")  # shipped with the model: check now
                for name, meta in components.items() if meta.get("source", "").startswith(("asset:", "bundled:"))}
    if plain_vlm:
        verified["vlm"] = directory  # hashed just now by base_manifest
    model_id = compute_model_id(manifest, flat_overrides(overrides))

    def build() -> FacialMLLM:
        from model.builder import build_model as _build  # torch and transformers load here

        if cfg.is_vlm:
            from model.vlm.base import verified_base
            from model.vlm.facial import build_vlm_model

            # the architecture's vlm.source (an override may move it) checked against the saved base
            base = verified["vlm"] if plain_vlm else verified_base(cfg.vlm.source, components.get("vlm", {}))
            mllm = build_vlm_model(cfg, base, device=resolve_device(device))
            load_parts_into(mllm, blobs, fresh=manifest.get("fresh_parts", ()))
            return mllm
        dirs = {name: verified[name] if name in verified else verify_component(name, meta, directory or "")
                for name, meta in components.items()}
        mllm = _build(cfg, device=resolve_device(device), llm_dir=dirs.get("llm"), vision_dir=dirs.get("vision"),
                      tokenizer_dir=dirs.get("tokenizer"))
        load_parts_into(mllm, blobs)
        return mllm

    annotator = FacialAnnotator(cfg, model_id, device=device, build=build, manifest=manifest)
    if cfg.uses_llm_for_scores or cfg.generation.enabled:
        _ = annotator.mllm
    return annotator


def init_from_base(base: str, output: str, config: str | None = None,
                   overrides: Sequence[str] = ()) -> str:
    """Write a model directory at ``output`` around the plain Hugging Face VLM checkpoint ``base``
    (local, ``s3://`` or MLflow); returns its model id.

    The architecture is the zero-shot one (:func:`model.vlm.base.base_manifest`) with the model
    config file ``config`` and ``key=value`` ``overrides`` merged in; ``vlm.source`` is ``base``.
    The base is referenced by URI and checksums, never copied, and nothing is loaded: with
    ``vlm.lora.enabled`` (or ``vlm.train_projector``) the directory lists those parts as
    ``fresh_parts``, which start from their initialisation (LoRA B = 0: the base's scores) until
    ``mien train`` (``init_from: OUTPUT``) trains them."""
    from model.annotator import FacialAnnotator
    from model.checkpoint import save_model as _save
    from model.model_dir import ModelDirError
    from model.vlm.base import is_hf_vlm_dir
    from workflows.core.config import deep_merge, parse_overrides, read_yaml

    directory, manifest = open_model(base)
    if directory is None or not is_hf_vlm_dir(directory):
        raise ModelDirError(f"--base {base} is a mien model, not a plain save_pretrained checkpoint; a base is "
                            "the Hugging Face directory itself")
    arch = deep_merge(manifest["architecture"], read_yaml(config) if config else {})
    arch = deep_merge(arch, parse_overrides(overrides))
    arch["vlm"] = {**arch.get("vlm", {}), "source": base}
    cfg = config_from_dict(arch, source=config or f"--base {base}")
    component = manifest["components"]["vlm"]
    init = {"components": {"vlm": component}, "fresh_parts": list(cfg.vlm.trained_parts)}
    return _save(FacialAnnotator(cfg, f"{cfg.name}-{cfg.version}+unsaved", manifest=init), output)


def resolve_device(device: str) -> str:
    """``auto`` (annotate's default) -> ``cuda`` when this process sees a GPU, else ``cpu``."""
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"
