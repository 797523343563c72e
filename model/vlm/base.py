"""Plain Hugging Face VLM directories as models: recognise one, check it, describe it as a manifest.

A directory written by ``save_pretrained`` of an image-text-to-text model (``config.json``,
safetensors weights, processor and tokenizer files) is accepted wherever a mien model directory
is (``--model``: local, ``s3://`` or MLflow). It runs zero-shot: :func:`base_manifest` states it
as a mien manifest whose only component is the checkpoint itself, referenced by URI and sha256
(never copied), with ``prior_weight`` = :data:`ZERO_SHOT_PRIOR_WEIGHT`.

A tuned model directory (``mien model init --base``, ``mien train``) references its base the same
way: component ``vlm`` = the base's URI, sha256 over its files, every file's own sha256 (so a
changed base names the changed file) and the base's architecture (``model_type`` and language-model
shape, so trained parts are never put on another base); :func:`base_component` writes it and
:func:`verified_base` checks a base against it before anything is loaded.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

# Share of the calibrated face prior when a general VLM scores faces zero-shot. General VLMs read
# expressions only moderately before facial tuning (EmoLA/Face-LLaVA report large gains from
# LoRA); the prior is a dedicated expression classifier plus measured AU evidence, so neither
# is trusted alone: an even mix. A LoRA-tuned model directory sets its own value.
ZERO_SHOT_PRIOR_WEIGHT = 0.5

_WEIGHT_SUFFIXES_UNSAFE = (".bin", ".pt", ".pth", ".pkl", ".ckpt")


def is_hf_vlm_dir(directory: str | Path) -> bool:
    """A ``save_pretrained`` directory (``config.json``) that is not a mien model directory."""
    from model.model_dir import MANIFEST

    d = Path(directory)
    return (d / "config.json").is_file() and not (d / MANIFEST).exists()


def supported_model_types() -> list[str]:
    """``model_type`` values transformers loads with ``AutoModelForImageTextToText``."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES

    return sorted(MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES)


def check_base_dir(uri: str, directory: str | Path) -> dict[str, Any]:
    """The checkpoint's ``config.json`` after the checks that make loading it safe and possible:
    safetensors weights only (pickled weights are refused with the conversion command), and an
    architecture transformers loads as image-text-to-text."""
    from model.model_dir import UnsafeCheckpointError

    d = Path(directory)
    files = [p for p in d.rglob("*") if p.is_file()]
    pickled = sorted(p.name for p in files if p.name.lower().endswith(_WEIGHT_SUFFIXES_UNSAFE))
    if pickled:
        raise UnsafeCheckpointError(
            f"{uri} holds pickled weights ({', '.join(pickled[:3])}); mien never unpickles checkpoints. "
            "Convert it once, in an environment you trust: python -c \"from transformers import "
            "AutoModelForImageTextToText as M, AutoProcessor as P; m = M.from_pretrained('SRC'); "
            "m.save_pretrained('DST', safe_serialization=True); P.from_pretrained('SRC').save_pretrained('DST')\" "
            "and delete the .bin files")
    if not any(p.name.endswith(".safetensors") for p in files):
        from model.model_dir import MissingPartError

        raise MissingPartError(f"{uri} has a config.json but no *.safetensors weights")
    config = json.loads((d / "config.json").read_text())
    model_type = config.get("model_type", "")
    supported = supported_model_types()
    if model_type not in supported:
        raise ValueError(f"{uri}: model_type {model_type!r} is not an image-text-to-text architecture "
                         f"transformers can load; supported: {', '.join(supported)}")
    return config


def base_manifest(uri: str, directory: str | Path) -> dict[str, Any]:
    """A mien manifest for running the checkpoint at ``uri`` (materialized at ``directory``) zero-shot."""
    from model.model_dir import FORMAT, FORMAT_VERSION

    config = check_base_dir(uri, directory)
    name = Path(str(uri).rstrip("/")).name or "vlm"
    return {
        "format": FORMAT, "format_version": FORMAT_VERSION, "name": name, "version": "zeroshot",
        "architecture": {"name": name, "llm": {"enabled": False},
                         "vlm": {"source": uri, "family": "auto"},
                         "prior_weight": ZERO_SHOT_PRIOR_WEIGHT},
        # verified as loaded (the materialized copy of ``uri``); ``uri`` is where it came from
        "components": {"vlm": {**base_component(uri, directory, config), "source": str(directory), "uri": uri}},
        "parts": {},
    }


def open_base(uri: str) -> str:
    """The local directory of the plain checkpoint at ``uri`` (local, ``s3://`` or MLflow; fetched
    into the mien cache when remote) after :func:`check_base_dir`."""
    from model.model_dir import ModelDirError, resolve_model_uri

    directory = resolve_model_uri(uri)
    if not is_hf_vlm_dir(directory):
        raise ModelDirError(f"vlm.source {uri} is a mien model directory; a base is a plain save_pretrained "
                            "checkpoint (start from a mien model with init_from instead)")
    check_base_dir(uri, directory)
    return directory


def architecture_of(config: dict[str, Any]) -> dict[str, Any]:
    """What trained parts depend on in a checkpoint's ``config.json``: ``model_type`` and the
    language model's shape (hidden size, layers, vocabulary)."""
    text = config.get("text_config") or config
    return {"model_type": config.get("model_type"),
            **{k: text[k] for k in ("hidden_size", "num_hidden_layers", "vocab_size") if k in text}}


def base_component(uri: str, directory: str | Path, config: dict[str, Any] | None = None) -> dict[str, Any]:
    """Component ``vlm`` of a model directory for the base at ``uri`` (materialized at
    ``directory``): where it is, sha256 over its files and of each file, its architecture, and its
    licence (its model card's ``license:``; kept here, since a remote base is not fetched to be read)."""
    from model.model_dir import file_sha256s, tree_sha256
    from workflows.core.licences import card_licence
    from workflows.core.storage import absolute

    config = json.loads((Path(directory) / "config.json").read_text()) if config is None else config
    files = file_sha256s(directory)
    arch = architecture_of(config)
    # a local path made absolute: the manifest is read from other working directories
    return {"source": absolute(uri), "sha256": tree_sha256(files=files), "files": files,
            "model_type": arch.pop("model_type"), "text": arch, "licence": card_licence(directory)}


def verified_base(source: str, meta: dict[str, Any]) -> str:
    """The local directory of the base at ``source`` after checking it is the base ``meta`` (a
    model directory's component ``vlm``) was saved with: the same architecture (else
    :class:`~model.model_dir.ArchitectureMismatchError` naming both), then the same files (else
    :class:`~model.model_dir.ChecksumError` naming the changed ones)."""
    from model.model_dir import ArchitectureMismatchError, verify_tree

    directory = open_base(source)
    got = architecture_of(json.loads((Path(directory) / "config.json").read_text()))
    saved = {"model_type": meta.get("model_type"), **(meta.get("text") or {})}
    differ = {k: (v, got.get(k)) for k, v in saved.items() if v is not None and got.get(k) != v}
    if differ:
        detail = ", ".join(f"{k} {a} vs {b}" for k, (a, b) in differ.items())
        raise ArchitectureMismatchError(
            f"this model's trained parts were made for the base {meta.get('source')} ({saved['model_type']}), "
            f"but vlm.source {source} is a {got.get('model_type')} checkpoint that differs ({detail}); "
            "point vlm.source at the base the model was trained on, or train a model for this base")
    verify_tree("vlm", meta, directory, source)
    return directory
