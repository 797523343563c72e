"""One place to list, stream-read and write local paths and ``s3://`` URIs.

Everything goes through fsspec: local paths use the local filesystem, ``s3://`` uses s3fs,
which honours the standard AWS credential chain (env vars, profiles, instance roles).
``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL`` point it at a non-AWS endpoint (MinIO, moto).
Transient storage errors are retried with exponential backoff; local writes are atomic
(temporary file in the same directory, then rename) so a crash never leaves half a file.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import random
import tempfile
import time
import urllib.parse
from collections.abc import Callable, Iterable
from typing import IO, Any, TypeVar

import fsspec

log = logging.getLogger(__name__)
T = TypeVar("T")

RETRY_ATTEMPTS = int(os.environ.get("MIEN_STORAGE_RETRIES", "5"))
RETRY_BASE_DELAY_S = float(os.environ.get("MIEN_STORAGE_RETRY_DELAY_S", "0.2"))

_UMASK = os.umask(0)
os.umask(_UMASK)

_TRANSIENT_MARKERS = (
    "SlowDown", "Throttl", "RequestTimeout", "InternalError", "ServiceUnavailable",
    "503", "500", "502", "504", "Connection reset", "Connection aborted", "timed out",
    "EndpointConnectionError", "ConnectionClosedError", "ReadTimeout", "IncompleteRead",
)
_TRANSIENT_STATUS = {408, 429, 500, 502, 503, 504}
# Names of what a write leaves behind when it is killed: the temporary file of a local write and
# the probe of check_writable (S3 leaves incomplete multipart uploads instead).
_TEMP_PREFIXES = (".tmp-", ".mien-write-test-")


def is_remote(uri: str) -> bool:
    return "://" in uri and not uri.startswith("file://")


def strip_file_scheme(uri: str) -> str:
    """The local path of a path or ``file://`` URI (whose path is percent-encoded, RFC 8089: how
    :func:`local_uri` names a file whose name is not valid UTF-8)."""
    if not uri.startswith("file://"):
        return uri
    return os.fsdecode(urllib.parse.unquote_to_bytes(uri[len("file://"):]))


def local_uri(path: str) -> str:
    """How a local file is named in an output: its path, or, when the path is not valid UTF-8
    (``os`` gives such names as ``surrogateescape`` strings; common on old Latin-1 archives), a
    ``file://`` URI with the raw bytes percent-encoded, which Parquet can store and
    :func:`strip_file_scheme` maps back to the file."""
    try:
        path.encode("utf-8")
        return path
    except UnicodeEncodeError:
        return "file://" + urllib.parse.quote(os.fsencode(path), safe="/")


def absolute(uri: str) -> str:
    """``uri`` as the user meant it, fixed before anything is shipped to Ray workers (whose working
    directory is not the user's): a local path made absolute against this process's working
    directory (``~`` expanded); URIs (``s3://``, ``models:/``, ...) unchanged."""
    if is_remote(uri) or uri.startswith(("models:/", "runs:/")) or uri == "default":
        return uri
    return os.path.abspath(os.path.expanduser(strip_file_scheme(uri)))


def s3_storage_options() -> dict[str, Any]:
    """s3fs options from the environment: endpoint override; credentials stay with botocore."""
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    opts: dict[str, Any] = {}
    if endpoint:
        opts["endpoint_url"] = endpoint
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    if region:
        opts["client_kwargs"] = {"region_name": region}
    return opts


def filesystem(uri: str) -> tuple[fsspec.AbstractFileSystem, str]:
    """``(fs, path)`` for a URI; ``path`` is what ``fs`` methods take."""
    uri = strip_file_scheme(uri)
    if uri.startswith(("s3://", "s3a://")):
        fs = fsspec.filesystem("s3", **s3_storage_options())
        return fs, uri.split("://", 1)[1]
    if is_remote(uri):
        protocol = uri.split("://", 1)[0]
        fs = fsspec.filesystem(protocol)
        return fs, uri
    return fsspec.filesystem("file"), os.path.abspath(uri)


def _to_uri(fs: fsspec.AbstractFileSystem, path: str) -> str:
    proto = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    if proto in ("file", "local"):
        return path
    if proto in ("s3", "s3a"):
        return f"s3://{path}"
    return path if "://" in path else f"{proto}://{path}"


NO_CREDENTIALS = ("no credentials for this object store: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, "
                  "AWS_PROFILE, or run where an instance role provides them")


def missing_credentials(e: BaseException) -> bool:
    """Whether an object store refused for want of credentials (botocore raises these outside OSError)."""
    try:
        from botocore.exceptions import NoCredentialsError, PartialCredentialsError
    except ImportError:  # no S3 support installed: no S3 call was made
        return False
    return isinstance(e, NoCredentialsError | PartialCredentialsError)


def is_transient(exc: BaseException) -> bool:
    """True for errors worth retrying: throttling, 5xx, dropped connections, timeouts.

    s3fs turns botocore's ``ClientError`` into a plain ``OSError`` that keeps only the server's
    message ("Please reduce your request rate."), so the cause chain is searched too: the
    original error still carries the HTTP status and the S3 error code."""
    if isinstance(exc, FileNotFoundError | PermissionError | IsADirectoryError | NotADirectoryError):
        return False
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, ConnectionError | TimeoutError):
            return True
        response = getattr(e, "response", None)
        if isinstance(response, dict):
            status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            code = str(response.get("Error", {}).get("Code"))
            if status in _TRANSIENT_STATUS or code in _TRANSIENT_MARKERS:
                return True
        text = f"{type(e).__name__}: {e}"
        if any(m in text for m in _TRANSIENT_MARKERS):
            return True
        e = e.__cause__ or e.__context__
    return False


def with_retries(fn: Callable[..., T]) -> Callable[..., T]:
    """Retry ``fn`` on transient errors with exponential backoff and jitter."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> T:
        for attempt in range(1, RETRY_ATTEMPTS + 1):
            try:
                return fn(*args, **kwargs)
            except Exception as e:  # noqa: BLE001 - classified below
                if attempt == RETRY_ATTEMPTS or not is_transient(e):
                    target = next((a for a in args if isinstance(a, str)), None)
                    if isinstance(e, PermissionError) and target and target not in str(e):
                        # S3 says only "Access Denied": name what was denied.
                        raise PermissionError(f"{e}: {target}") from e
                    raise
                delay = RETRY_BASE_DELAY_S * (2 ** (attempt - 1)) * (0.5 + random.random())
                log.warning("transient storage error (%s), retry %d/%d in %.2fs",
                            type(e).__name__, attempt, RETRY_ATTEMPTS - 1, delay)
                time.sleep(delay)
        raise AssertionError("unreachable")

    return wrapper


def join(base: str, *parts: str) -> str:
    out = base.rstrip("/")
    for p in parts:
        out = f"{out}/{p.strip('/')}"
    return out


@with_retries
def exists(uri: str) -> bool:
    fs, path = filesystem(uri)
    return fs.exists(path)


@with_retries
def isdir(uri: str) -> bool:
    fs, path = filesystem(uri)
    return fs.isdir(path)


@with_retries
def info(uri: str) -> dict[str, Any]:
    fs, path = filesystem(uri)
    return fs.info(path)


def list_files(uri: str, suffixes: Iterable[str] | None = None) -> list[str]:
    """All files under ``uri`` (recursive), sorted, as URIs; filtered by lower-case suffix.

    A ``uri`` that is itself a file is returned alone. Raises FileNotFoundError when the
    root does not exist.
    """
    return [u for u, _ in list_file_details(uri, suffixes)]


@with_retries
def list_file_details(uri: str, suffixes: Iterable[str] | None = None) -> list[tuple[str, dict[str, Any]]]:
    """:func:`list_files` with each file's listing details (size, ETag or mtime), so that callers
    need no request per file (an object store lists 1000 keys with one request)."""
    fs, path = filesystem(uri)
    if not fs.exists(path):
        raise FileNotFoundError(f"input not found: {uri}")
    if fs.isfile(path):
        found = {path: fs.info(path)}
    else:
        fs.invalidate_cache(path)
        found = {p: d for p, d in fs.find(path, detail=True, withdirs=False).items() if d.get("type") == "file"}
    if suffixes is not None:
        sfx = tuple(s.lower() for s in suffixes)
        found = {p: d for p, d in found.items() if p.lower().endswith(sfx)}
    return sorted(((_to_uri(fs, p), d) for p, d in found.items()), key=lambda ud: ud[0])


def open_input(uri: str, block_size: int = 4 << 20) -> IO[bytes]:
    """A seekable binary stream over ``uri``; remote files are read in ranges, never whole."""
    fs, path = filesystem(uri)
    opener = with_retries(lambda: fs.open(path, "rb", block_size=block_size) if is_remote(uri)
                          else fs.open(path, "rb"))
    return opener()


@with_retries
def read_bytes(uri: str) -> bytes:
    fs, path = filesystem(uri)
    return fs.cat_file(path)


def read_text(uri: str, encoding: str = "utf-8") -> str:
    return read_bytes(uri).decode(encoding)


def makedirs(uri: str) -> None:
    fs, path = filesystem(uri)
    if not is_remote(uri):
        os.makedirs(path, exist_ok=True)
    else:
        with_retries(fs.makedirs)(path, exist_ok=True)


def write_bytes(uri: str, data: bytes) -> None:
    """Write ``data`` to ``uri`` atomically (local: temp file + rename; S3 PUT is atomic)."""
    if not is_remote(uri):
        path = os.path.abspath(strip_file_scheme(uri))
        os.makedirs(os.path.dirname(path), exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=_TEMP_PREFIXES[0], dir=os.path.dirname(path))
        try:
            os.fchmod(fd, 0o666 & ~_UMASK)  # mkstemp makes 0600; outputs are meant to be shared
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
        return
    fs, path = filesystem(uri)
    with_retries(fs.pipe_file)(path, data)


def write_text(uri: str, text: str) -> None:
    write_bytes(uri, text.encode("utf-8"))


def remove_stale_temporaries(uri: str, older_than_s: float) -> list[str]:
    """Delete what killed writes left directly in the directory ``uri`` more than ``older_than_s``
    seconds ago: temporary files of local writes and write probes (``.tmp-*``,
    ``.mien-write-test-*``); on S3 also the incomplete multipart uploads of large objects under
    it (invisible, but billed). Younger ones may belong to a write in progress and are kept.
    Returns what was removed (multipart uploads as ``s3://bucket/key?uploadId=...``)."""
    now = time.time()
    removed: list[str] = []
    fs, path = filesystem(uri)
    if not is_remote(uri):
        try:
            entries = list(os.scandir(path))
        except FileNotFoundError:
            return []
        for e in entries:
            if e.name.startswith(_TEMP_PREFIXES) and e.is_file(follow_symlinks=False):
                with contextlib.suppress(FileNotFoundError):  # its write just finished or another run won
                    if now - e.stat(follow_symlinks=False).st_mtime > older_than_s:
                        os.unlink(e.path)
                        removed.append(e.path)
        return removed
    try:
        entries = with_retries(fs.ls)(path, detail=True, refresh=True)
    except FileNotFoundError:
        entries = []
    for e in entries:
        name = e["name"].rstrip("/").rsplit("/", 1)[-1]
        modified = e.get("LastModified")
        if (e.get("type") == "file" and name.startswith(_TEMP_PREFIXES) and modified is not None
                and now - modified.timestamp() > older_than_s):
            remove(_to_uri(fs, e["name"]))
            removed.append(_to_uri(fs, e["name"]))
    if uri.startswith(("s3://", "s3a://")):
        bucket, _, key = path.partition("/")
        listing = with_retries(fs.call_s3)("list_multipart_uploads", Bucket=bucket, Prefix=key.rstrip("/") + "/")
        for up in listing.get("Uploads", []):
            if now - up["Initiated"].timestamp() > older_than_s and "/" not in up["Key"][len(key) + 1:]:
                with_retries(fs.call_s3)("abort_multipart_upload", Bucket=bucket, Key=up["Key"],
                                         UploadId=up["UploadId"])
                removed.append(f"s3://{bucket}/{up['Key']}?uploadId={up['UploadId']}")
    return removed


@with_retries
def remove(uri: str) -> None:
    fs, path = filesystem(uri)
    if fs.exists(path):
        fs.rm(path, recursive=True)


def check_writable(uri: str) -> None:
    """Raise PermissionError/OSError naming ``uri`` when the output root cannot be written. Leaves
    nothing behind: local directories the probe had to create are removed again (a run that then
    fails its other checks must not leave an empty output)."""
    probe = join(uri, f"{_TEMP_PREFIXES[1]}{os.getpid()}-{random.randrange(1 << 30)}")
    created: list[str] = []
    if not is_remote(uri):
        d = os.path.abspath(strip_file_scheme(uri))
        while d and not os.path.exists(d) and os.path.dirname(d) != d:
            created.append(d)
            d = os.path.dirname(d)
    try:
        write_bytes(probe, b"ok")
        remove(probe)
    except Exception as e:
        raise PermissionError(f"output is not writable: {uri} ({type(e).__name__}: {e})") from e
    finally:
        for d in created:  # deepest first; only still-empty directories
            with contextlib.suppress(OSError):
                os.rmdir(d)
