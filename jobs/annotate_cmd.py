"""``mien annotate`` command: config loading, exit codes and the printed summary."""

from __future__ import annotations

import argparse
import sys


def run_annotate(args: argparse.Namespace) -> int:
    from workflows.annotate import AnnotateConfig, annotate
    from workflows.config import load_config
    from workflows.ingest import InputError

    overrides = list(args.overrides)
    if args.model:
        overrides.append(f"model.uri={args.model}")
    if args.address:
        overrides.append(f"ray.address={args.address}")
    cfg = load_config(AnnotateConfig, args.config, overrides)
    try:
        summary = annotate(args.input, args.output, cfg, force=args.force, limit=args.limit,
                           progress=not args.no_progress)
    except InputError as e:
        print(f"mien annotate: {e}", file=sys.stderr)
        return 2
    except PermissionError as e:
        print(f"mien annotate: {e} (check the path, its permissions or your S3 credentials)", file=sys.stderr)
        return 2
    print(summary.render())
    print(f"output: {args.output}  (videos/, faces/, tracks/, runs/{summary.run_id}.json)")
    return 0
