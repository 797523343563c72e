"""The model directory: ``mien_model.json`` + safetensors. Save, resolve, verify, load.

Layout (local path or ``s3://`` prefix; MLflow ``models:/name@alias`` resolves to one)::

    mien_model.json          format, name, version, architecture (ModelConfig), components, parts
    face_prior.safetensors   trained parts, one file each (face_prior, fim, frames, lora)
    fim.safetensors
    lora.safetensors
    base/llm/                only for base weights that have no other source (random init,
    base/tokenizer/           full fine-tune): config.json + *.safetensors / tokenizer.json

``components`` names where each base component comes from and its sha256: a pinned asset
(``asset:gemma3_270m``: the GGUF's sha256), a directory (sha256 over its files), or
``bundled:<relative dir>``. ``parts`` lists every trained file with its sha256.

Nothing is ever unpickled: ``.bin``/``.pt``/``.pkl`` checkpoints are refused with a message
that says how to convert them. A missing part, a checksum mismatch and an architecture
mismatch each raise their own error naming the file and the fix.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from model.config import ModelConfig, config_to_dict

if TYPE_CHECKING:
    from model.annotator import FacialAnnotator
    from model.mllm import FacialMLLM

log = logging.getLogger(__name__)

MANIFEST = "mien_model.json"
FORMAT = "mien-model"
FORMAT_VERSION = 1
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".pyt", ".joblib")
# Run-time knobs that do not change what a model computes for scores.
_RUNTIME_KEYS = ("generation", "scoring")


class ModelDirError(RuntimeError):
    """A model directory that cannot be used; subclasses say why."""


class MissingPartError(ModelDirError):
    """A file the manifest lists (or the manifest itself) is absent."""


class ChecksumError(ModelDirError):
    """A file or component whose sha256 differs from the manifest."""


class ArchitectureMismatchError(ModelDirError):
    """Saved tensors that do not fit the architecture the manifest describes."""


class UnsafeCheckpointError(ModelDirError):
    """A pickled checkpoint; mien never unpickles files it is given."""


# ------------------------------------------------------------------------- hashing

def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | os.PathLike[str]) -> str:
    from workflows.core.assets import sha256_file as _sha

    return _sha(path)


def tree_sha256(directory: str | os.PathLike[str]) -> str:
    """sha256 over ``relative path + file sha256`` of every file under ``directory`` (sorted)."""
    root = Path(directory)
    lines = []
    for p in sorted(q for q in root.rglob("*") if q.is_file() and not q.name.startswith(".")):
        if p.name == "mien_source.json":
            continue
        lines.append(f"{p.relative_to(root).as_posix()}:{sha256_file(p)}")
    return sha256_bytes("\n".join(lines).encode())


def compute_model_id(manifest: Mapping[str, Any], overrides: Mapping[str, Any] | None = None) -> str:
    """``<name>-<version>+<sha8>``: sha over architecture, components, part checksums and any
    load-time overrides that change scores (generation/scoring knobs excluded)."""
    core = {
        "architecture": {k: v for k, v in manifest["architecture"].items() if k not in _RUNTIME_KEYS},
        "components": {k: v.get("sha256") for k, v in manifest.get("components", {}).items()},
        "parts": {k: v.get("sha256") for k, v in manifest.get("parts", {}).items()},
    }
    scoring_overrides = {k: v for k, v in (overrides or {}).items() if k not in _RUNTIME_KEYS}
    if scoring_overrides:
        core["overrides"] = scoring_overrides
    digest = sha256_bytes(json.dumps(core, sort_keys=True, default=str).encode())[:8]
    return f"{manifest.get('name', 'mien')}-{manifest.get('version', 'v1')}+{digest}"


# ---------------------------------------------------------------------- resolution

def _cache_root() -> Path:
    from workflows.core.assets import cache_dir

    return cache_dir() / "models"


def materialize(uri: str) -> str:
    """A local directory with the contents of ``uri`` (local paths are returned as they are;
    ``s3://`` prefixes are downloaded once into the mien cache, file by file)."""
    from workflows.core import storage

    if not storage.is_remote(uri):
        return storage.strip_file_scheme(uri)
    dest = _cache_root() / "remote" / sha256_bytes(uri.rstrip("/").encode())[:16]
    base = uri.rstrip("/")
    for file_uri in storage.list_files(base):
        rel = file_uri[len(base):].lstrip("/")
        target = inside(str(dest), rel, f"object {file_uri}")  # an S3 key may hold '..'
        size = storage.info(file_uri).get("size")
        if target.exists() and (size is None or target.stat().st_size == size):
            continue
        storage.write_bytes(str(target), storage.read_bytes(file_uri))
    return str(dest)


def _refuse_pickle_path(path: str) -> None:
    if path.lower().endswith(PICKLE_SUFFIXES):
        raise UnsafeCheckpointError(
            f"{path} is a pickled checkpoint; mien never unpickles a file it is given (it can run code). "
            "Convert it once in a trusted environment: build the model, load the weights there, and "
            "write a model directory with model.save_model(model, DIR) (safetensors + mien_model.json)")


def resolve_model_uri(uri: str) -> str:
    """Local directory holding ``mien_model.json`` for a local path, ``s3://`` prefix, or MLflow
    ``models:/name@alias`` / ``models:/name/version`` / ``runs:/id/path`` URI."""
    _refuse_pickle_path(uri)
    if uri.startswith(("models:/", "runs:/")):
        local = _download_mlflow(uri)
    else:
        local = materialize(uri)
    path = Path(local)
    if path.is_file():
        if path.name == MANIFEST:
            return str(path.parent)
        raise MissingPartError(f"{uri} is a file; a mien model is a directory with {MANIFEST} "
                               "(write one with model.save_model)")
    if not path.exists():
        raise MissingPartError(f"model directory not found: {uri}")
    if not (path / MANIFEST).exists():
        found = [p for p in path.rglob(MANIFEST)]
        if len(found) == 1:
            return str(found[0].parent)
        pickled = [p.name for p in path.iterdir() if p.name.lower().endswith(PICKLE_SUFFIXES)]
        if pickled:
            raise UnsafeCheckpointError(f"{uri} holds pickled weights {pickled} and no {MANIFEST}; mien never "
                                        "unpickles checkpoints. Convert them with model.save_model in a trusted "
                                        "environment")
        raise MissingPartError(f"{uri} has no {MANIFEST}: not a mien model directory")
    return str(path)


def _download_mlflow(uri: str) -> str:
    try:
        import mlflow
    except ImportError as e:  # pragma: no cover - mlflow is a core dependency
        raise ImportError("loading models:/ URIs needs mlflow: pip install 'mlflow>=3.17,<3.19'") from e
    dest = _cache_root() / "mlflow" / sha256_bytes(f"{mlflow.get_tracking_uri()}|{uri}".encode())[:16]
    if dest.exists():
        shutil.rmtree(dest)  # aliases move: always fetch what the alias points at now
    dest.mkdir(parents=True)
    return mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(dest))


