"""The model directory format: ``mien_model.json`` + safetensors. Resolve, read, verify.

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

This module knows the format and needs no torch: it finds a directory (:func:`resolve_model_uri`),
reads its manifest and checks every file against it (:func:`verify_parts`,
:func:`verify_component`). Writing weights into a directory and loading them into a model is
``model.checkpoint``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from collections.abc import Mapping
from pathlib import Path, PurePosixPath
from typing import Any

MANIFEST = "mien_model.json"
FORMAT = "mien-model"
FORMAT_VERSION = 1
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".pyt", ".joblib")
# Run-time knobs that do not change what a model computes for scores.
_RUNTIME_KEYS = ("generation", "scoring")

log = logging.getLogger(__name__)


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


_INDEX_MIN_BYTES = 1 << 20  # smaller files are hashed every time (cheaper than the bookkeeping)


def file_sha256s(directory: str | os.PathLike[str]) -> dict[str, str]:
    """``relative path -> sha256`` of every file under ``directory`` (dotfiles and mien's
    ``mien_source.json`` note excluded), sorted by path.

    Large files' hashes are remembered in the mien cache by (absolute path, size, mtime), as git's
    index does: a 15 GB 7B base is read once per machine, not at every actor start. A file
    rewritten in place changes its mtime and is hashed again."""
    from workflows.core.assets import sha256_file

    root = Path(directory)
    index_path = _cache_root() / "sha256-index.json"
    try:
        index = json.loads(index_path.read_text())
    except (OSError, ValueError):
        index = {}
    out, changed = {}, False
    for p in sorted(q for q in root.rglob("*") if q.is_file() and not q.name.startswith(".")):
        if p.name == "mien_source.json":
            continue
        st = p.stat()
        key = str(p.resolve())
        if st.st_size < _INDEX_MIN_BYTES:
            out[p.relative_to(root).as_posix()] = sha256_file(p)
            continue
        hit = index.get(key)
        if hit and hit.get("size") == st.st_size and hit.get("mtime_ns") == st.st_mtime_ns:
            sha = hit["sha256"]
        else:
            sha = sha256_file(p)
            index[key] = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": sha}
            changed = True
        out[p.relative_to(root).as_posix()] = sha
    if changed:
        try:  # concurrent writers: the last whole file wins, a lost entry is only hashed again
            index_path.parent.mkdir(parents=True, exist_ok=True)
            tmp = index_path.with_name(f".{index_path.name}.{os.getpid()}")
            tmp.write_text(json.dumps(index))
            os.replace(tmp, index_path)
        except OSError as e:
            log.debug("sha256 index not saved (%s)", e)
    return out


def tree_sha256(directory: str | os.PathLike[str] | None = None,
                files: Mapping[str, str] | None = None) -> str:
    """sha256 over ``relative path + file sha256`` of every file under ``directory`` (sorted by path
    components), or of ``files`` (:func:`file_sha256s` of it, when already computed)."""
    files = file_sha256s(directory) if files is None else files
    lines = [f"{rel}:{sha}" for rel, sha in sorted(files.items(), key=lambda kv: PurePosixPath(kv[0]).parts)]
    return sha256_bytes("\n".join(lines).encode())


def compute_model_id(manifest: Mapping[str, Any], overrides: Mapping[str, Any] | None = None) -> str:
    """``<name>-<version>+<sha8>``: sha over architecture, components, part checksums and any
    load-time overrides that change scores (generation/scoring knobs excluded)."""
    arch = {k: v for k, v in manifest["architecture"].items() if k not in _RUNTIME_KEYS}
    if isinstance(arch.get("vlm"), dict):  # where a VLM base lives is not what it is: its sha256 below is
        arch["vlm"] = {k: v for k, v in arch["vlm"].items() if k != "source"}
    core = {
        "architecture": arch,
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
    """Local directory holding ``mien_model.json`` (or a plain Hugging Face ``save_pretrained``
    checkpoint with ``config.json``) for a local path, ``s3://`` prefix, or MLflow
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
        if (path / "config.json").is_file():
            return str(path)  # a plain save_pretrained checkpoint (model.vlm.base checks it)
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
    # MLFLOW_TRACKING_URI wins over a tracking URI an earlier job in this process left set globally
    tracking = os.environ.get("MLFLOW_TRACKING_URI") or mlflow.get_tracking_uri()
    dest = _cache_root() / "mlflow" / sha256_bytes(f"{tracking}|{uri}".encode())[:16]
    if dest.exists():
        shutil.rmtree(dest)  # aliases move: always fetch what the alias points at now
    dest.mkdir(parents=True)
    source = uri
    if uri.startswith("models:/"):
        # MLflow's models:/ repository looks the version up in the global registry whatever it is
        # given, so the version is resolved here against ``tracking`` and its files fetched directly.
        client = mlflow.MlflowClient(tracking_uri=tracking, registry_uri=tracking)
        name, sep, alias = uri[len("models:/"):].rstrip("/").partition("@")
        if sep:
            version = client.get_model_version_by_alias(name, alias).version
        else:
            name, _, version = name.rpartition("/")
        source = client.get_model_version_download_uri(name, version)
    return mlflow.artifacts.download_artifacts(artifact_uri=source, dst_path=str(dest), tracking_uri=tracking)


# ------------------------------------------------------------------ reading, verifying

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
    verify_tree(name, meta, local, source)
    return local


def verify_tree(name: str, meta: Mapping[str, Any], local: str, source: str) -> None:
    """Check the files of component ``name`` (materialized at ``local`` from ``source``) against the
    manifest's ``sha256``; with per-file checksums (``files``) a mismatch names every changed,
    missing and new file."""
    if not meta.get("sha256"):
        return
    files = file_sha256s(local)
    got = tree_sha256(files=files)
    if got == meta["sha256"]:
        return
    saved = meta.get("files") or {}
    changed = [f"{rel} (sha256 {files[rel][:12]}…, saved {sha[:12]}…)" for rel, sha in saved.items()
               if rel in files and files[rel] != sha]
    missing = [rel for rel in saved if rel not in files]
    new = [rel for rel in files if saved and rel not in saved]
    detail = "; ".join(f"{what}: {', '.join(items)}" for what, items in
                       (("changed", changed), ("missing", missing), ("new", new)) if items)
    raise ChecksumError(f"component {name!r} at {source}: sha256 {got}, the manifest says {meta['sha256']}"
                        + (f" ({detail})" if detail else "")
                        + "; the base weights changed since this model was saved - restore the files "
                        "the model was trained on, or retrain on the new base")


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
    "FORMAT", "FORMAT_VERSION", "MANIFEST", "PICKLE_SUFFIXES", "compute_model_id", "copy_tree", "inside",
    "file_sha256s", "materialize", "read_manifest", "resolve_model_uri", "sha256_bytes", "tree_sha256",
    "verify_component", "verify_parts", "verify_tree",
]
