"""Fault injection for reliability tests and drills: the one mechanism, off unless asked for.

Two kinds of fault, both named by the place they fire:

* **process death** in a pipeline worker, from the environment (it must reach Ray actors on
  every node): ``MIEN_FAULT_INJECT="<stage>_exit:<substring>"`` makes the worker running
  ``<stage>`` (``faces`` or ``mllm``; ``written``: the MLLM worker right after it wrote a chunk's
  parts itself, ``output.sink=workers``) die with ``os._exit(77)`` — as a segfault or the OOM killer
  would — on every video whose URI contains ``<substring>``; ``<stage>_exit_once:`` dies only on
  the first such video (a marker file in ``MIEN_FAULT_STATE_DIR``, default the temp dir,
  remembers it across restarts); ``written_pause:`` holds that worker there instead, as
  ``commit_pause`` holds the driver (below). Several specs are separated by commas. Unset, it costs
  one environment lookup per worker.
* **a driver stopped between two writes** of the annotate sink: ``commit_exit:<substring>``
  kills the driver after a chunk's faces/tracks parts are written and before the videos part
  that commits them, on the chunk holding a video whose URI contains ``<substring>``;
  ``commit_pause:<substring>`` stops it there instead, creating ``mien-fault-<key>.paused`` in
  ``MIEN_FAULT_STATE_DIR`` (default the temp dir) and carrying on once that file is deleted, so a
  test can run something else against an output with a chunk in flight.
* **a simulated crash** at a named step of a job, from that job's config (it travels with the
  job to Ray Train workers): ``testing.fail_at_step`` (train) and ``testing.fail_after``
  (retrain) call :func:`fail_at`, which raises :class:`InjectedFailure` after the step's state
  is persisted, so a rerun proves the job resumes.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import tempfile
import time

log = logging.getLogger(__name__)

FAULT_ENV = "MIEN_FAULT_INJECT"
FAULT_STATE_ENV = "MIEN_FAULT_STATE_DIR"
FAULT_EXIT_CODE = 77


class InjectedFailure(RuntimeError):
    """A crash asked for by a fault-injection setting (tests and drills only)."""


@dataclasses.dataclass(frozen=True)
class InjectedFault:
    stage: str  # "faces" | "mllm" | "commit"
    substring: str
    once: bool = False
    pause: bool = False  # stop until the marker file is deleted, instead of dying

    def marker(self) -> str:
        key = hashlib.sha256(f"{self.stage}\x00{self.substring}".encode()).hexdigest()[:16]
        return os.path.join(os.environ.get(FAULT_STATE_ENV) or tempfile.gettempdir(), f"mien-fault-{key}")


def injected_faults(stage: str) -> tuple[InjectedFault, ...]:
    """The process-death faults ``MIEN_FAULT_INJECT`` asks ``stage`` to inject (empty when unset)."""
    spec = os.environ.get(FAULT_ENV)
    if not spec:
        return ()
    faults = []
    for item in spec.split(","):
        action, _, substring = item.strip().partition(":")
        if action in (f"{stage}_exit", f"{stage}_exit_once", f"{stage}_pause") and substring:
            faults.append(InjectedFault(stage, substring, once=action.endswith("_once"),
                                        pause=action.endswith("_pause")))
    return tuple(faults)


def exit_if_injected(faults: tuple[InjectedFault, ...], uri: str) -> None:
    """Kill this process if one of ``faults`` matches ``uri`` (a ``_once`` fault fires once)."""
    for f in faults:
        if f.pause or f.substring not in uri:
            continue
        if f.once:
            try:
                os.close(os.open(f.marker(), os.O_CREAT | os.O_EXCL | os.O_WRONLY))
            except FileExistsError:
                continue  # already fired once
        log.error("%s=%s: killing this %s worker (pid %d) on %s", FAULT_ENV, os.environ.get(FAULT_ENV),
                  f.stage, os.getpid(), uri)
        for handler in logging.getLogger().handlers:
            handler.flush()
        os._exit(FAULT_EXIT_CODE)


def pause_if_injected(faults: tuple[InjectedFault, ...], uri: str, timeout_s: float = 600.0) -> None:
    """Stop here while ``<marker>.paused`` exists if a pause fault of ``faults`` matches ``uri``
    (created here; whoever drives the test deletes it; after ``timeout_s`` the process goes on)."""
    for f in faults:
        if not f.pause or f.substring not in uri:
            continue
        flag = f.marker() + ".paused"
        with open(flag, "w") as fh:
            fh.write(f"{os.getpid()} {uri}\n")
        log.warning("%s=%s: %s paused on %s until %s is deleted", FAULT_ENV, os.environ.get(FAULT_ENV), f.stage,
                    uri, flag)
        deadline = time.monotonic() + timeout_s
        while os.path.exists(flag) and time.monotonic() < deadline:
            time.sleep(0.05)


def fail_at(setting: str, requested: object, reached: object, what: str,
            error: type[InjectedFailure] = InjectedFailure) -> None:
    """Raise ``error`` when the config ``setting`` asks for a crash at the point just ``reached``.

    ``what`` completes the message: what was persisted and how to resume."""
    if requested is not None and requested == reached:
        raise error(f"{setting}={requested}: {what}")
