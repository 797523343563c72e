"""One module per ``mien`` command; ``jobs.cli`` registers them all on every start.

Each module exposes ``register(subparsers)``: it adds the command's parser (help, arguments,
examples) and sets ``handler``, which takes the parsed arguments and returns the exit status.
Only argparse is imported at module level (``mien --help`` must stay instant); a handler imports
its implementation when it runs.
"""
