"""MLflow for every mien job: one ``mlflow:`` config, the tracking-URI rule, runs, the model registry.

::

    MlflowConfig (the ``mlflow:`` section of annotate / train / evaluate / retrain configs)
      └─ resolve_tracking_uri: MLFLOW_TRACKING_URI ─► config ─► sqlite:///mlflow.db (made absolute)
    Tracker.start / reopen / find ─► log_params · log_metrics(step) · set_tags · log_dict · log_files
                                   ─► log_model_dir (artifacts + a registered version, alias) ─► end(status)
    Registry: aliased_version · model_source · tag_version · set_alias (the champion / candidate moves)

A :class:`Tracker` addresses its run by id through an ``MlflowClient``, never MLflow's global
active run, so Ray Train workers log into the run the driver opened and a resumed job reopens
its run. A new experiment always gets an explicit artifact location (``mlartifacts/`` beside a
sqlite database), never the Ray worker's working directory; the deprecated file store is never
the default. The ``mlflow`` section of a config never becomes params: its tracking URI may carry
a password. What a :class:`Tracker` logs (params, tags, dict and text artifacts) has URI
credentials masked (:func:`workflows.core.redact.redact`); the tracking URI used to connect is
not touched. mlflow is imported inside the functions, so importing this module costs nothing.
"""

from __future__ import annotations

import dataclasses
import os
import platform
import tempfile
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from workflows.core.redact import redact

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
MAX_PARAM_CHARS = 6000  # MLflow's limits for a param value and a run tag value
MAX_TAG_CHARS = 8000
_BATCH = 100  # params / tags per log_batch call (MLflow's limit); metrics go 1000 at a time


@dataclasses.dataclass
class MlflowConfig:
    """Where and how a job records itself in MLflow (each job config's ``mlflow:`` section; a job
    sets its own default ``experiment`` and rejects the settings it does not read)."""

    enabled: bool = True
    tracking_uri: str | None = None  # MLFLOW_TRACKING_URI wins; default sqlite:///mlflow.db
    experiment: str = "mien"
    # For a new experiment; default: mlartifacts/ beside a sqlite database (never the Ray worker's cwd).
    artifact_location: str | None = None
    registered_model: str | None = None  # train: default model.name; "" = do not register
    alias: str = "candidate"  # train: the alias its registered version gets
    run_id: str | None = None  # evaluate: log into this existing run (e.g. a training run's) instead

    def unused_settings(self, job: str, names: Iterable[str]) -> list[str]:
        """A problem for each of ``names`` set away from its default: ``job`` does not read it, and
        a setting that does nothing must not pass silently (one config class serves every job)."""
        defaults = MlflowConfig()
        return [f"mlflow.{n}: mien {job} does not use this setting; remove it" for n in names
                if getattr(self, n) != getattr(defaults, n)]


# ---------------------------------------------------------------------------------- the store


def resolve_tracking_uri(configured: str | None) -> str:
    """``MLFLOW_TRACKING_URI`` wins, then ``configured``, then ``sqlite:///mlflow.db``; a relative
    sqlite path is made absolute (Ray workers run in other directories)."""
    uri = os.environ.get("MLFLOW_TRACKING_URI") or configured or DEFAULT_TRACKING_URI
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        uri = "sqlite:///" + os.path.abspath(uri[len("sqlite:///"):])
    return uri


def default_artifact_location(tracking_uri: str) -> str | None:
    """``mlartifacts/`` beside a sqlite database; None lets a tracking server choose."""
    if tracking_uri.startswith("sqlite:///"):
        return str(Path(tracking_uri[len("sqlite:///"):]).parent / "mlartifacts")
    return None


def store_exists(tracking_uri: str) -> bool:
    """False for a sqlite store whose file does not exist (opening it would create it)."""
    if tracking_uri.startswith("sqlite:///"):
        return os.path.exists(tracking_uri[len("sqlite:///"):])
    return True


