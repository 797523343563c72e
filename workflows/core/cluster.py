"""The cluster connection, the one place every job meets Ray: connect to ``--address`` /
``RAY_ADDRESS`` (shipping the project's packages to a remote cluster) or start an embedded
single-node Ray bound to loopback. Ray is imported inside the functions, so importing this
module costs nothing.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import logging
import os
import signal
import threading
from collections.abc import Iterator
from typing import Any

log = logging.getLogger(__name__)


@dataclasses.dataclass
class ClusterConfig:
    """Where a job runs (the ``ray:`` section of every job config)."""

    address: str | None = None  # else RAY_ADDRESS, else a local Ray on 127.0.0.1
    num_cpus: int | None = None  # local Ray only

    def connect(self) -> dict[str, Any]:
        """Connect (see :func:`init_ray`); returns the cluster's resources."""
        return init_ray(self.address, self.num_cpus)


def init_ray(address: str | None = None, num_cpus: int | None = None) -> dict[str, Any]:
    """Connect to ``address`` (or ``RAY_ADDRESS``); with neither, start a local Ray that listens
    on 127.0.0.1 only (no dashboard; token auth as Ray's default). Returns the cluster's resources.

    Unless mien logs at debug level (``mien -v``), Ray's and the workers' start-up notices are held
    back (:func:`_quiet_workers`): they would bury mien's own messages. A SIGTERM handler the
    caller installed (``mien``'s) is put back after ``ray.init``, which replaces it."""
    import ray

    if not ray.is_initialized():
        quiet = _quiet()
        env_vars = dict(QUIET_WORKER_ENV) if quiet else {}
        addr = address or os.environ.get("RAY_ADDRESS")
        with _sigterm_handler_kept():
            if addr:
                kwargs: dict[str, Any] = {"address": addr, "log_to_driver": True}
                # Ray 2.60 marks a submitted job's driver with RAY_JOB_CONFIG_JSON_ENV_VAR (its
                # runtime env) and no RAY_JOB_SUBMISSION_ID.
                in_job = os.environ.get("RAY_JOB_SUBMISSION_ID") or os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR")
                if not in_job:
                    # A plain driver on a remote cluster ships our packages; inside a Ray job the
                    # job's working_dir already carries them (and its runtime env sets the workers'
                    # environment). Paths, not module objects: Ray deep-copies the runtime env when
                    # it merges it with a job's.
                    packages = project_packages()
                    kwargs["runtime_env"] = {"py_modules": packages, **({"env_vars": env_vars} if env_vars else {})}
                log.info("connecting to Ray at %s", addr)
                ray.init(**kwargs)
            else:
                _drop_token_auth_notice()
                with _loopback_only():
                    ray.init(address="local", num_cpus=num_cpus, include_dashboard=False,
                             dashboard_host="127.0.0.1", log_to_driver=True, configure_logging=False,
                             runtime_env={"env_vars": env_vars} if env_vars else None)
        if quiet:
            _quiet_workers()
    return ray.cluster_resources()


# The native start-up notices of the face libraries (a dozen lines per worker process), by how they
# begin: glog/absl (W0000 ..., I0000 ...: MediaPipe), LiteRT, OpenCV. MediaPipe's absl log and LiteRT's
# read no environment variable (GLOG_minloglevel, TF_CPP_MIN_LOG_LEVEL change nothing), so the local
# executor holds them back while its workers load the libraries and the Ray path drops them from
# the worker output forwarded to the driver; ``mien -v`` shows them.
NATIVE_NOTICES = ("W0000 ", "I0000 ", "WARNING: Logging before InitGoogle", "INFO: Created TensorFlow Lite",
                  "[ WARN:", "[ INFO:")

# What quiets a Ray worker at the source; OpenCV is the one library among them that reads its level
# from the environment.
QUIET_WORKER_ENV = {"OPENCV_LOG_LEVEL": "ERROR"}


