"""Discover the videos and still images of a corpus: a local dir, an S3 prefix, or a manifest.

A manifest is a .parquet, .csv or .jsonl file with a ``uri`` column. Relative entries are
resolved against the manifest's directory; entries that escape it (with ``..`` or through a
symlink), name a ``file://`` path outside ``allowed_roots`` or use a scheme other than an
object store's (``http://`` would let a manifest make workers fetch internal URLs) are
rejected with a reason (never silently dropped); with ``allowed_roots`` set, every local
and remote entry must lie under one of them. A line that cannot be read (not CSV or JSON, a
field over the csv module's size limit, JSON nested too deeply, a ``uri`` that is not a
string) and an object-store entry this process has no credentials for are rejected the same
way, on their own: the rest of the manifest runs. Only a problem with the whole manifest
(unreadable, no ``uri`` column or two of them) is an :class:`InputError`.

In a local directory, media-named entries that are not regular files (FIFOs, devices) and
symlinks that leave the directory or go nowhere are rejected the same way (``line`` 0);
directory symlinks are not followed; a name that is not valid UTF-8 is annotated under a
percent-encoded ``file://`` URI (``storage.local_uri``). Files that are not media are
counted per extension (:attr:`Discovery.skipped_non_media`), so none disappears unexplained.
``video_id`` is derived from the URI and the content fingerprint the listing gives for free
(size + ETag on S3, size + mtime locally), so it is stable for the same content at the same
URI and changes when the file is replaced.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import hashlib
import json
import os
import posixpath
import unicodedata
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np

from workflows.annotate.decode import IMAGE_SUFFIXES, VIDEO_SUFFIXES
from workflows.core import storage
from workflows.core.storage import NO_CREDENTIALS, missing_credentials

MANIFEST_SUFFIXES = (".parquet", ".csv", ".jsonl")
OBJECT_STORE_SCHEMES = ("s3", "s3a", "gs", "gcs", "az", "abfs", "abfss")
MEDIA_SUFFIXES = VIDEO_SUFFIXES + IMAGE_SUFFIXES
NO_EXTENSION = "(no extension)"


class InputError(ValueError):
    """The input root itself is unusable (missing, unreadable, malformed manifest)."""


@dataclasses.dataclass(frozen=True)
class VideoSource:
    """One unit of work: a video (or a still image treated as a one-frame video)."""

    video_id: str
    uri: str
    size: int | None
    fingerprint: str
    # The manifest line's other columns (name, value as text), carried into ``videos.meta``;
    # None for a directory or object-store listing.
    meta: tuple[tuple[str, str], ...] | None = None


@dataclasses.dataclass(frozen=True)
class RejectedEntry:
    """A manifest line (or, with ``line`` 0, a directory entry) that was not accepted, and why."""

    entry: str
    line: int
    reason: str


@dataclasses.dataclass
class Discovery:
    """What :func:`discover` found: the media to annotate, the entries refused with a reason,
    and the files passed over as not media, counted per lower-case extension (most frequent
    first; :data:`NO_EXTENSION` for none)."""

    sources: list[VideoSource]
    rejected: list[RejectedEntry]
    skipped_non_media: dict[str, int] = dataclasses.field(default_factory=dict)


class DiscoveryStream:
    """What :func:`iter_discover` finds, one source at a time, so that a corpus of millions of
    videos is never held as objects: iterate once; :attr:`rejected` and
    :attr:`skipped_non_media` are complete when the iteration has ended."""

    def __init__(self, sources: Iterator[VideoSource], rejected: list[RejectedEntry],
                 skipped_non_media: dict[str, int] | None = None):
        self._sources = sources
        self.rejected = rejected
        self.skipped_non_media = skipped_non_media or {}

    def __iter__(self) -> Iterator[VideoSource]:
        return self._sources


def make_video_id(uri: str, fingerprint: str) -> str:
    return hashlib.sha256(f"{uri}\x00{fingerprint}".encode()).hexdigest()[:20]


def _fingerprint(info: dict) -> str:
    size = info.get("size")
    tag = info.get("ETag") or info.get("etag") or info.get("mtime") or info.get("LastModified") or ""
    return f"{size}:{str(tag).strip(chr(34))}"


def _source(location: str, meta: tuple[tuple[str, str], ...] | None = None,
            info: dict | None = None) -> VideoSource:
    """The unit of work for a local path (named by ``local_media_uri``) or an object-store URI;
    ``info``: the listing's details when it gave them (else one request here). Raises what the
    object store raises when it has no credentials (see ``storage.missing_credentials``)."""
    uri = location if storage.is_remote(location) else storage.local_uri(location)
    if info is None:
        try:
            info = storage.info(location)
        except OSError:  # missing, unreadable, name too long: the decode stage reports it per video
            info = {}
    fp = _fingerprint(info) if info else "missing"
    return VideoSource(make_video_id(uri, fp), uri, info.get("size") if info else None, fp, meta)


def discover(input_uri: str, allowed_roots: list[str] | None = None) -> Discovery:
    """The media under ``input_uri`` (sorted by path), or in the manifest it names (in its order)."""
    found = iter_discover(input_uri, allowed_roots)
    sources = list(found)
    return Discovery(sources, found.rejected, found.skipped_non_media)


def iter_discover(input_uri: str, allowed_roots: list[str] | None = None) -> DiscoveryStream:
    """:func:`discover`, streamed: a manifest is read a batch of lines at a time and each source is
    made (its file's size and fingerprint looked up) when it is reached. A directory or prefix is
    listed here (names only: an object store's listing gives sizes and ETags, so no request per
    file). Raises :class:`InputError` here, before the first source, for an unusable input."""
    root = storage.strip_file_scheme(input_uri)
    lower = root.lower()
    if lower.endswith(MANIFEST_SUFFIXES):
        return _from_manifest(root, allowed_roots)
    if not storage.is_remote(root) and os.path.isdir(root):
        return _from_local_dir(root)
    with _input_errors("input", input_uri, "list", hint=" (give a directory, an s3:// prefix, a media file or a "
                                                        "manifest .parquet/.csv/.jsonl with a 'uri' column)"):
        listed = storage.list_file_details(root)
    media = [(u, info) for u, info in listed if _is_media(u)]
    skipped = _count_extensions(u for u, _ in listed if not _is_media(u))
    del listed
    return DiscoveryStream((_source(u, info=info) for u, info in media), [], skipped)


@contextlib.contextmanager
def _input_errors(what: str, uri: str, verb: str, hint: str = "") -> Iterator[None]:
    """Storage errors of the input root or manifest as one InputError naming ``what`` and the fix:
    missing, not readable, or an object store without credentials (e.g. "cannot list s3://...")."""
    try:
        yield
    except FileNotFoundError as e:
        raise InputError(f"{what} not found: {printable(uri)}{hint}") from e
    except PermissionError as e:
        raise InputError(f"{what} is not readable: {printable(uri)} ({e})") from e
    except Exception as e:
        if not missing_credentials(e):
            raise
        raise InputError(f"cannot {verb} {printable(uri)}: {NO_CREDENTIALS}") from e


def _is_media(name: str) -> bool:
    return name.lower().endswith(MEDIA_SUFFIXES)


def _count_extensions(names: Iterable[str]) -> dict[str, int]:
    """``{".txt": 2, ".wav": 1, "(no extension)": 1}`` for files passed over, most frequent first."""
    counts = collections.Counter(printable(os.path.splitext(posixpath.basename(n))[1].lower()) or NO_EXTENSION
                                 for n in names)
    return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


def printable(name: str) -> str:
    """``name`` safe to print on one line and to store: bytes that are not UTF-8 (``surrogateescape``)
    and control characters (a newline, a terminal escape) shown as ``\\xNN``."""
    text = name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    if text.isprintable():
        return text
    return "".join(f"\\x{ord(c):02x}" if unicodedata.category(c) == "Cc" else c for c in text)


def _is_utf8(name: str) -> bool:
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _from_local_dir(root: str) -> DiscoveryStream:
    """Regular media files under a local directory; irregular media-named entries rejected."""
    root = os.path.abspath(root)
    real_root = os.path.realpath(root)
    rejected: list[RejectedEntry] = []
    found: list[tuple[str, str | None]] = []  # (path, reason to reject or None)
    other: list[str] = []  # files that are not media

    def walk_error(e: OSError) -> None:
        if e.filename and os.path.abspath(e.filename) == root:
            raise InputError(f"input is not readable: {printable(root)} ({e})") from e
        found.append((str(e.filename or root), f"directory not readable ({e.strerror})"))

    # followlinks=False: a directory symlink is never entered (no loops, no escape from root).
    for dirpath, dirnames, filenames in os.walk(root, onerror=walk_error, followlinks=False):
        other += [name for name in filenames if not _is_media(name)]
        for name in filenames + [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]:
            path = os.path.join(dirpath, name)
            if _is_media(name):
                found.append((path, _local_entry_problem(path, real_root)))
    found.sort()
    rejected += [RejectedEntry(printable(path), 0, reason) for path, reason in found if reason is not None]
    return DiscoveryStream((_source(path) for path, reason in found if reason is None), rejected,
                           _count_extensions(other))


def _local_entry_problem(path: str, real_root: str) -> str | None:
    import stat

    try:
        st = os.stat(path)  # follows symlinks
    except OSError as e:
        return f"cannot stat ({e.strerror}): a dangling or looping symlink, or an unreadable entry"
    if os.path.islink(path) and not _within(os.path.realpath(path), real_root):
        return f"a symlink to {printable(os.path.realpath(path))}, outside the input directory"
    if not stat.S_ISREG(st.st_mode):
        return "not a regular file (directory, FIFO, socket or device)"
    return None


# One manifest entry: (line number, uri entry, reason to reject the line or None, the line's other
# columns as (name, text) pairs).
_Line = tuple[int, str, str | None, tuple[tuple[str, str], ...]]


def _meta_text(value: object) -> str:
    """A manifest value (or column name) as ``videos.meta`` stores it: strings as they are (bytes that
    were not UTF-8 as ``\\xNN``: Parquet holds UTF-8 only), anything else as JSON."""
    if not isinstance(value, str):
        return json.dumps(value, default=str, ensure_ascii=False)
    return value if _is_utf8(value) else value.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


# Manifest rows read at once from a Parquet manifest: memory stays bounded for any manifest size.
PARQUET_BATCH_ROWS = 8192


def _manifest_lines(uri: str) -> Iterator[_Line]:
    """Every entry of a manifest (:data:`_Line`), read as it is iterated. Opens the manifest and
    checks its header here: raises InputError only for what makes the whole manifest unusable."""
    import io

    lower = uri.lower()
    with _input_errors("manifest", uri, "read the"):
        if lower.endswith(".parquet"):
            lines = _parquet_lines(uri)
        else:
            # Undecodable bytes survive as surrogates so that one bad line is rejected, not the file;
            # a byte-order mark (spreadsheet exports) is not part of the first column's name. JSON
            # lines end at "\n" only: a JSON string may hold U+2028 and friends.
            csv_file = lower.endswith(".csv")
            text = io.TextIOWrapper(storage.open_input(uri), encoding="utf-8-sig", errors="surrogateescape",
                                    newline="" if csv_file else "\n")
            lines = _csv_lines(uri, text) if csv_file else _jsonl_lines(text)
    return _reading(uri, lines)


def _reading(uri: str, lines: Iterator[_Line]) -> Iterator[_Line]:
    """``lines`` with a storage error met half-way through the manifest reported as for its start."""
    with _input_errors("manifest", uri, "read the"):
        yield from lines


def _parquet_lines(uri: str) -> Iterator[_Line]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    stream = storage.open_input(uri)
    try:
        try:
            manifest = pq.ParquetFile(stream)
        except pa.ArrowInvalid as e:
            raise InputError(f"manifest {printable(uri)} is not a readable Parquet file ({e})") from e
        names = manifest.schema_arrow.names
        _check_uri_columns(uri, names)
    except BaseException:
        stream.close()  # the rows' generator owns it only once the header is good
        raise
    return _parquet_rows(stream, manifest, names)


def _parquet_rows(stream: Any, manifest: Any, names: list[str]) -> Iterator[_Line]:
    others = [c for c in names if c != "uri"]
    n = 0  # rows are numbered from 1
    with stream:
        for batch in manifest.iter_batches(batch_size=PARQUET_BATCH_ROWS):
            values = {c: batch.column(c).to_pylist() for c in others}
            for i, v in enumerate(batch.column("uri").to_pylist()):
                n += 1
                meta = tuple((c, _meta_text(values[c][i])) for c in others if values[c][i] is not None)
                if v is None or isinstance(v, str):
                    yield n, v or "", None, meta
                else:
                    yield n, printable(repr(v)[:200]), f"'uri' must be a string, got {type(v).__name__}", meta


def _check_uri_columns(uri: str, columns: list[str]) -> None:
    if columns.count("uri") != 1:
        problem = "no 'uri' column" if "uri" not in columns else f"{columns.count('uri')} 'uri' columns"
        raise InputError(f"manifest {printable(uri)} has {problem} (columns: {printable(', '.join(columns))}); "
                         f"give exactly one column named 'uri'")


def _csv_lines(uri: str, text: Any) -> Iterator[_Line]:
    import csv

    reader = csv.reader(text)
    try:
        try:
            header = next(reader, [])
        except csv.Error as e:
            raise InputError(f"manifest {printable(uri)}: its header line is not CSV ({e})") from e
        _check_uri_columns(uri, header)
    except BaseException:
        text.close()  # the rows' generator owns it only once the header is good
        raise
    return _csv_rows(text, reader, header)


def _csv_rows(text: Any, reader: Any, header: list[str]) -> Iterator[_Line]:
    import csv

    col = header.index("uri")
    with text:
        while True:
            line = reader.line_num + 1  # where this record starts (a quoted field may span lines)
            try:
                row = next(reader)
            except StopIteration:
                return
            except csv.Error as e:  # e.g. a field over csv.field_size_limit(); the reader goes on at the next line
                yield line, "", f"not readable as CSV ({e})", ()
                continue
            if row:  # a blank line is no entry; an empty cell is no value
                meta = tuple((_meta_text(h), _meta_text(v)) for i, (h, v) in enumerate(zip(header, row, strict=False))
                             if i != col and v != "")
                yield line, (row[col] if col < len(row) else "").strip(), None, meta


class _DuplicateKey(ValueError):
    pass


def _object_without_duplicate_uri(pairs: list[tuple[str, object]]) -> dict:
    if sum(k == "uri" for k, _ in pairs) > 1:
        raise _DuplicateKey("the 'uri' key appears more than once")
    return dict(pairs)


def _jsonl_lines(text: Any) -> Iterator[_Line]:
    with text:
        yield from _jsonl_records(text)


def _jsonl_records(text: Any) -> Iterator[_Line]:
    for n, line in enumerate(text, 1):
        if not line.strip():
            yield n, "", None, ()
            continue
        try:
            obj = json.loads(line, object_pairs_hook=_object_without_duplicate_uri)
        except RecursionError:
            yield n, "", "not readable as JSON: nested too deeply", ()
            continue
        except _DuplicateKey as e:
            yield n, "", str(e), ()
            continue
        except ValueError as e:  # JSONDecodeError, or a number too long to convert
            yield n, "", f"not readable as JSON ({e})", ()
            continue
        if not isinstance(obj, dict) or "uri" not in obj:
            yield n, "", "an object with a 'uri' key is required", ()
            continue
        meta = tuple((_meta_text(k), _meta_text(v)) for k, v in obj.items() if k != "uri" and v is not None)
        if not isinstance(obj["uri"], str):
            yield (n, printable(json.dumps(obj["uri"])[:200]),
                   f"'uri' must be a string, got {type(obj['uri']).__name__}", meta)
        else:
            yield n, obj["uri"], None, meta


class _SeenHashes:
    """A set of 64-bit hashes in ~10 bytes each, where a Python ``set[int]`` takes ~85: the newest
    are a small set, merged into one sorted array once they reach an eighth of it (or
    :attr:`RECENT`), so a manifest's duplicate check stays a few bytes an entry at millions of lines
    and each lookup is one set probe and one binary search."""

    RECENT = 4096

    def __init__(self) -> None:
        self._sorted = np.empty(0, np.int64)
        self._recent: set[int] = set()

    def add(self, h: int) -> bool:
        """Add ``h``; False when it was already there."""
        if h in self._recent:
            return False
        at = int(np.searchsorted(self._sorted, h))
        if at < len(self._sorted) and self._sorted[at] == h:
            return False
        self._recent.add(h)
        if len(self._recent) >= max(self.RECENT, len(self._sorted) // 8):
            self._sorted = np.sort(np.concatenate([self._sorted, np.fromiter(self._recent, np.int64)]))
            self._recent = set()
        return True


def _within(path: str, root: str) -> bool:
    path, root = path.rstrip("/"), root.rstrip("/")
    return path == root or path.startswith(root + "/")


def _from_manifest(manifest: str, allowed_roots: list[str] | None) -> DiscoveryStream:
    rejected: list[RejectedEntry] = []
    lines = _manifest_lines(manifest)  # an unusable manifest is an InputError now, not at the first entry
    return DiscoveryStream(_manifest_sources(manifest, allowed_roots, lines, rejected), rejected)


def _manifest_sources(manifest: str, allowed_roots: list[str] | None, lines: Iterator[_Line],
                      rejected: list[RejectedEntry]) -> Iterator[VideoSource]:
    base = manifest.rsplit("/", 1)[0] if "/" in manifest else "."
    remote_base = storage.is_remote(manifest)
    if not remote_base:
        base = os.path.dirname(os.path.abspath(manifest))
    roots = [storage.strip_file_scheme(r) for r in (allowed_roots or [])]
    roots = [r if storage.is_remote(r) else os.path.realpath(r) for r in roots]
    # Entries seen, by hash (a 64-bit collision, ~1e-8 at a million entries, would show as a
    # "duplicate entry" rejection, never silently).
    seen = _SeenHashes()
    no_credentials: set[str] = set()  # schemes already refused for want of credentials: not asked again
    for line, entry, problem, meta in lines:
        if problem is not None:
            rejected.append(RejectedEntry(entry, line, problem))
            continue
        if not entry:
            rejected.append(RejectedEntry(entry, line, "empty uri"))
            continue
        if "\x00" in entry:
            rejected.append(RejectedEntry(printable(entry), line, "uri contains a NUL byte"))
            continue
        if not _is_utf8(entry):
            reason = ("uri is not valid UTF-8: save the manifest as UTF-8 (a file whose name is not UTF-8 is "
                      "found when its directory is the input)")
            rejected.append(RejectedEntry(printable(entry), line, reason))
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
        if not seen.add(hash(uri)):
            rejected.append(RejectedEntry(entry, line, "duplicate entry"))
            continue
        scheme = uri.split("://", 1)[0].lower() if storage.is_remote(uri) else ""
        if scheme in no_credentials:
            rejected.append(RejectedEntry(entry, line, NO_CREDENTIALS))
            continue
        try:
            source = _source(uri, meta or None)
        except Exception as e:
            if not missing_credentials(e):
                raise
            no_credentials.add(scheme)
            rejected.append(RejectedEntry(entry, line, NO_CREDENTIALS))
            continue
        yield source
