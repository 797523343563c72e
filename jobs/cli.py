"""The ``mien`` command line: the top parser, one module per command (``jobs/commands/``), and the
errors every command turns into a message and exit status 2.

Start-up imports nothing heavy: each command imports its implementation when it runs, so
``mien --help`` answers instantly.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

# argparse only; each command's implementation is imported when it runs
from jobs.commands import (
    annotate,
    assets,
    evaluate,
    export,
    inspect,
    model,
    render,
    report,
    retrain,
    submit,
    train,
)

COMMANDS = (annotate, train, evaluate, retrain, inspect, report, render, export, model, assets, submit)

EPILOG = """\
examples:
  mien annotate --input videos/ --output out/                 # local Ray, offline default model
  mien annotate --input s3://bucket/corpus --output s3://bucket/labels --set decode.sampling=fps:1
  mien annotate --input manifest.parquet --output out/ --address ray://head:10001
  mien assets fetch --to s3://bucket/mien-assets               # pre-stage models for offline clusters
  mien model init jobs/configs/model/tiny_cpu.yaml --output /tmp/mien-tiny
  mien submit annotate --address http://127.0.0.1:8265 --wait -- --input ... --output ...

Each subcommand has its own --help. Configs: jobs/configs/; override any key with --set a.b=value.
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mien",
        description="Annotate facial expressions (FE) and action units (AU) in video corpora with a "
                    "multimodal LLM on Ray, and retrain the model on its own pseudo-labels.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="debug logging for mien itself (libraries stay at INFO: botocore's debug "
                             "output includes request credentials)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for command in COMMANDS:
        command.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argv, job_args = submit.split_job_args(list(sys.argv[1:] if argv is None else argv))
    args = parser.parse_args(argv)
    if job_args:
        args.job_args = [*args.job_args, *job_args]
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    if args.verbose:  # never the root logger: botocore would log signed headers and session tokens
        for name in ("workflows", "model", "jobs"):
            logging.getLogger(name).setLevel(logging.DEBUG)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        status = args.handler(args)
        sys.stdout.flush()  # a closed pipe shows here, inside the handler below, not at exit
        return status
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `mien inspect out --json | head`: the reader left; not an error of ours
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
        return 0
    except Exception as e:  # noqa: BLE001 - a problem the user can fix becomes a message and exit 2
        message = _user_error(e)
        if message is None:
            raise
        print(f"mien {args.command}: {message}", file=sys.stderr)
        return 2


def _user_error(e: Exception) -> str | None:
    """The message for an error the user can fix (a config, a missing asset, an unreadable annotate
    output, a path without permission), or None for one that deserves its traceback."""
    from workflows.core.assets import AssetError
    from workflows.core.config import ConfigError
    from workflows.corpus.reader import OutputError

    if isinstance(e, ConfigError | AssetError | OutputError):
        return str(e)
    if isinstance(e, PermissionError):
        return f"{e} (check the path, its permissions or your S3 credentials)"
    if isinstance(e, FileExistsError | NotADirectoryError | IsADirectoryError) or (
            isinstance(e, FileNotFoundError) and e.filename):
        return f"{e} (check the path you gave)"
    return None


if __name__ == "__main__":
    sys.exit(main())
