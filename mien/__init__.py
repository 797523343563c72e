"""mien from Python: annotate a corpus, read the output as DataFrames, load and evaluate models.

    import mien

    result = mien.annotate("clips/", "out/", decode__sampling="fps:1")  # as `mien annotate`
    print(result)                                       # the run's summary
    tables = mien.read("out/")                          # committed parts only, newest row per video
    happy = tables.faces[tables.faces.fe_prob_happiness > 0.8]
    model = mien.load_model("default")                  # model.annotate(batch): see its docstring
    report = mien.evaluate("models/tiny", "out/", split="holdout").report

The same code as the ``mien`` CLI runs underneath (``workflows/``, ``model/``): settings are the
CLI's config keys with ``__`` for the dot of ``--set`` and raise the same ``ConfigError``.
Importing this package is cheap: Ray, torch, MLflow and pandas load when a function needs them.
"""

from __future__ import annotations

from importlib.metadata import version

from mien.annotation import Annotation, annotate
from mien.models import evaluate, load_model
from mien.tables import AnnotationTables, read

__version__ = version("mien")

__all__ = ["Annotation", "AnnotationTables", "__version__", "annotate", "evaluate", "load_model", "read"]