def log_model_dir(directory: str, artifact_path: str = "model", registered_model_name: str | None = None,
                  alias: str | None = None) -> str:
    """Log a model directory as artifacts of the active MLflow run (one is started if none is
    active) and optionally register it (with ``alias``). Returns the loadable URI:
    ``models:/name@alias`` / ``models:/name/version``, or ``runs:/<id>/<artifact_path>``."""
    import mlflow

    active = mlflow.active_run()
    run = active or mlflow.start_run()
    try:
        mlflow.log_artifacts(materialize(directory), artifact_path=artifact_path)
        uri = f"runs:/{run.info.run_id}/{artifact_path}"
        if not registered_model_name:
            return uri
        from mlflow import MlflowClient

        client = MlflowClient()
        try:
            client.get_registered_model(registered_model_name)
        except Exception:  # noqa: BLE001 - "does not exist" has no dedicated exception type
            client.create_registered_model(registered_model_name)
        source = f"{run.info.artifact_uri.rstrip('/')}/{artifact_path}"
        mv = client.create_model_version(registered_model_name, source=source, run_id=run.info.run_id)
        if alias:
            client.set_registered_model_alias(registered_model_name, alias, mv.version)
            return f"models:/{registered_model_name}@{alias}"
        return f"models:/{registered_model_name}/{mv.version}"
    finally:
        if active is None:
            mlflow.end_run()


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
    from model.llm import lora_state_dict, save_base_pretrained
    from workflows.core import storage

    ann = m if isinstance(m, FacialAnnotator) else FacialAnnotator.from_mllm(m)
    cfg = ann.config
    arch = config_to_dict(cfg)
    tmp = Path(tempfile.mkdtemp(prefix="mien-save-"))
    files: dict[str, bytes] = {}
    parts: dict[str, dict[str, Any]] = {}
    components: dict[str, dict[str, Any]] = {}
    try:
        needs_llm = bool(cfg.llm.enabled and (not cfg.llm.source or cfg.llm.trainable or cfg.llm.lora.enabled
                                              or bundle_base or ann.llm_loaded or _has_trained_parts(cfg)))
        mllm = ann.mllm if needs_llm else None
        if mllm is not None:
            tensors = {name: module.state_dict() for name, module in mllm.part_modules().items()}
            if cfg.llm.lora.enabled:
                tensors["lora"] = lora_state_dict(mllm.llm)
            for name, sd in tensors.items():
                data = _safetensors_bytes(sd)
                files[f"{name}.safetensors"] = data
                parts[name] = {"file": f"{name}.safetensors", "sha256": sha256_bytes(data), "tensors": len(sd),
                               "parameters": int(sum(v.numel() for v in sd.values()))}
        if cfg.llm.enabled:
            if mllm is not None and (not cfg.llm.source or cfg.llm.trainable or bundle_base):
                save_base_pretrained(mllm.llm, tmp / "base" / "llm")
                components["llm"] = {"source": "bundled:base/llm", "sha256": tree_sha256(tmp / "base" / "llm")}
            elif cfg.llm.source == GEMMA_ASSET:
                from workflows.core.assets import MULTIPART_ASSETS

                components["llm"] = {"source": GEMMA_ASSET, "sha256": MULTIPART_ASSETS["gemma3_270m_gguf"].sha256}
            else:
                components["llm"] = {"source": cfg.llm.source, "sha256": ann.component_sha("llm")}
            if mllm is not None and (cfg.llm.tokenizer == "builtin:words" or components["llm"]["source"]
                                     .startswith("bundled:")):
                mllm.tokenizer.save_pretrained(tmp / "base" / "tokenizer")
                components["tokenizer"] = {"source": "bundled:base/tokenizer",
                                           "sha256": tree_sha256(tmp / "base" / "tokenizer")}
        if cfg.vision.enabled:
            if mllm is not None and (not cfg.vision.source or cfg.vision.trainable or bundle_base):
                mllm.vision.encoder.save_pretrained(tmp / "base" / "vision", safe_serialization=True)
                components["vision"] = {"source": "bundled:base/vision", "sha256": tree_sha256(tmp / "base" / "vision")}
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
        model_id = compute_model_id(manifest)
        manifest["model_id"] = model_id
        storage.makedirs(uri)
        for rel, data in files.items():
            storage.write_bytes(storage.join(uri, rel), data)
        storage.write_bytes(storage.join(uri, MANIFEST), json.dumps(manifest, indent=2, sort_keys=True).encode())
        return model_id
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _has_trained_parts(cfg: ModelConfig) -> bool:
    return bool(cfg.face_prior.enabled or cfg.vision.enabled or cfg.fim.local_clue or cfg.clip.frames)


