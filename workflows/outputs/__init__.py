"""Tools that read a finished ``mien annotate`` output (DESIGN.md §3) and turn it into things
people look at or feed to tools they already use.

- :mod:`~workflows.corpus.reader`  reading videos/faces/tracks parts and runs JSON (local or s3://)
- :mod:`~workflows.outputs.summary`      corpus-level aggregates shared by ``inspect`` and ``report``
- :mod:`~workflows.outputs.render`       ``mien render``: the source video with the annotations drawn on
- :mod:`~workflows.outputs.report`       ``mien report``: one self-contained HTML file
- :mod:`~workflows.outputs.openface`     ``mien export openface``: OpenFace 2.0 FeatureExtraction CSVs
- :mod:`~workflows.outputs.hf`           ``mien export hf``: Parquet + dataset card for ``datasets``
- :mod:`~workflows.outputs.inspect`      ``mien inspect``: a terminal summary

None of them imports Ray or torch; they run on a laptop against an output on S3.
"""
