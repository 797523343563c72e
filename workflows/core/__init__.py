"""The Ray-free shared base every job and the model use: typed config loading (``config``),
local/S3 storage with retries (``storage``), pinned model files and sample media (``assets``),
fault injection for tests (``faults``) and the cluster connection (``cluster``, the one module
here that touches Ray, lazily). Nothing in here imports ``model`` or another pipeline.
"""
