"""The model directory format: ``mien_model.json`` + safetensors. Resolve, read, verify.

Layout (local path or ``s3://`` prefix; MLflow ``models:/name@alias`` resolves to one)::

    mien_model.json          format, name, version, architecture (ModelConfig), components, parts, licences
    face_prior.safetensors   trained parts, one file each (face_prior, fim, frames, lora)
    fim.safetensors
    lora.safetensors
    base/llm/                only for base weights that have no other source (random init,
    base/tokenizer/           full fine-tune): config.json + *.safetensors / tokenizer.json

``components`` names where each base component comes from and its sha256: a pinned asset
(``asset:gemma3_270m``: the GGUF's sha256), a directory (sha256 over its files), or
``bundled:<relative dir>``. ``parts`` lists every trained file with its sha256. ``licences`` gives
every component's licence and whether it allows commercial use (``workflows.core.licences``;
:func:`model_licences` derives it for a directory saved before it was recorded).

Nothing is ever unpickled: ``.bin``/``.pt``/``.pkl`` checkpoints are refused with a message
that says how to convert them. A missing part, a checksum mismatch and an architecture
mismatch each raise their own error naming the file and the fix.

Every file is read only once it is known to be a regular file (a symlink counts as what it points
at): a FIFO, device or socket in its place is refused by name instead of blocking the reader
forever. A part's size is checked against the manifest's ``size`` before a byte is read, so a
huge (e.g. sparse) file in its place is refused, not loaded into memory; checksums are streamed.

This module knows the format and needs no torch: it finds a directory (:func:`resolve_model_uri`),
reads its manifest and checks every file against it (:func:`verify_parts`, :func:`verify_component`;
``model.verify_model_files`` runs them all on a driver before workers start). Writing weights into a
directory and loading them into a model is ``model.checkpoint``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import stat
from collections.abc import Mapping
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from model.config import GenerationConfig
    from workflows.core.licences import Component

MANIFEST = "mien_model.json"
FORMAT = "mien-model"
FORMAT_VERSION = 1
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".pyt", ".joblib")
# Run-time knobs that do not change what a model computes for scores.
_RUNTIME_KEYS = ("generation", "scoring")
_CHUNK = 1 << 20
_MANIFEST_MAX_BYTES = 16 << 20  # a manifest is kilobytes; anything this large is not one

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


def _not_regular(path: Path, mode: int, what: str) -> ModelDirError:
    kind = ("a FIFO (named pipe)" if stat.S_ISFIFO(mode) else "a character device" if stat.S_ISCHR(mode)
            else "a block device" if stat.S_ISBLK(mode) else "a socket" if stat.S_ISSOCK(mode)
            else "a directory" if stat.S_ISDIR(mode) else "not a regular file")
    return ModelDirError(f"{what}: {path} is {kind}, not a regular file; mien reads only regular files from a "
                         "model directory - replace it with the file itself (copy the complete directory again)")


def _stat_regular(path: Path, what: str) -> os.stat_result:
    """``stat`` of ``path`` (through symlinks), refused unless it is a regular file. Never opens it:
    opening a FIFO for reading blocks until a writer comes."""
    try:
        st = path.stat()
    except FileNotFoundError as e:
        target = f" (a symlink to {os.readlink(path)}, which does not exist)" if path.is_symlink() else ""
        raise MissingPartError(f"{what}: {path} is missing{target}; copy the complete directory again") from e
    if not stat.S_ISREG(st.st_mode):
        raise _not_regular(path, st.st_mode, what)
    return st


def _open_regular(path: Path, what: str) -> tuple[int, os.stat_result]:
    """A read-only descriptor of ``path`` and its ``fstat``, refused unless it is a regular file.
    Opened non-blocking, so a FIFO swapped in after the ``stat`` check cannot block either."""
    _stat_regular(path, what)
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise _not_regular(path, st.st_mode, what)
    return fd, st


def _stream_sha256(f: Any) -> str:
    h = hashlib.sha256()
    for chunk in iter(lambda: f.read(_CHUNK), b""):
        h.update(chunk)
    return h.hexdigest()


def read_verified(path: Path, meta: Mapping[str, Any], what: str) -> bytes:
    """The bytes of the regular file ``path`` after checking them against ``meta``'s ``size`` (before
    reading: a wrong size is refused unread) and ``sha256``. Without a recorded size (directories
    saved before sizes were) the hash is streamed first and the bytes read only for a match, so a
    huge file costs no memory either way."""
    fd, st = _open_regular(path, what)
    want = meta.get("sha256")
    size = meta.get("size")
    with os.fdopen(fd, "rb") as f:
        if size is not None and st.st_size != size:
            raise ChecksumError(f"{what}: {path.name} is {st.st_size} bytes, the manifest says {size} (size check; "
                                "not read); the file is truncated, padded or was replaced - copy the directory again")
        if size is None:
            got = _stream_sha256(f)
            if got != want:
                raise _checksum_error(path, what, got, want)
            f.seek(0)
            size = st.st_size
        data = f.read(size + 1)
    if len(data) != size:
        raise ChecksumError(f"{what}: {path.name} changed size while it was read ({len(data)} bytes, expected "
                            f"{size}); copy the directory again")
    got = sha256_bytes(data)
    if got != want:
        raise _checksum_error(path, what, got, want)
    return data


def _checksum_error(path: Path, what: str, got: str, want: Any) -> ChecksumError:
    return ChecksumError(f"{what}: {path.name} has sha256 {got}, the manifest says {want}; the file is corrupt "
                         "or was replaced - copy the directory again")


_INDEX_MIN_BYTES = 1 << 20  # smaller files are hashed every time (cheaper than the bookkeeping)


def file_sha256s(directory: str | os.PathLike[str]) -> dict[str, str]:
    """``relative path -> sha256`` of every file under ``directory`` (dotfiles and mien's
    ``mien_source.json`` note excluded), sorted by path. Anything there that is not a regular file
    (a FIFO, a device, a dangling symlink) raises :class:`ModelDirError` naming it: it would be
    loaded from later, and a FIFO would block that forever.

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
    for p in sorted(q for q in root.rglob("*") if not q.name.startswith(".") and not q.is_dir()):
        if p.name == "mien_source.json":
            continue
        st = _stat_regular(p, "model file")
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