def use_tracking_for(model_uri: str | None, tracking_uri: str) -> None:
    """``models:/`` / ``runs:/`` model URIs resolve through MLflow's global tracking URI: point it at ours."""
    if model_uri and model_uri.startswith(("models:/", "runs:/")):
        import mlflow

        mlflow.set_tracking_uri(tracking_uri)


def ensure_experiment(name: str, tracking_uri: str, artifact_location: str | None = None) -> str:
    """Experiment id of ``name``, created when new with ``artifact_location`` (default:
    :func:`default_artifact_location`)."""
    import mlflow

    client = mlflow.MlflowClient(tracking_uri)
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    return client.create_experiment(name, artifact_location=artifact_location
                                    or default_artifact_location(tracking_uri))


# ---------------------------------------------------------------------------------- params


def flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}, "c": {}}`` → ``{"a.b": 1, "c": {}}`` (an empty mapping stays a value)."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, Mapping) and v:
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def config_params(config: Mapping[str, Any], drop: Iterable[str] = ()) -> dict[str, Any]:
    """A config tree (``to_dict`` of a job config) as flat MLflow params, without its ``mlflow``
    section (a tracking URI may carry a password) and without keys under the ``drop`` prefixes."""
    skip = ("mlflow.", *drop)
    return {k: v for k, v in flatten(config).items() if not k.startswith(skip) and k != "mlflow"}


