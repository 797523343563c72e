"""Live-run leases: which ``mien annotate`` runs are writing to an output root right now.

Several runs may write to one output root (shards of a corpus, a rerun started while the first
is still going). What they must not do is delete each other's work in progress, so every run
announces itself and keeps the announcement fresh::

    OUT/_runs/<run_id>.lease    JSON: run_id, host, pid, started_at, heartbeat_at (epoch s), ttl_s, ...
    OUT/_runs/<run_id>.claims   the video ids the run set out to annotate, one per line (written once)

The driver rewrites its lease every ``ttl_s / 8`` seconds from a thread and deletes both files
when the run ends, however it ends (Ctrl-C and exceptions included). A lease is **dead** when
it is absent, when its heartbeat is older than ``ttl_s`` (a run killed on another machine), or
at once when it names a process of this machine (same host name and PID namespace) that no
longer exists (``kill -9`` of a local run, then an immediate rerun). Everything is a plain object
write or read, so it works the same on a local disk and on S3 (strong read-after-write and
list consistency) without any locking primitive.

What a lease guards (:mod:`workflows.corpus.writer`): uncommitted parts of a live run are never
removed, and a video claimed by a live run is left to it (:meth:`RunLease.claim`). A run that
could not refresh its lease for ``ttl_s / 2`` (storage outage, frozen process) may already be
taken for dead by another run, which may have removed its uncommitted parts: it stops before
its next commit (:meth:`RunLease.check`, :class:`LeaseLost`) instead of committing rows whose
faces are gone. Clocks of the machines sharing an output must agree to well within ``ttl_s``
(NTP does).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import logging
import os
import socket
import threading
import time
from typing import Any

from workflows.core import storage

log = logging.getLogger(__name__)

LEASE_DIR = "_runs"


class LeaseLost(OSError):
    """This run may have been taken for dead by another run; it must not commit anything more."""


def _host() -> str:
    """This machine as a lease names it: host name plus PID namespace (containers sharing a
    host name keep separate PIDs, so a PID is only checked where it means the same process)."""
    try:
        ns = os.readlink("/proc/self/ns/pid")
    except OSError:
        ns = ""
    return f"{socket.gethostname()}/{ns}" if ns else socket.gethostname()


def _process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: it exists
        return True
    return True


@dataclasses.dataclass(frozen=True)
class LeaseRecord:
    """One ``_runs/<run_id>.lease`` as read back."""

    run_id: str
    host: str
    pid: int
    heartbeat_at: float  # epoch seconds of the last refresh
    ttl_s: float
    started_at: str = ""
    input: str = ""
    force: bool = False

    def dead_because(self, now: float | None = None) -> str | None:
        """Why this run is no longer live, or None when it is (or may be)."""
        age = (time.time() if now is None else now) - self.heartbeat_at
        if age > self.ttl_s:
            return f"no heartbeat for {age:.0f} s (lease_ttl_s={self.ttl_s:g})"
        if self.host == _host() and not _process_exists(self.pid):
            return f"process {self.pid} on this machine is gone"
        return None

    def describe(self) -> str:
        age = max(0.0, time.time() - self.heartbeat_at)
        return (f"run {self.run_id} (host {self.host.split('/', 1)[0]}, pid {self.pid}, "
                f"last heartbeat {age:.0f} s ago)")


def lease_uri(root: str, run_id: str, suffix: str = ".lease") -> str:
    return storage.join(root, LEASE_DIR, f"{run_id}{suffix}")


def read_leases(root: str) -> dict[str, LeaseRecord]:
    """Every lease under ``root`` by run id, live or not (:meth:`LeaseRecord.dead_because`).

    A lease that cannot be parsed is skipped with a warning (writes are atomic, so it is not
    a run's); a lease that cannot be read raises, since a live run must never be taken for
    absent because storage hiccupped."""
    try:
        uris = storage.list_files(storage.join(root, LEASE_DIR), (".lease",))
    except FileNotFoundError:
        return {}
    leases: dict[str, LeaseRecord] = {}
    for uri in uris:
        try:
            text = storage.read_text(uri)
        except FileNotFoundError:
            continue  # the run ended between the listing and the read
        try:
            doc = json.loads(text)
            rec = LeaseRecord(**{f.name: doc[f.name] for f in dataclasses.fields(LeaseRecord) if f.name in doc})
        except (ValueError, TypeError) as e:
            log.warning("ignoring unreadable lease %s (%s)", uri, e)
            continue
        leases[rec.run_id] = rec
    return leases


def remove_lease(root: str, run_id: str) -> None:
    """Delete a run's claims and lease (claims first: a claims file never outlives its lease)."""
    storage.remove(lease_uri(root, run_id, ".claims"))
    storage.remove(lease_uri(root, run_id))


class RunLease:
    """The lease of one run: ``with RunLease(...) as lease:`` holds it (heartbeat thread) and
    deletes it on exit."""

    def __init__(self, root: str, run_id: str, ttl_s: float = 120.0, *, input_uri: str = "",
                 force: bool = False):
        if ttl_s <= 0:
            raise ValueError(f"lease ttl_s must be > 0, got {ttl_s}")
        self.root = root.rstrip("/")
        self.run_id = run_id
        self.ttl_s = ttl_s
        self.uri = lease_uri(self.root, run_id)
        self._doc: dict[str, Any] = {
            "run_id": run_id, "host": _host(), "pid": os.getpid(), "ttl_s": ttl_s,
            "started_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"), "input": input_uri,
            "force": force}
        self._last_beat: float | None = None  # epoch s of the last successful refresh
        self._lost: str | None = None  # sticky: once possibly taken for dead, never commit again
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- holding it -------------------------------------------------------------------
    def __enter__(self) -> RunLease:
        self._beat()  # the lease exists before this run writes anything else under the root
        self._thread = threading.Thread(target=self._heartbeat, name=f"lease-{self.run_id}", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        try:
            remove_lease(self.root, self.run_id)
        except OSError as e:  # it goes stale after ttl_s; nothing is lost
            log.warning("could not remove the lease %s (%s: %s); it expires in %g s",
                        self.uri, type(e).__name__, e, self.ttl_s)

    def _beat(self) -> None:
        now = time.time()
        if self._last_beat is not None and now - self._last_beat > self.ttl_s / 2:
            self._lost = self._lost or f"its lease {self.uri} went {now - self._last_beat:.0f} s without a refresh"
        storage.write_text(self.uri, json.dumps({**self._doc, "heartbeat_at": now}))
        self._last_beat = now

    def _heartbeat(self) -> None:
        while not self._stop.wait(self.ttl_s / 8):
            try:
                self._beat()
            except Exception as e:  # noqa: BLE001 - retried at the next beat; check() decides
                log.warning("could not refresh the lease %s (%s: %s)", self.uri, type(e).__name__, e)

    def check(self) -> None:
        """Raise :class:`LeaseLost` when another run may have taken this one for dead (no
        refresh for ``ttl_s / 2``, now or at any moment since the lease was taken)."""
        if self._last_beat is None:
            raise LeaseLost(f"run {self.run_id} holds no lease on {self.root}")
        age = time.time() - self._last_beat
        if self._lost is None and age > self.ttl_s / 2:
            self._lost = f"its lease {self.uri} went {age:.0f} s without a refresh"
        if self._lost is not None:
            raise LeaseLost(f"run {self.run_id} stops before committing more: {self._lost} (lease_ttl_s="
                            f"{self.ttl_s:g}), so another run may have taken it for dead and removed its "
                            f"uncommitted parts. Committed chunks are kept; rerun the same command to resume")

    # -- sharing the work -------------------------------------------------------------
    def claim(self, video_ids: list[str]) -> dict[str, LeaseRecord]:
        """Announce ``video_ids`` as this run's work; returns the ones to leave to another live run
        (video id -> that run's lease).

        The claims file is written before the other runs' claims are read, so of two runs that
        start together at least one sees the other; a run yields the videos it shares with a
        live run that started before it (run ids sort by start time). Two runs that still both
        annotate a video (each started before the other's claims were visible, in the wrong
        order) cost the work twice but stay correct: readers keep the newest row of a video and
        the writer drops the older one (:mod:`workflows.corpus.writer`)."""
        storage.write_text(lease_uri(self.root, self.run_id, ".claims"), "\n".join(video_ids))
        wanted = set(video_ids)
        held: dict[str, LeaseRecord] = {}
        for run_id, rec in sorted(read_leases(self.root).items()):
            if run_id >= self.run_id or rec.dead_because() is not None:
                continue
            try:
                theirs = storage.read_text(lease_uri(self.root, run_id, ".claims")).split("\n")
            except FileNotFoundError:
                continue  # not claimed yet (it will see ours) or just ended
            for vid in wanted.intersection(theirs):
                held.setdefault(vid, rec)
        return held