# --------------------------------------------------------------------------- loading

def read_manifest(directory: str) -> dict[str, Any]:
    path = Path(directory) / MANIFEST
    if not path.exists():
        raise MissingPartError(f"{directory} has no {MANIFEST}")
    # A pickle anywhere in the directory means it did not come from save_model (or was tampered
    # with): refuse the whole directory rather than trust that nothing will ever load it.
    for f in sorted(Path(directory).rglob("*")):
        if f.is_file():
            _refuse_pickle_path(str(f))
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ModelDirError(f"{path} is not valid JSON: {e}") from e
    if manifest.get("format") != FORMAT:
        raise ModelDirError(f"{path}: format is {manifest.get('format')!r}, expected {FORMAT!r}")
    if int(manifest.get("format_version", 0)) > FORMAT_VERSION:
        raise ModelDirError(f"{path}: format_version {manifest['format_version']} is newer than this mien "
                            f"({FORMAT_VERSION}); upgrade mien")
    if "architecture" not in manifest:
        raise ModelDirError(f"{path}: no 'architecture' section")
    return manifest


def inside(directory: str, rel: str, what: str) -> Path:
    """``directory / rel``, refused unless it stays inside ``directory`` once ``..`` and
    symlinks are resolved: a manifest from an untrusted place must not point the loader at
    files elsewhere on the machine (``../../x``, ``/abs/path``, a symlink out)."""
    root = Path(directory).resolve()
    path = (root / rel).resolve()
    if not rel or Path(rel).is_absolute() or not path.is_relative_to(root) or path == root:
        raise UnsafeCheckpointError(f"{what} is {rel!r}, which is not a path inside the model directory "
                                    f"{directory}; a model directory must be self-contained")
    return path


