"""Discover the videos and still images of a corpus: a local dir, an S3 prefix, or a manifest.

A manifest is a .parquet, .csv or .jsonl file with a ``uri`` column. Relative entries are
resolved against the manifest's directory; entries that escape it (with ``..`` or through a
symlink), name a ``file://`` path outside ``allowed_roots`` or use a scheme other than an
object store's (``http://`` would let a manifest make workers fetch internal URLs) are
rejected with a reason (never silently dropped); with ``allowed_roots`` set, every local
and remote entry must lie under one of them. In a local directory, media-named entries that
are not regular files (FIFOs, devices), symlinks that leave the directory or go nowhere, and
names that are not valid UTF-8 (they cannot be stored in Parquet) are rejected the same way
(``line`` 0); directory symlinks are not followed. ``video_id`` is derived from the URI and
the content fingerprint the listing gives for free (size + ETag on S3, size + mtime
locally), so it is stable for the same content at the same URI and changes when the file is
replaced.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import posixpath

from workflows.annotate.decode import IMAGE_SUFFIXES, VIDEO_SUFFIXES
from workflows.core import storage

MANIFEST_SUFFIXES = (".parquet", ".csv", ".jsonl")
OBJECT_STORE_SCHEMES = ("s3", "s3a", "gs", "gcs", "az", "abfs", "abfss")
MEDIA_SUFFIXES = VIDEO_SUFFIXES + IMAGE_SUFFIXES


class InputError(ValueError):
    """The input root itself is unusable (missing, unreadable, malformed manifest)."""


@dataclasses.dataclass(frozen=True)
class VideoSource:
    """One unit of work: a video (or a still image treated as a one-frame video)."""

    video_id: str
    uri: str
    size: int | None
    fingerprint: str


@dataclasses.dataclass(frozen=True)
class RejectedEntry:
    """A manifest line that was not accepted, and why."""

    entry: str
    line: int
    reason: str


def make_video_id(uri: str, fingerprint: str) -> str:
    return hashlib.sha256(f"{uri}\x00{fingerprint}".encode()).hexdigest()[:20]


def _fingerprint(info: dict) -> str:
    size = info.get("size")
    tag = info.get("ETag") or info.get("etag") or info.get("mtime") or info.get("LastModified") or ""
    return f"{size}:{str(tag).strip(chr(34))}"


def _source(uri: str, info: dict | None = None) -> VideoSource:
    if info is None:
        try:
            info = storage.info(uri)
        except OSError:  # missing, unreadable, name too long: the decode stage reports it per video
            info = {}
    fp = _fingerprint(info) if info else "missing"
    return VideoSource(make_video_id(uri, fp), uri, info.get("size") if info else None, fp)


def discover(input_uri: str, allowed_roots: list[str] | None = None
             ) -> tuple[list[VideoSource], list[RejectedEntry]]:
    """List the media under ``input_uri`` (or in the manifest it names), sorted by URI."""
    root = storage.strip_file_scheme(input_uri)
    lower = root.lower()
    if lower.endswith(MANIFEST_SUFFIXES):
        return _from_manifest(root, allowed_roots)
    if not storage.is_remote(root) and os.path.isdir(root):
        return _from_local_dir(root)
    try:
        uris = storage.list_files(root, MEDIA_SUFFIXES)
    except FileNotFoundError as e:
        raise InputError(f"input not found: {input_uri} (give a directory, an s3:// prefix, a media "
                         f"file or a manifest .parquet/.csv/.jsonl with a 'uri' column)") from e
    except PermissionError as e:
        raise InputError(f"input is not readable: {input_uri} ({e})") from e
    return [_source(u) for u in uris], []


def printable(name: str) -> str:
    """``name`` with undecodable bytes (``surrogateescape``) shown as ``\\xNN``: safe to print and store."""
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def _is_utf8(name: str) -> bool:
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _from_local_dir(root: str) -> tuple[list[VideoSource], list[RejectedEntry]]:
    """Regular media files under a local directory; irregular media-named entries rejected."""
    root = os.path.abspath(root)
    real_root = os.path.realpath(root)
    sources: list[VideoSource] = []
    rejected: list[RejectedEntry] = []
    found: list[tuple[str, str | None]] = []  # (path, reason to reject or None)

    def walk_error(e: OSError) -> None:
        if e.filename and os.path.abspath(e.filename) == root:
            raise InputError(f"input is not readable: {root} ({e})") from e
        found.append((str(e.filename or root), f"directory not readable ({e.strerror})"))

    # followlinks=False: a directory symlink is never entered (no loops, no escape from root).
    for dirpath, dirnames, filenames in os.walk(root, onerror=walk_error, followlinks=False):
        for name in filenames + [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]:
            path = os.path.join(dirpath, name)
            if not name.lower().endswith(MEDIA_SUFFIXES):
                continue
            found.append((path, _local_entry_problem(path, real_root)))
    for path, reason in sorted(found):
        if reason is None:
            sources.append(_source(path))
        else:
            rejected.append(RejectedEntry(printable(path), 0, reason))
    return sources, rejected


def _local_entry_problem(path: str, real_root: str) -> str | None:
    import stat

    if not _is_utf8(path):
        return "the file name is not valid UTF-8 (it cannot be stored in Parquet); rename the file"
    try:
        st = os.stat(path)  # follows symlinks
    except OSError as e:
        return f"cannot stat ({e.strerror}): a dangling or looping symlink, or an unreadable entry"
    if os.path.islink(path) and not _within(os.path.realpath(path), real_root):
        return f"a symlink to {printable(os.path.realpath(path))}, outside the input directory"
    if not stat.S_ISREG(st.st_mode):
        return "not a regular file (directory, FIFO, socket or device)"
    return None


def _read_manifest_uris(uri: str) -> list[str]:
    lower = uri.lower()
    try:
        if lower.endswith(".parquet"):
            import pyarrow.parquet as pq

            fs, path = storage.filesystem(uri)
            table = pq.read_table(path, filesystem=fs, columns=None)
            if "uri" not in table.column_names:
                raise InputError(f"manifest {uri} has no 'uri' column (columns: {table.column_names})")
            return [str(v) if v is not None else "" for v in table.column("uri").to_pylist()]
        # Undecodable bytes survive as surrogates so that one bad line is rejected, not the file.
        text = storage.read_bytes(uri).decode("utf-8", "surrogateescape")
    except FileNotFoundError as e:
        raise InputError(f"manifest not found: {uri}") from e
    if lower.endswith(".csv"):
        import csv
        import io

        reader = csv.DictReader(io.StringIO(text))
        if not reader.fieldnames or "uri" not in reader.fieldnames:
            raise InputError(f"manifest {uri} has no 'uri' column (header: {reader.fieldnames})")
        return [(row.get("uri") or "").strip() for row in reader]
    out = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            out.append("")
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise InputError(f"manifest {uri} line {n}: not valid JSON ({e.msg})") from e
        if not isinstance(obj, dict) or "uri" not in obj:
            raise InputError(f"manifest {uri} line {n}: an object with a 'uri' key is required")
        out.append(str(obj["uri"]))
    return out


def _within(path: str, root: str) -> bool:
    path, root = path.rstrip("/"), root.rstrip("/")
    return path == root or path.startswith(root + "/")


def _from_manifest(manifest: str, allowed_roots: list[str] | None
                   ) -> tuple[list[VideoSource], list[RejectedEntry]]:
    base = manifest.rsplit("/", 1)[0] if "/" in manifest else "."
    remote_base = storage.is_remote(manifest)
    if not remote_base:
        base = os.path.dirname(os.path.abspath(manifest))
    roots = [storage.strip_file_scheme(r) for r in (allowed_roots or [])]
    roots = [r if storage.is_remote(r) else os.path.realpath(r) for r in roots]
    sources: list[VideoSource] = []
    rejected: list[RejectedEntry] = []
    seen: set[str] = set()
    # A CSV header is line 1, so data lines start at 2; parquet rows are numbered from 1.
    offset = 2 if manifest.lower().endswith(".csv") else 1
    for i, entry in enumerate(_read_manifest_uris(manifest)):
        line = i + offset
        if not entry:
            rejected.append(RejectedEntry(entry, line, "empty uri"))
            continue
        if "\x00" in entry:
            rejected.append(RejectedEntry(printable(entry), line, "uri contains a NUL byte"))
            continue
        if not _is_utf8(entry):
            rejected.append(RejectedEntry(printable(entry), line, "uri is not valid UTF-8"))
            continue
        raw = storage.strip_file_scheme(entry)
        if storage.is_remote(raw):
            uri = raw
            scheme = raw.split("://", 1)[0].lower()
            if scheme not in OBJECT_STORE_SCHEMES:
                # http(s):// and the like would let a manifest make the workers fetch internal
                # URLs (cloud metadata endpoints); mien reads files and object stores only.
                reason = (f"unsupported scheme {scheme!r}: entries are local paths or "
                          f"{', '.join(OBJECT_STORE_SCHEMES)} URIs")
                rejected.append(RejectedEntry(entry, line, reason))
                continue
            if roots and not any(_within(uri, r) for r in roots):
                rejected.append(RejectedEntry(entry, line, f"outside the allowed roots {roots}"))
                continue
        elif remote_base:
            if os.path.isabs(raw):
                rejected.append(RejectedEntry(entry, line, "a local absolute path in a remote manifest"))
                continue
            joined = posixpath.normpath(posixpath.join(base.split("://", 1)[1], raw))
            if not _within(joined, base.split("://", 1)[1]):
                rejected.append(RejectedEntry(entry, line, "path escapes the manifest's directory ('..')"))
                continue
            uri = f"{base.split('://', 1)[0]}://{joined}"
        else:
            if not os.path.isabs(raw):
                joined = os.path.normpath(os.path.join(base, raw))
                if not _within(joined, base):
                    rejected.append(RejectedEntry(entry, line, "path escapes the manifest's directory ('..')"))
                    continue
                uri = joined
            else:
                uri = os.path.normpath(raw)
            real = os.path.realpath(uri)
            allowed = roots or [os.path.realpath(base)] if entry.startswith("file://") or roots else None
            if allowed is not None and not any(_within(real, r) for r in allowed):
                rejected.append(RejectedEntry(entry, line, f"outside the allowed roots {allowed}"))
                continue
            if allowed is None and not os.path.isabs(raw) and not _within(real, os.path.realpath(base)):
                reason = ("path escapes the manifest's directory through a symlink (list its target in "
                          "ingest.allowed_roots)")
                rejected.append(RejectedEntry(entry, line, reason))
                continue
        if not uri.lower().endswith(MEDIA_SUFFIXES):
            rejected.append(RejectedEntry(entry, line, f"not a supported media suffix ({', '.join(MEDIA_SUFFIXES)})"))
            continue
        if uri in seen:
            rejected.append(RejectedEntry(entry, line, "duplicate entry"))
            continue
        seen.add(uri)
        sources.append(_source(uri))
    return sources, rejected
