"""``mien train``: ``instructions`` (instruction rows from pseudo-labels and labeled sets),
``datasets`` (labeled dataset parsers), ``data`` (examples and staging), ``train`` (config,
loop, Ray Train + DeepSpeed wiring); DeepSpeed JSONs ship in ``deepspeed/``.
"""
