"""``mien annotate``: ``ingest`` lists the inputs, ``decode`` samples frames, ``stages`` are the
plain per-video stages (faces, MLLM, fused), ``runner`` maps them onto Ray Data actor pools and
``pipeline`` is the job (plan, resume, consume results, run record).
"""