def system_info() -> dict[str, str]:
    """Versions and hardware of this process as ``system.*`` tags (they may differ between
    resumed attempts, so they are tags, not params)."""
    import importlib.metadata as md

    info = {"python": platform.python_version(), "platform": platform.platform(), "hostname": platform.node(),
            "cpu_count": str(os.cpu_count())}
    for pkg in ("torch", "deepspeed", "ray", "transformers", "peft", "mlflow"):
        try:
            info[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            info[pkg] = "-"
    try:
        import torch

        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
            info["gpu_count"] = str(torch.cuda.device_count())
            info["cuda"] = str(torch.version.cuda)
    except Exception:  # noqa: BLE001 - system info is best effort
        pass
    return {f"system.{k}": v for k, v in info.items()}


# ---------------------------------------------------------------------------------- runs


@dataclasses.dataclass(frozen=True)
class LoggedModel:
    """A model directory logged by :meth:`Tracker.log_model_dir`."""

    uri: str  # what load_model takes: models:/name@alias, models:/name/version or runs:/<id>/<path>
    version: str | None  # the registered version; None when not registered


class Tracker:
    """One MLflow run. ``with Tracker.start(...) as run:`` ends it FINISHED, or FAILED on an
    exception; a long job holds ``run.run_id`` and ends it with :meth:`end`."""

    def __init__(self, tracking_uri: str, run_id: str):
        import mlflow

        self.tracking_uri = tracking_uri
        self.run_id = run_id
        self.client = mlflow.MlflowClient(tracking_uri)

    @classmethod
    def start(cls, tracking_uri: str, experiment: str, run_name: str | None = None,
              tags: Mapping[str, Any] | None = None, artifact_location: str | None = None) -> Tracker:
        """A new run in ``experiment`` (created when new, see :func:`ensure_experiment`)."""
        import mlflow

        exp_id = ensure_experiment(experiment, tracking_uri, artifact_location)
        run = mlflow.MlflowClient(tracking_uri).create_run(
            exp_id, run_name=run_name, tags={k: redact(str(v))[:MAX_TAG_CHARS] for k, v in (tags or {}).items()})
        return cls(tracking_uri, run.info.run_id)

    @classmethod
    def reopen(cls, tracking_uri: str, run_id: str) -> Tracker:
        """The existing run ``run_id``, RUNNING again (a resumed job). Raises when this store has no such run."""
        tracker = cls(tracking_uri, run_id)
        if tracker.client.get_run(run_id).info.status != "RUNNING":
            tracker.client.update_run(run_id, status="RUNNING")
        return tracker

    @classmethod
    def find(cls, tracking_uri: str, experiment: str, tags: Mapping[str, str],
             artifact_location: str | None = None) -> Tracker | None:
        """The run of ``experiment`` carrying all of ``tags``, reopened; None when there is none."""
        import mlflow

        exp_id = ensure_experiment(experiment, tracking_uri, artifact_location)
        where = " and ".join(f"tags.`{k}` = '{v}'" for k, v in tags.items())
        found = mlflow.MlflowClient(tracking_uri).search_runs([exp_id], where, max_results=1)
        return cls.reopen(tracking_uri, found[0].info.run_id) if found else None

    def __enter__(self) -> Tracker:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        self.end("FAILED" if exc_type is not None else "FINISHED")

    def log_params(self, params: Mapping[str, Any]) -> None:
        """Params (immutable in MLflow: log each key once per run), values as redacted text cut to 6000 chars."""
        from mlflow.entities import Param

        items = [Param(k, redact(str(v))[:MAX_PARAM_CHARS]) for k, v in params.items()]
        for s in range(0, len(items), _BATCH):
            self.client.log_batch(self.run_id, params=items[s:s + _BATCH])

    def log_metrics(self, metrics: Mapping[str, float], step: int = 0) -> None:
        """Numeric metrics at ``step`` (values that are not numbers are skipped)."""
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(k, float(v), now, int(step)) for k, v in metrics.items() if isinstance(v, int | float)]
        for s in range(0, len(items), 1000):
            self.client.log_batch(self.run_id, metrics=items[s:s + 1000])

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        """Run tags, values as redacted text cut to MLflow's 8000 chars."""
        from mlflow.entities import RunTag

        items = [RunTag(k, redact(str(v))[:MAX_TAG_CHARS]) for k, v in tags.items()]
        for s in range(0, len(items), _BATCH):
            self.client.log_batch(self.run_id, tags=items[s:s + _BATCH])

    def log_dict(self, obj: Mapping[str, Any], artifact_file: str) -> None:
        """``obj``, redacted, as a JSON (or YAML, by suffix) artifact."""
        self.client.log_dict(self.run_id, redact(dict(obj)), artifact_file)

    def log_text(self, text: str, artifact_file: str) -> None:
        """``text``, redacted, as an artifact (e.g. a config as YAML: its URIs may carry credentials)."""
        self.client.log_text(self.run_id, redact(text), artifact_file)

    def log_artifacts(self, local_dir: str, artifact_path: str | None = None) -> None:
        self.client.log_artifacts(self.run_id, local_dir, artifact_path)

    def log_files(self, files: Mapping[str, bytes], artifact_path: str | None = None) -> None:
        """In-memory files (``{"confusion_matrix.png": b"..."}``) as artifacts under ``artifact_path``."""
        with tempfile.TemporaryDirectory() as d:
            for name, data in files.items():
                Path(d, name).write_bytes(data)
            self.log_artifacts(d, artifact_path)

    def log_model_dir(self, directory: str, artifact_path: str = "model", registered_model_name: str | None = None,
                      alias: str | None = None) -> LoggedModel:
        """Log the local model directory ``directory`` under ``artifact_path`` and, with
        ``registered_model_name``, register it as a new version (``alias`` then points at it), tagged with
        the licences its ``mien_model.json`` records (:func:`workflows.core.licences.recorded_tags`)."""
        from workflows.core.licences import recorded_tags

        self.log_artifacts(directory, artifact_path)
        if not registered_model_name:
            return LoggedModel(f"runs:/{self.run_id}/{artifact_path}", None)
        try:
            self.client.get_registered_model(registered_model_name)
        except Exception:  # noqa: BLE001 - "does not exist" has no dedicated exception type
            self.client.create_registered_model(registered_model_name)
        source = f"{self.client.get_run(self.run_id).info.artifact_uri.rstrip('/')}/{artifact_path}"
        mv = self.client.create_model_version(registered_model_name, source=source, run_id=self.run_id,
                                              tags=recorded_tags(directory) or None)
        version = str(mv.version)
        if alias:
            self.client.set_registered_model_alias(registered_model_name, alias, version)
            return LoggedModel(f"models:/{registered_model_name}@{alias}", version)
        return LoggedModel(f"models:/{registered_model_name}/{version}", version)

    def end(self, status: str = "FINISHED") -> None:
        """Mark the run ``FINISHED`` / ``FAILED`` / ``KILLED`` (a later :meth:`reopen` resumes it)."""
        self.client.set_terminated(self.run_id, status=status)