DESCRIBE_TAG = "+describe:"


def described_model_id(model_id: str, generation: GenerationConfig) -> str:
    """``model_id`` with the description settings when generation is on
    (``<id>+describe:per_track/32tok``, ``+describe:fraction=0.1/32tok``): the scores are the
    model's, but rows with and without descriptions (or with other ones) must be told apart."""
    if not generation.enabled:
        return model_id
    mode = f"fraction={generation.fraction:g}" if generation.mode == "fraction" else generation.mode
    return f"{model_id}{DESCRIBE_TAG}{mode}/{generation.max_new_tokens}tok"


def base_model_id(model_id: str) -> str:
    """The model's own id without its description settings: what to compare to ask "the same model?"."""
    return model_id.split(DESCRIBE_TAG, 1)[0]


# ---------------------------------------------------------------------- resolution

def _cache_root() -> Path:
    from workflows.core.assets import cache_dir

    return cache_dir() / "models"


def materialize(uri: str) -> str:
    """A local directory with the contents of ``uri`` (local paths are returned as they are;
    ``s3://`` prefixes are downloaded once into the mien cache, file by file). A missing bucket or
    prefix, refused access and absent credentials raise :class:`ModelDirError` saying which."""
    from workflows.core import storage

    if not storage.is_remote(uri):
        return storage.strip_file_scheme(uri)
    try:
        return _download_prefix(uri)
    except FileNotFoundError as e:
        raise MissingPartError(f"model directory not found: {uri} (no such bucket, or nothing under that prefix); "
                               "check the URI, and AWS_ENDPOINT_URL for a non-AWS object store") from e
    except PermissionError as e:
        raise ModelDirError(f"cannot read {uri}: access denied ({e}); use credentials that may read that "
                            "bucket (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY or AWS_PROFILE)") from e
    except Exception as e:
        if not storage.missing_credentials(e):
            raise
        raise ModelDirError(f"cannot read {uri}: {storage.NO_CREDENTIALS}") from e


