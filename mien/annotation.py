"""``mien.annotate``: the annotate pipeline from Python, the same run as ``mien annotate``.

It calls :func:`workflows.annotate.pipeline.annotate` with a config built as the CLI builds it,
so outputs, reruns (only videos without an ``ok`` row), leases and errors are the CLI's.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
from typing import TYPE_CHECKING, Any

from mien.settings import job_config
from mien.tables import AnnotationTables, read

if TYPE_CHECKING:
    import pandas as pd

    from workflows.annotate.pipeline import AnnotateSummary

log = logging.getLogger(__name__)


@dataclasses.dataclass
class Annotation:
    """What :func:`annotate` returns: the run's ``summary``
    (:class:`~workflows.annotate.pipeline.AnnotateSummary`: counts, errors, timings, ``run_id``),
    the ``input`` and ``output`` as absolute paths (or URIs), and the output's tables, read on
    first access through :func:`mien.read` (``tables``; ``videos``, ``faces``, ``tracks``).

    The tables are the whole output, earlier runs' videos included, not only this run's."""

    summary: AnnotateSummary
    input: str
    output: str

    @functools.cached_property
    def tables(self) -> AnnotationTables:
        return read(self.output)

    @property
    def videos(self) -> pd.DataFrame:
        return self.tables.videos

    @property
    def faces(self) -> pd.DataFrame:
        return self.tables.faces

    @property
    def tracks(self) -> pd.DataFrame:
        return self.tables.tracks

    def __str__(self) -> str:
        return f"{self.summary.render()}\noutput: {self.output}"


def annotate(input: str | os.PathLike[str], output: str | os.PathLike[str] | None = None, *,
             config: str | os.PathLike[str] | None = None, force: bool = False, retry_errors: bool = False,
             limit: int | None = None, progress: bool = False, **settings: Any) -> Annotation:
    """Annotate every face of ``input`` into ``output``; returns an :class:`Annotation`.

    ``input``: a directory, an ``s3://`` prefix, a media file, or a manifest (``.parquet`` /
    ``.csv`` / ``.jsonl`` with a ``uri`` column). ``output``: the output root (local or
    ``s3://``); None writes to a new directory under the asset cache
    (``$MIEN_CACHE_DIR/outputs/annotate-*``, kept until you delete it; ``result.output`` says
    which). Relative paths are taken from the working directory.

    ``config``: a YAML file as ``mien annotate --config``; ``settings``: any config key, with
    ``__`` for the dot of ``--set`` (``decode__sampling="fps:1"``, ``model__uri="models/tiny"``,
    ``ray__address="auto"``, ``output__crops=False``, ``mlflow__enabled=False``), applied over
    ``config``. A bad key or value raises :class:`~workflows.core.config.ConfigError` before
    anything runs. ``force``: redo videos that already have an ``ok`` row; ``retry_errors``: also
    retry videos whose earlier error is in the file itself (a rerun skips them); ``limit``: only the
    first N videos; ``progress``: Ray Data progress bars.

    Where it runs is the CLI's choice (``executor__kind``): a small job without a cluster address
    in worker processes on this machine (no Ray); otherwise on ``ray__address`` / ``RAY_ADDRESS``
    or an embedded local Ray, started on the first call and kept for the next ones in this
    process (``ray.shutdown()`` ends it).
    Raises as the pipeline does: :class:`~workflows.annotate.ingest.InputError` (unusable input),
    :class:`~model.model_dir.ModelDirError` (unusable model), ``PermissionError`` (output not
    writable), ``OSError`` (storage failing through its retries; committed parts are kept and a
    rerun resumes).
    """
    from workflows.annotate.pipeline import AnnotateConfig
    from workflows.annotate.pipeline import annotate as run_pipeline
    from workflows.core import storage

    cfg = job_config(AnnotateConfig, config, settings)
    input_uri = storage.absolute(os.fspath(input))
    output_uri = storage.absolute(os.fspath(output)) if output is not None else _new_output_dir()
    summary = run_pipeline(input_uri, output_uri, cfg, force=force, limit=limit, progress=progress,
                           retry_errors=retry_errors)
    log.info("annotated %s into %s", input_uri, summary.output)
    return Annotation(summary=summary, input=input_uri, output=summary.output)


def _new_output_dir() -> str:
    """A fresh directory under the asset cache for an annotate call without ``output``."""
    import tempfile

    from workflows.core.assets import cache_dir

    parent = cache_dir() / "outputs"
    parent.mkdir(parents=True, exist_ok=True)
    return os.path.abspath(tempfile.mkdtemp(prefix="annotate-", dir=parent))
