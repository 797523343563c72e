"""What an annotate output keeps about the people in it, and the deny-list ``mien annotate`` honours.

**Privacy mode.** ``output.privacy: strict`` writes no face crop (``faces.crop_jpeg`` is null
whatever ``output.crops`` says); the run's record keeps the setting (``config.output.privacy`` in
``runs/<run_id>.json``), so commands that need crops say why there are none
(:func:`crops_withheld`). No identity embedding is stored in either mode: the face backend's
embeddings only link faces into tracks, in memory (``docs/OUTPUT.md``, "What is stored").

**Deny-list.** A video is denied when its ``video_id`` or its URI is listed in ``ingest.deny_list``,
in the text file ``ingest.deny_list_file`` (one entry a line, ``#`` comments), or in the output's
own list, ``_privacy/forgotten.jsonl``, which ``mien forget`` writes
(:mod:`workflows.corpus.forget`). That file holds no URI: each line is the ``video_id``, the
SHA-256 of the URI (it matches the same URI again, and confirms a guessed one, but does not
reveal it) and the time of the request. ``mien annotate`` drops denied videos before anything is
decoded and counts them (summary and ``counts.denied`` of the run record).

It reads the output's list after taking its lease, and ``mien forget`` writes the list before it
reads the leases: of a run and a forget that start together, either the run sees the new entries
or the forget sees the run's lease (and refuses while it is live), never neither.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import logging
from collections.abc import Iterable
from typing import Any

from workflows.core import storage
from workflows.core.config import ConfigError
from workflows.corpus.reader import AnnotationOutput

log = logging.getLogger(__name__)

PRIVACY_MODES = ("off", "strict")
PRIVACY_DIR = "_privacy"
FORGOTTEN_FILE = "forgotten.jsonl"
STRICT_NO_CROPS = "this output was written with output.privacy=strict: no face crops"


def normalize_uri(entry: str) -> str:
    """A URI as ``mien annotate`` names it in ``videos.video_uri``: remote URIs as given, local
    paths absolute (``storage.local_uri`` for names that are not valid UTF-8)."""
    return entry if storage.is_remote(entry) else storage.local_uri(storage.absolute(entry))


def uri_digest(uri: str) -> str:
    """SHA-256 (hex) of a normalised URI: how the output's own deny-list names a URI."""
    return hashlib.sha256(normalize_uri(uri).encode("utf-8", "surrogateescape")).hexdigest()


def forgotten_uri(output_uri: str) -> str:
    return storage.join(output_uri, PRIVACY_DIR, FORGOTTEN_FILE)


@dataclasses.dataclass(frozen=True)
class DenyList:
    """Denied ``video_id``s and SHA-256 digests of denied URIs (:func:`uri_digest`)."""

    video_ids: frozenset[str] = frozenset()
    uri_digests: frozenset[str] = frozenset()

    def denies(self, video_id: str, uri: str) -> bool:
        return video_id in self.video_ids or (bool(self.uri_digests) and uri_digest(uri) in self.uri_digests)

    def __len__(self) -> int:
        return len(self.video_ids) + len(self.uri_digests)


def read_forgotten(output_uri: str) -> list[dict[str, Any]]:
    """The records ``mien forget`` wrote to ``output_uri`` (empty when there are none). A line
    that does not parse stops the run: skipping it would annotate a video someone asked to be
    forgotten."""
    try:
        text = storage.read_text(forgotten_uri(output_uri))
    except FileNotFoundError:
        return []
    records = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            doc = json.loads(line)
        except ValueError as e:
            raise ConfigError([f"{forgotten_uri(output_uri)} line {n} is not JSON ({e}); repair the line (it was "
                               f"written by `mien forget`) or rerun `mien forget` for that video"]) from e
        records.append(doc)
    return records


def read_deny_list(output_uri: str, entries: Iterable[str] = (), entries_file: str | None = None) -> DenyList:
    """The deny-list of a run writing to ``output_uri``: ``entries`` (``ingest.deny_list``), the
    lines of ``entries_file`` (``ingest.deny_list_file``) and the output's own list. An entry is
    taken as both a ``video_id`` and a URI. Raises ConfigError when the file cannot be read."""
    listed = [e.strip() for e in entries if e.strip()]
    if entries_file:
        try:
            text = storage.read_text(entries_file)
        except (OSError, UnicodeDecodeError) as e:
            raise ConfigError([f"ingest.deny_list_file: cannot read {entries_file} ({type(e).__name__}: {e}); "
                               f"fix the path, or unset it to annotate without that list"]) from e
        listed += [s for line in text.splitlines() if (s := line.split("#", 1)[0].strip())]
    ids = set(listed)
    digests = {uri_digest(e) for e in listed}
    for rec in read_forgotten(output_uri):
        ids.add(str(rec.get("video_id") or ""))
        digests.add(str(rec.get("uri_sha256") or ""))
    return DenyList(frozenset(ids - {""}), frozenset(digests - {""}))


def record_forgotten(output_uri: str, videos: Iterable[tuple[str | None, str | None]]) -> int:
    """Add ``(video_id, uri)`` pairs (either may be None) to the output's own deny-list, one line
    each with the URI's digest, none twice; returns how many lines were added. One whole-object
    write: a killed write leaves the old list, and the rerun of ``mien forget`` writes it again."""
    existing = read_forgotten(output_uri)
    have = {(r.get("video_id"), r.get("uri_sha256")) for r in existing}
    now = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    new = []
    for video_id, uri in videos:
        key = (video_id, None if uri is None else uri_digest(uri))
        if key in have or any(None in key and key[0] in (v, None) and key[1] in (d, None) for v, d in have):
            continue  # listed already, or an id or a URI a listed line covers
        have.add(key)
        new.append({"video_id": key[0], "uri_sha256": key[1], "forgotten_at": now})
    if new:
        lines = [json.dumps(r, sort_keys=True) for r in [*existing, *new]]
        storage.write_text(forgotten_uri(output_uri), "\n".join(lines) + "\n")
    return len(new)


def strict_runs(output: AnnotationOutput) -> list[str]:
    """The runs of ``output`` written with ``output.privacy: strict`` (from their run records)."""
    return [str(doc["run_id"]) for doc in output.runs()
            if ((doc.get("config") or {}).get("output") or {}).get("privacy") == "strict"]


def crops_withheld(output: AnnotationOutput) -> str | None:
    """:data:`STRICT_NO_CROPS` (naming the runs) when runs of ``output`` wrote in privacy mode, else
    None: what a command that needs crops says instead of "no crops"."""
    runs = strict_runs(output)
    return f"{STRICT_NO_CROPS} (run(s) {', '.join(runs)})" if runs else None
