"""``mien retrain``: one retraining cycle; config loading, exit codes, the printed plan / outcome.

Exit status: 0 for every finished cycle (no new data, not enough data, not promoted, promoted,
dry run); 2 for configuration problems and missing inputs; 1 when training failed (rerun the
same command: it resumes where the cycle stopped).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from jobs.commands.arguments import add_config_args

# Where the shipped jobs/configs live (a checkout or site-packages): relative paths in retrain
# configs, such as the default train.config, are found there after the working directory and
# the config file's own directory.
INSTALL_ROOT = str(Path(__file__).resolve().parents[2])

DESCRIPTION = """\
One retraining cycle, safe to run on a schedule (it holds no scheduler loop):
annotate runs newer than the champion's data watermark -> pseudo-labels filtered by confidence,
track agreement, per-track and per-class caps -> split by video/track (nothing leaks across
splits) -> train with `mien train` (from the champion's weights by default) -> evaluate the
candidate and the champion on the same fixed holdout -> register -> move the `champion` alias
only when the candidate is better by the configured margin (a first champion must reach the
configured minimum). The decision and its reasons are recorded in MLflow.
No new data: says so and changes nothing. A crashed cycle is finished by the next run of the
same command (finished steps are reused, nothing is promoted twice).
"""

EPILOG = """\
examples:
  mien retrain --config jobs/configs/retrain/local.yaml --data demo-output --dry-run
  mien retrain --config jobs/configs/retrain/local.yaml --data demo-output
  mien retrain --config jobs/configs/retrain/local.yaml --set promotion.margin=0.02 --set holdout.uri=holdout/
  mien submit retrain --address http://HEAD:8265 --wait -- --config jobs/configs/retrain/cluster.yaml \\
      --data s3://bucket/annotations/

--data takes annotate outputs or a prefix holding several (one per night); it adds to data.sources.
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "retrain", help="retrain on new pseudo-labels; promote the candidate only when it beats the champion",
        description=DESCRIPTION, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_args(p, "promotion.margin=0.02", configs="jobs/configs/retrain/")
    p.add_argument("--data", dest="data", metavar="URI", nargs="+", action="extend", default=[],
                   help="annotate output(s), or a prefix holding several; added to data.sources (repeatable)")
    p.add_argument("--dry-run", action="store_true",
                   help="print the plan (new runs, counts after filtering, what would be trained and evaluated) "
                        "and change nothing")
    p.add_argument("--address", metavar="ADDR", default=None,
                   help="Ray cluster address for training (default: RAY_ADDRESS, else a local Ray on 127.0.0.1)")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from model.model_dir import ModelDirError
    from workflows.retrain.cycle import load_retrain_config, retrain
    from workflows.training.ray_train import TrainingError

    try:
        cfg = load_retrain_config(args.config, args.overrides, search_dirs=[INSTALL_ROOT])
        result = retrain(cfg, args.data, dry_run=args.dry_run, ray_address=args.address)
    except (FileNotFoundError, PermissionError, ValueError) as e:  # ConfigError is a ValueError
        print(f"mien retrain: {e}", file=sys.stderr)
        return 2
    except (TrainingError, ModelDirError) as e:
        print(f"mien retrain: {e}", file=sys.stderr)
        return 1
    print(result.render())
    return 0
