"""The ``mien`` command line: the top parser, one module per command (``jobs/commands/``), and the
errors every command turns into a message and exit status 2.

Start-up imports nothing heavy: each command imports its implementation when it runs, so
``mien --help`` answers instantly.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys

# argparse only; each command's implementation is imported when it runs
from jobs.commands import (
    annotate,
    assets,
    evaluate,
    export,
    forget,
    inspect,
    model,
    render,
    report,
    retrain,
    review,
    submit,
    train,
)
from workflows.core.redact import RedactingFilter, redact

COMMANDS = (annotate, train, evaluate, retrain, inspect, report, render, export, review, forget, model, assets,
            submit)

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
                             "output includes request credentials), and the start-up notices of Ray "
                             "and the face libraries that are otherwise held back")
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
    install_log_redaction()
    if args.verbose:  # never the root logger: botocore would log signed headers and session tokens
        for name in ("workflows", "model", "jobs"):
            logging.getLogger(name).setLevel(logging.DEBUG)
    if args.command is None:
        parser.print_help()
        return 2
    previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        status = args.handler(args)
        sys.stdout.flush()  # a closed pipe shows here, inside the handler below, not at exit
        return status
    except Terminated:
        print(f"mien {args.command}: stopped by SIGTERM", file=sys.stderr)
        return 143
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
        print(f"mien {args.command}: {redact(message)}", file=sys.stderr)
        return 2
    finally:
        signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)


class Terminated(KeyboardInterrupt):
    """SIGTERM (``kill``, a scheduler stopping the job) taken the way Ctrl-C is: leases released,
    temporaries removed, the local Ray and worker processes shut down on the way out (exit 143)."""


def _terminate(signum: int, frame: object) -> None:
    raise Terminated


def install_log_redaction() -> None:
    """Mask URI credentials in every record the root logger's handlers emit (ours, and the libraries'
    that propagate): a handler filter, since a logger's filter never sees its children's records."""
    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, RedactingFilter) for f in handler.filters):
            handler.addFilter(RedactingFilter())


def _user_error(e: Exception) -> str | None:
    """The message for an error the user can fix (a config, a missing asset, an unreadable annotate
    output, an unusable model such as ``train``'s ``init_from``, a path without permission), or None
    for one that deserves its traceback."""
    from model.model_dir import ModelDirError
    from workflows.core.assets import AssetError
    from workflows.core.config import ConfigError
    from workflows.corpus.reader import OutputError

    if isinstance(e, ConfigError | AssetError | OutputError | ModelDirError):
        return str(e)
    if isinstance(e, PermissionError):
        return f"{e} (check the path, its permissions or your S3 credentials)"
    if isinstance(e, FileExistsError | NotADirectoryError | IsADirectoryError) or (
            isinstance(e, FileNotFoundError) and e.filename):
        return f"{e} (check the path you gave)"
    return None


if __name__ == "__main__":
    sys.exit(main())