def _download_prefix(uri: str) -> str:
    from workflows.core import storage

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
    if not path.is_dir():  # a FIFO, device or socket: never opened
        raise MissingPartError(f"{uri} is not a directory; a model is a directory with {MANIFEST} (write one with "
                               "model.save_model) or a save_pretrained checkpoint")
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
    """A local copy of the model at MLflow URI ``uri``. A store, registered model, alias, version or
    run that does not exist raises :class:`MissingPartError` listing what does exist."""
    try:
        import mlflow
        from mlflow.exceptions import MlflowException
    except ImportError as e:  # pragma: no cover - mlflow is a core dependency
        raise ImportError("loading models:/ URIs needs mlflow: pip install 'mlflow>=3.17,<3.19'") from e
    from workflows.core.redact import redact
    from workflows.core.tracking import Registry, store_exists

    # MLFLOW_TRACKING_URI wins over a tracking URI an earlier job in this process left set globally
    tracking = os.environ.get("MLFLOW_TRACKING_URI") or mlflow.get_tracking_uri()
    where = f"the MLflow store {redact(tracking)}"
    fix = "set MLFLOW_TRACKING_URI (or the job's mlflow.tracking_uri) to the store the model is registered in"
    if not store_exists(tracking):  # opening a sqlite store that is not there would create an empty one
        raise MissingPartError(f"{uri}: there is no MLflow store at {redact(tracking)} (no such file); {fix}")
    source = uri
    try:
        if uri.startswith("models:/"):
            # MLflow's models:/ repository looks the version up in the global registry whatever it is
            # given, so the version is resolved here against ``tracking`` and its files fetched directly.
            registry = Registry(tracking, registry_uri=tracking)
            name, sep, alias = uri[len("models:/"):].rstrip("/").partition("@")
            version = ""
            if not sep:
                name, _, version = name.rpartition("/")
            if not name:
                raise MissingPartError(f"{uri} names no version or alias: give models:/{version}@ALIAS or "
                                       f"models:/{version}/VERSION ({registry.describe(version)})")
            found = registry.aliased_version(name, alias) if sep else registry.version(name, version)
            if found is None:
                raise MissingPartError(f"{uri} is not in {where}: {registry.describe(name)}. Name one that exists, "
                                       f"or {fix}")
            source = registry.client.get_model_version_download_uri(name, found.version)
        dest = _cache_root() / "mlflow" / sha256_bytes(f"{tracking}|{uri}".encode())[:16]
        if dest.exists():
            shutil.rmtree(dest)  # aliases move: always fetch what the alias points at now
        dest.mkdir(parents=True)
        return mlflow.artifacts.download_artifacts(artifact_uri=source, dst_path=str(dest), tracking_uri=tracking)
    except MlflowException as e:
        raise MissingPartError(f"{uri}: MLflow could not fetch it from {where} ({e.message}); {fix}") from e


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
    fd, st = _open_regular(path, MANIFEST)
    if st.st_size > _MANIFEST_MAX_BYTES:
        os.close(fd)
        raise ModelDirError(f"{path} is {st.st_size} bytes, too large for a manifest (at most {_MANIFEST_MAX_BYTES}); "
                            "the directory is damaged - copy it again, or write it with model.save_model")
    with os.fdopen(fd, "rb") as f:
        text = f.read(_MANIFEST_MAX_BYTES + 1)
    try:
        manifest = json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ModelDirError(f"{path} is not valid JSON: {e}") from e
    if not isinstance(manifest, dict):
        raise ModelDirError(f"{path} is not a JSON object; write the directory with model.save_model")
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
    """Every part file's bytes, after checking presence, suffix, confinement, that it is a regular
    file, its size (before reading it) and sha256 (:func:`read_verified`)."""
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
        out[name] = read_verified(path, meta, f"part {name!r}")
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


