"""``mien annotate`` command: config loading, exit codes and the printed summary."""

from __future__ import annotations

import argparse
import logging
import sys


def run_annotate(args: argparse.Namespace) -> int:
    from model.checkpoint import ModelDirError
    from workflows.annotate.ingest import InputError
    from workflows.annotate.pipeline import AnnotateConfig, annotate
    from workflows.core.config import load_config

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
    except ModelDirError as e:
        print(f"mien annotate: model {cfg.model.uri}: {e}", file=sys.stderr)
        return 2
    except PermissionError as e:
        print(f"mien annotate: {e} (check the path, its permissions or your S3 credentials)", file=sys.stderr)
        return 2
    except OSError as e:  # storage still failing after retries with backoff (storage.with_retries)
        logging.getLogger(__name__).debug("storage failure", exc_info=True)
        print(f"mien annotate: storage error that persisted through retries: {type(e).__name__}: {e}. "
              "Committed parts are kept; rerun the same command to resume", file=sys.stderr)
        return 1
    print(summary.render())
    print(f"output: {args.output}  (videos/, faces/, tracks/, runs/{summary.run_id}.json)")
    return 0
