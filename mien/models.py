"""``mien.load_model`` and ``mien.evaluate``: a model in this process, and its scores on labeled faces."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from mien.settings import job_config

if TYPE_CHECKING:
    from model.annotator import FacialAnnotator
    from workflows.evaluation.evaluate import EvaluationResult


def load_model(uri: str | os.PathLike[str] = "default", device: str = "auto",
               overrides: Sequence[str] | Mapping[str, Any] | None = None) -> FacialAnnotator:
    """Load a model into this process (no Ray), checksums verified; what annotate's MLLM stage loads.

    ``uri``: ``"default"`` (the offline default model), a model directory (``mien train``,
    ``mien model init``) or a plain Hugging Face VLM checkpoint (local or ``s3://``), or an
    MLflow ``models:/name@alias`` / ``runs:/`` URI (``MLFLOW_TRACKING_URI``, else
    ``sqlite:///mlflow.db``). ``device``: ``auto`` (CUDA when this process sees a GPU), ``cpu``,
    ``cuda[:N]``. ``overrides``: architecture settings as ``["generation.enabled=true"]`` or
    ``{"generation.enabled": True}``.

    The model's ``annotate(batch)`` scores B faces. ``batch`` is built by
    ``model.face_batch.build_face_batch(faces)`` from one mapping per face, any of:
    ``crop`` (S, S, 3) uint8 RGB aligned face; ``au_evidence`` (23,) in [0, 1] and ``fe_prior``
    (7,) probabilities (the face stage's measurements, ``au_evidence`` / ``fe_prior`` of the
    faces table); ``blendshapes`` (52,) in [0, 1]; ``pose`` (3,) yaw, pitch, roll in degrees;
    ``age`` in years; ``gender``; ``track_key`` int (faces of one track segment share it).
    Missing means not measured. It returns ``fe_probs`` (B, 7) float32, rows summing to 1, in
    ``model.taxonomy.FE_BASIC`` order; ``au_probs`` (B, 23) float32 in [0, 1] in ``AU_NAMES``
    order, NaN where the model cannot score an AU; ``description`` list[str | None] (None unless
    generation is on), parsed back as ``description_fe`` and ``description_aus``.
    """
    from model import load_model as load
    from workflows.core import storage
    from workflows.core.tracking import resolve_tracking_uri, use_tracking_for

    uri = storage.absolute(os.fspath(uri))
    use_tracking_for(uri, resolve_tracking_uri(None))
    return load(uri, device=device, overrides=overrides)


def evaluate(model: str | os.PathLike[str], data: str | os.PathLike[str],
             output: str | os.PathLike[str] | None = None, *, config: str | os.PathLike[str] | None = None,
             **settings: Any) -> EvaluationResult:
    """Score the labeled faces of ``data`` with ``model``, as ``mien evaluate``.

    ``model``: a model URI as :func:`load_model` takes. ``data``: an annotate output
    (pseudo-labels: the report warns when they are the model's own), instruction Parquet,
    labeled records, or ``FORMAT:LABEL_FILE`` (``rafdb:/data/RAF-DB/EmoLabel/list_patition_label.txt``).
    ``output``: write the JSON report there and PNG plots to ``<output stem>_plots/``.
    ``config`` / ``settings``: as :func:`mien.annotate`, over the evaluate config
    (``split="holdout"``, ``au_threshold=0.4``, ``max_faces=500``, ``mlflow__enabled=False``);
    a bad one raises :class:`~workflows.core.config.ConfigError`.

    Returns the :class:`~workflows.evaluation.evaluate.EvaluationResult`: ``report`` (dict:
    ``n_faces``; ``fe``: ``accuracy``, ``uar``, ``war``, ``ece`` in [0, 1], ``per_class_recall``,
    ``confusion_matrix``; ``au``: ``f1`` per AU and ``mean_f1``; None where the data has no such
    labels), ``model_id``, ``files`` written, ``mlflow_run_id``, ``wall_s`` seconds;
    ``print(result.render())`` gives the CLI's summary.
    """
    from workflows.evaluation.evaluate import EvaluateConfig
    from workflows.evaluation.evaluate import evaluate as run_evaluation

    cfg = job_config(EvaluateConfig, config, settings)
    return run_evaluation(os.fspath(model), os.fspath(data), cfg,
                          output=os.fspath(output) if output is not None else None)