# ------------------------------------------------------------------------- licences

def model_licences(manifest: Mapping[str, Any], directory: str | None = None) -> list[Component]:
    """The licence of every component of the model: the manifest's ``licences`` (written by
    ``save_model``), or for a directory saved before they were recorded, :func:`derive_licences`."""
    from workflows.core.licences import from_dicts

    recorded = manifest.get("licences")
    if isinstance(recorded, list) and recorded:
        return from_dicts(recorded)
    return derive_licences(manifest, directory)


def derive_licences(manifest: Mapping[str, Any], directory: str | None = None) -> list[Component]:
    """The licences of a model's components, from what the manifest says they are: the face models every
    annotate run feeds it, each base component (a pinned asset: its licence; a base directory: its model
    card's ``license:``, also kept in component ``vlm``; a bundled base: the source it was fine-tuned from,
    or mien's own weights for a random init) and each trained part, which carries the licence of the base
    it was trained on (the most restrictive, for a composed model's LLM and vision tower)."""
    from workflows.core.licences import ORDER, OWN, Component, face_components

    arch = manifest.get("architecture") or {}
    out = face_components()
    bases: list[Component] = []
    for name, meta in (manifest.get("components") or {}).items():
        source = str(meta.get("source", ""))
        if "licence" in meta:
            licence = str(meta["licence"] or "")
        elif source.startswith("bundled:"):  # saved into the directory: the licence of where it came from
            section = arch.get("vision" if name == "vision" else "llm") or {}
            own = name == "tokenizer" and section.get("tokenizer") == "builtin:words"
            licence = OWN if own else _source_licence(str(section.get("source") or ""), directory)
        else:
            licence = _source_licence(source, directory)
        component = Component(name, source or "random init", licence)
        out.append(component)
        if name in ("llm", "vision", "vlm"):
            bases.append(component)
    vlm = [b for b in bases if b.component == "vlm"]
    base = min(vlm or bases, key=lambda b: ORDER.index(b.commercial)) if bases else None
    parts = manifest.get("parts") or {}
    for part in sorted(set(parts) | set(manifest.get("fresh_parts") or ())):
        file = (parts.get(part) or {}).get("file") or "not trained yet"
        out.append(Component(part, f"trained: {file}" + (f", on {base.component}" if base else ""),
                             base.licence if base else OWN))
    return out


def _source_licence(source: str, directory: str | None) -> str:
    """The licence of a base at ``source``: the pinned Gemma's; mien's own when there is none (random
    init); a local directory's model card; "" for a base not on this machine (not fetched to be read)."""
    from model.config import GEMMA_ASSET
    from workflows.core import storage
    from workflows.core.licences import OWN, asset_licence, card_licence

    if source == GEMMA_ASSET:
        return asset_licence("gemma3_270m_gguf")
    if not source:
        return OWN
    if storage.is_remote(source) or source.startswith(("models:/", "runs:/")):
        return ""
    path = Path(storage.strip_file_scheme(source))
    return card_licence(path if path.is_absolute() or directory is None else Path(directory) / path)


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
    "FORMAT", "FORMAT_VERSION", "MANIFEST", "PICKLE_SUFFIXES", "compute_model_id", "copy_tree", "derive_licences",
    "inside", "model_licences",
    "file_sha256s", "materialize", "read_manifest", "resolve_model_uri", "sha256_bytes", "tree_sha256",
    "read_verified", "verify_component", "verify_parts", "verify_tree",
]