def _quiet_workers() -> None:
    """Drop :data:`NATIVE_NOTICES` from the worker output Ray forwards to this driver's stderr,
    whenever they come (a forwarded line says nothing of when in the worker's life it was written).

    The lines stay in each worker's log file in the Ray session directory. Ray 2.60 (pinned) prints
    forwarded worker output through the handler ``ray_print_logs`` of its stream dispatcher, which
    has no public filter: the handler is wrapped, under its name, so ``ray.shutdown`` still removes it.
    """
    from ray._private.ray_logging import global_worker_stdstream_dispatcher as dispatcher

    for name, handler in list(dispatcher.handlers):
        if name == "ray_print_logs" and not isinstance(handler, _WithoutNotices):
            dispatcher.remove_handler(name)
            dispatcher.add_handler(name, _WithoutNotices(handler))


class _WithoutNotices:
    """A forwarded-output handler that passes on every line but :data:`NATIVE_NOTICES`."""

    def __init__(self, handler: Any):
        self.handler = handler

    def __call__(self, data: dict[str, Any]) -> None:
        lines = [line for line in data.get("lines", []) if not line.startswith(NATIVE_NOTICES)]
        if lines:
            self.handler({**data, "lines": lines})


def _quiet() -> bool:
    """Whether to hold Ray's and the workers' notices back: unless ``mien -v`` (mien at debug level)."""
    return not logging.getLogger("workflows").isEnabledFor(logging.DEBUG)


def _drop_token_auth_notice() -> None:
    """Drop Ray's notice that a new local cluster has token auth on (its default, kept as it is),
    a warning on every run that only says how to turn it off, unless :func:`_quiet` is off. Its
    warning that auth is *off* stays. A filter on the one logger that prints it; Ray 2.60 has no
    setting for the notice."""
    notices = logging.getLogger("ray._private.authentication.authentication_token_setup")
    if not any(isinstance(f, _TokenAuthOnNotice) for f in notices.filters):
        notices.addFilter(_TokenAuthOnNotice())


class _TokenAuthOnNotice(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not (_quiet() and record.getMessage().startswith("Token authentication is enabled for this Ray"))


@contextlib.contextmanager
def _sigterm_handler_kept() -> Iterator[None]:
    """Put back a SIGTERM handler installed from Python (``mien``'s: a clean exit that shuts Ray
    down) after ``ray.init`` replaced it: Ray's own handler exits with status 15 and the signal
    handler its core worker adds prints a stack dump and aborts. Without one (a notebook, a
    library caller) Ray's stays; off the main thread nothing can be installed."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    before = signal.getsignal(signal.SIGTERM)
    try:
        yield
    except SystemExit as e:  # Ray's handler took a SIGTERM that came while Ray started
        if callable(before) and e.code == signal.SIGTERM:
            before(signal.SIGTERM, None)
        raise
    finally:
        if callable(before):
            signal.signal(signal.SIGTERM, before)


@contextlib.contextmanager
def _loopback_only() -> Iterator[None]:
    """Keep an embedded single-node Ray off the network while it starts.

    Ray has no public switch for this: its node IP is the host's address, and GCS, raylet,
    workers and the dashboard/job agent listen on all interfaces or on that address. With
    cluster mode off (``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``, Ray's laptop setting) the node
    IP is 127.0.0.1 and every server binds to loopback; no other node can join, which an
    embedded cluster does not need. Child processes read the variable at start-up; this
    process imported ray already, so its cached flag is switched for the duration too.
    """
    from ray._private import ray_constants

    key = ray_constants.ENABLE_RAY_CLUSTERS_ENV_VAR
    saved_env, saved_flag = os.environ.get(key), ray_constants.ENABLE_RAY_CLUSTER
    os.environ[key] = "0"
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = saved_flag
        if saved_env is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = saved_env


def node_resources() -> list[dict[str, float]]:
    """Resources of each alive node of the connected cluster (for per-node pool packing);
    empty when Ray is not connected (the plan then treats the totals as one node)."""
    import ray

    if not ray.is_initialized():
        return []
    return [dict(n.get("Resources") or {}) for n in ray.nodes() if n.get("Alive")]


def project_packages() -> list[str]:
    """Directories of the packages a Ray worker needs to run any mien stage (``workflows``,
    ``model``), found without importing them: shipped as ``py_modules`` to remote clusters."""
    out = []
    for name in ("workflows", "model"):
        spec = importlib.util.find_spec(name)
        if spec is None or not spec.submodule_search_locations:
            raise RuntimeError(f"package {name!r} not importable; install mien (pip install -e .) first")
        out.append(str(list(spec.submodule_search_locations)[0]))
    return out
