"""The annotate output as data: ``schema`` (the column contract of DESIGN.md section 3),
``writer`` (Parquet parts, videos part last as the commit marker) and ``reader`` (committed
parts only). Every job that reads an annotate output goes through ``reader``.
"""
