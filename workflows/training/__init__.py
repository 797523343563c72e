"""``mien train``: ``instructions`` (instruction rows from pseudo-labels and labeled sets),
``datasets`` (labeled dataset parsers), ``data`` (examples), ``config`` (the training config and
DeepSpeed JSONs, which ship in ``deepspeed/``), ``staging`` (staged data, the run directory),
``recipe`` (the Ray-free training loop over a session), ``ray_train`` (the Ray Train adapter and
the ``train`` driver).
"""