# ---------------------------------------------------------------------------------- registry


class Registry:
    """MLflow's model registry at one tracking URI: versions, their tags and aliases.
    ``registry_uri``: where the registry is, when not where MLflow's own rule puts it
    (``MLFLOW_REGISTRY_URI``, else the tracking URI)."""

    def __init__(self, tracking_uri: str, registry_uri: str | None = None):
        import mlflow

        self.tracking_uri = tracking_uri
        self.client = mlflow.MlflowClient(tracking_uri, registry_uri=registry_uri)

    def version(self, name: str, version: str) -> Any | None:
        """The ``ModelVersion``, or None when the model or version does not exist."""
        from mlflow.exceptions import MlflowException

        try:
            return self.client.get_model_version(name, str(version))
        except MlflowException:
            return None

    def aliased_version(self, name: str, alias: str) -> Any | None:
        """The ``ModelVersion`` ``alias`` points at, or None (no such model or alias)."""
        from mlflow.exceptions import MlflowException

        try:
            model = self.client.get_registered_model(name)
        except MlflowException:
            return None
        version = (model.aliases or {}).get(alias)
        return self.version(name, str(version)) if version is not None else None

    def describe(self, name: str) -> str:
        """What this registry holds under ``name`` (its aliases and versions), or, when there is
        no such model, which models it has: what a "not found" message lists, so the user can pick."""
        from mlflow.exceptions import MlflowException

        try:
            model = self.client.get_registered_model(name)
        except MlflowException:
            names = sorted(m.name for m in self.client.search_registered_models(max_results=100))
            shown = ", ".join(names[:20]) + (f" ... ({len(names)} in all)" if len(names) > 20 else "")
            return f"there is no registered model {name!r}; registered models: {shown or 'none'}"
        aliases = ", ".join(f"@{a} (version {v})" for a, v in sorted((model.aliases or {}).items()))
        found = self.client.search_model_versions(f"name='{name}'")
        versions = ", ".join(str(v) for v in sorted(int(m.version) for m in found))
        return f"model {name!r} has aliases: {aliases or 'none'}; versions: {versions or 'none'}"

    def run_versions(self, name: str, run_id: str) -> list[str]:
        """Versions of ``name`` registered from run ``run_id``, oldest first."""
        found = self.client.search_model_versions(f"name='{name}' and run_id='{run_id}'")
        return [str(v) for v in sorted(int(m.version) for m in found)]

    def model_source(self, name: str, version: str) -> str:
        """Where a version's model directory lives: its artifact location when that is a local path
        or ``s3://`` (loadable by every worker without a registry lookup), else ``models:/name/version``."""
        try:
            uri = self.client.get_model_version_download_uri(name, version)
        except Exception:  # noqa: BLE001 - fall back to the registry URI
            uri = ""
        if uri.startswith("file://"):
            uri = uri[len("file://"):]
        if uri.startswith("s3://") or (uri.startswith("/") and os.path.isdir(uri)):
            return uri
        return f"models:/{name}/{version}"

    def tag_version(self, name: str, version: str, tags: Mapping[str, Any]) -> None:
        """Tags on a version, values as text (never cut: a version tag may hold JSON, e.g. a watermark)."""
        for k, v in tags.items():
            self.client.set_model_version_tag(name, str(version), k, str(v))

    def set_alias(self, name: str, alias: str, version: str) -> None:
        self.client.set_registered_model_alias(name, alias, str(version))