def verify_parts(directory: str, manifest: Mapping[str, Any]) -> dict[str, bytes]:
    """Every part file's bytes, after checking presence, suffix, confinement and sha256."""
    out = {}
    for name, meta in manifest.get("parts", {}).items():
        rel = meta.get("file", "")
        _refuse_pickle_path(rel)
        if not rel.endswith(".safetensors"):
            raise UnsafeCheckpointError(f"part {name!r} is {rel!r}; only .safetensors parts are loaded")
        path = inside(directory, rel, f"part {name!r}")
        if not path.exists():
            raise MissingPartError(f"part {name!r}: {rel} is missing from {directory} "
                                   f"(the manifest lists it; copy the complete directory)")
        data = path.read_bytes()
        got = sha256_bytes(data)
        if got != meta.get("sha256"):
            raise ChecksumError(f"part {name!r}: {rel} has sha256 {got}, the manifest says {meta.get('sha256')}; "
                                "the file is corrupt or was replaced - copy the directory again")
        out[name] = data
    return out


def verify_component(name: str, meta: Mapping[str, Any], directory: str) -> str | None:
    """Local directory of base component ``name`` after its checksum check (None for assets)."""
    from model.config import GEMMA_ASSET

    source = meta.get("source", "")
    if source == GEMMA_ASSET:
        from workflows.core.assets import MULTIPART_ASSETS

        pinned = MULTIPART_ASSETS["gemma3_270m_gguf"].sha256
        if meta.get("sha256") != pinned:
            raise ChecksumError(f"component {name!r}: manifest pins sha256 {meta.get('sha256')} for {source}, "
                                f"this mien ships {pinned}")
        return None
    if source.startswith("bundled:"):
        local = str(inside(directory, source.split(":", 1)[1], f"component {name!r}"))
    else:
        local = materialize(source)
    if not Path(local).is_dir():
        raise MissingPartError(f"component {name!r}: {source} not found (looked in {local})")
    got = tree_sha256(local)
    if meta.get("sha256") and got != meta["sha256"]:
        raise ChecksumError(f"component {name!r} at {source}: sha256 {got}, the manifest says {meta['sha256']}; "
                            "the base weights changed since this model was saved")
    return local


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


def load_parts_into(mllm: FacialMLLM, blobs: Mapping[str, bytes]) -> None:
    """Load verified safetensors blobs into ``mllm`` (strict: architecture mismatches raise)."""
    from safetensors.torch import load

    from model.llm import load_lora_state_dict, lora_state_dict

    modules = mllm.part_modules()
    expected = set(modules) | ({"lora"} if mllm.cfg.llm.lora.enabled else set())
    absent = sorted(expected - set(blobs))
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


def copy_tree(src: str, dst: str) -> None:
    """Copy a local model directory to ``dst`` (local or ``s3://``), manifest last."""
    from workflows.core import storage

    root = Path(src)
    files = sorted(p for p in root.rglob("*") if p.is_file())
    for p in files:
        if p.name != MANIFEST:
            storage.write_bytes(storage.join(dst, p.relative_to(root).as_posix()), p.read_bytes())
    storage.write_bytes(storage.join(dst, MANIFEST), (root / MANIFEST).read_bytes())


__all__ = [
    "ArchitectureMismatchError", "ChecksumError", "MissingPartError", "ModelDirError", "UnsafeCheckpointError",
    "MANIFEST", "save_model", "resolve_model_uri", "read_manifest", "log_model_dir", "materialize",
    "compute_model_id", "tree_sha256", "copy_tree",
]
