"""``mien annotate``: label every face of a corpus into Parquet; exit codes and the printed summary."""

from __future__ import annotations

import argparse
import logging
import sys
import time

from jobs.commands.arguments import MODEL_URI_HELP, RAY_ADDRESS_HELP, add_config_args


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("annotate", help="label every face in a corpus into Parquet (videos/faces/tracks)",
                       description="Run the annotate pipeline: discover -> decode+sample -> faces -> tracks "
                                   "-> MLLM -> Parquet. Reruns on the same OUTPUT only process videos "
                                   "without an ok row, except those whose error is in the file itself "
                                   "(--retry-errors); a changed file is a new video.")
    p.add_argument("--input", required=True, metavar="URI",
                   help="a directory, s3://bucket/prefix, a media file, or a manifest (.parquet/.csv/.jsonl "
                        "with a 'uri' column)")
    p.add_argument("--output", required=True, metavar="URI", help="output root (local path or s3://...)")
    p.add_argument("--model", metavar="URI", default=None, help=MODEL_URI_HELP)
    add_config_args(p, "faces.crop_size=336", configs="jobs/configs/annotate/")
    p.add_argument("--address", metavar="ADDR", default=None, help=RAY_ADDRESS_HELP)
    p.add_argument("--force", action="store_true", help="re-annotate videos that already have an ok row")
    p.add_argument("--retry-errors", action="store_true",
                   help="also retry videos whose earlier error is in the file itself (cannot decode, over a "
                        "decode limit, timeout); a plain rerun retries only errors that can pass (crashed "
                        "workers, storage, access) and files that changed")
    p.add_argument("--limit", type=int, default=None, metavar="N", help="only the first N videos (smoke runs)")
    p.add_argument("--executor", choices=("auto", "local", "ray"), default=None,
                   help="where the stages run: local worker processes (no Ray; small jobs start in seconds), "
                        "Ray, or auto (default: local for a small job without a cluster address; "
                        "executor.local_max_videos)")
    p.add_argument("--dry-run", action="store_true",
                   help="plan only: read the input, check it against OUTPUT (already done, errors not retried, "
                        "deny-list) and print what a run would annotate, where and in how many chunks; writes "
                        "nothing")
    p.add_argument("--no-progress", action="store_true", help="no progress bars (logs only)")
    p.set_defaults(handler=run)


def process_age_s() -> float | None:
    """Seconds since this process started (the interpreter, the CLI and its imports so far)."""
    try:
        import psutil

        return max(0.0, time.time() - psutil.Process().create_time())
    except Exception:  # noqa: BLE001 - a missing figure in the breakdown, nothing more
        return None


def run(args: argparse.Namespace) -> int:
    from model.model_dir import ModelDirError
    from workflows.annotate.ingest import InputError
    from workflows.annotate.pipeline import AnnotateConfig, annotate
    from workflows.core.config import load_config
    from workflows.core.redact import redact
    from workflows.corpus.lease import LeaseLost

    overrides = list(args.overrides)
    if args.model:
        overrides.append(f"model.uri={args.model}")
    if args.address:
        overrides.append(f"ray.address={args.address}")
    if args.executor:
        overrides.append(f"executor.kind={args.executor}")
    cfg = load_config(AnnotateConfig, args.config, overrides)
    try:
        summary = annotate(args.input, args.output, cfg, force=args.force, limit=args.limit,
                           progress=not args.no_progress, startup_s=process_age_s(), retry_errors=args.retry_errors,
                           dry_run=args.dry_run)
    except InputError as e:
        print(f"mien annotate: {redact(str(e))}", file=sys.stderr)
        return 2
    except ModelDirError as e:
        print(f"mien annotate: model {cfg.model.uri}: {e}", file=sys.stderr)
        return 2
    except PermissionError:  # not a storage fault to resume from: jobs.cli names the fix, exit 2
        raise
    except LeaseLost as e:  # frozen or cut off long enough that other runs may take its videos over
        print(f"mien annotate: stopped before committing more: {e}. Committed parts are kept; rerun the same "
              "command to resume", file=sys.stderr)
        return 1
    except OSError as e:  # storage still failing after retries with backoff (storage.with_retries)
        logging.getLogger(__name__).debug("storage failure", exc_info=True)
        print(f"mien annotate: storage error that persisted through retries: {type(e).__name__}: {redact(str(e))}. "
              "Committed parts are kept; rerun the same command to resume", file=sys.stderr)
        return 1
    print(redact(summary.render(verbose=getattr(args, "verbose", False))))  # manifest entries may carry credentials
    if summary.dry_run:
        return 0
    print(f"output: {args.output}  (videos/, faces/, tracks/, runs/{summary.run_id}.json)")
    if cfg.mlflow.enabled:  # a default sqlite store appears in the working directory: say where
        from workflows.core.tracking import resolve_tracking_uri

        print(f"mlflow: {redact(resolve_tracking_uri(cfg.mlflow.tracking_uri))}, experiment "
              f"{cfg.mlflow.experiment}, run name {summary.run_id}  (--set mlflow.enabled=false: no tracking)")
    return 0
