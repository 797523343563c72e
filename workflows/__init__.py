"""mien's pipelines, grouped by role; each folder's docstring says what lives there.

    core/        the Ray-free shared base: config loading, storage (local/S3), pinned assets,
                 MLflow tracking, fault injection, and the cluster connection
    corpus/      the annotate output: schema (the contract), writer (commit markers), reader
                 (committed parts only; every job reads outputs through it)
    annotate/    ``mien annotate``: discovery, decode, stages, the Ray Data runner, the job
    faces/       face extraction: detection, alignment, landmarks, attributes, AU evidence, tracks
    training/    ``mien train``: config, instruction data, labeled datasets, the training loop
    evaluation/  ``mien evaluate``: predictions, metrics, reports
    retrain/     ``mien retrain``: the scheduled pseudo-label -> train -> evaluate -> promote cycle
    outputs/     inspect, report, render, exports of a finished annotate output

Layers point down: ``model`` imports only ``workflows.core``; pipelines import ``model`` and
``workflows``, never ``jobs`` (tests/test_layers.py enforces it).
"""
