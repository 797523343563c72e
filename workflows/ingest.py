"""Discover the videos and still images of a corpus: a local dir, an S3 prefix, or a manifest.

A manifest is a .parquet, .csv or .jsonl file with a ``uri`` column. Relative entries are
resolved against the manifest's directory; entries that escape it with ``..`` or name a
``file://`` path outside ``allowed_roots`` are rejected with a reason (never silently
dropped). ``video_id`` is derived from the URI and the content fingerprint the listing
gives for free (size + ETag on S3, size + mtime locally), so it is stable for the same
content at the same URI and changes when the file is replaced.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import posixpath

from workflows import storage
from workflows.decode import IMAGE_SUFFIXES, VIDEO_SUFFIXES

MANIFEST_SUFFIXES = (".parquet", ".csv", ".jsonl")
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
        except FileNotFoundError:
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
    try:
        uris = storage.list_files(root, MEDIA_SUFFIXES)
    except FileNotFoundError as e:
        raise InputError(f"input not found: {input_uri} (give a directory, an s3:// prefix, a media "
                         f"file or a manifest .parquet/.csv/.jsonl with a 'uri' column)") from e
    except PermissionError as e:
        raise InputError(f"input is not readable: {input_uri} ({e})") from e
    return [_source(u) for u in uris], []


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
        text = storage.read_text(uri)
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
    roots = [r if storage.is_remote(r) else os.path.abspath(r) for r in roots]
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
            rejected.append(RejectedEntry(entry, line, "uri contains a NUL byte"))
            continue
        raw = storage.strip_file_scheme(entry)
        if storage.is_remote(raw):
            uri = raw
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
            allowed = roots or [base] if entry.startswith("file://") or roots else None
            if allowed is not None and not any(_within(real, r) for r in allowed):
                rejected.append(RejectedEntry(entry, line, f"outside the allowed roots {allowed}"))
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
