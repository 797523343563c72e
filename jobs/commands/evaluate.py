"""``mien evaluate``: score labeled faces with a model; config loading, exit codes, the summary."""

from __future__ import annotations

import argparse
import sys

from jobs.commands.arguments import MODEL_URI_HELP, TRAINING_DATA_HELP, add_config_args

DESCRIPTION = """\
Score every face of DATA once through the model's annotate() API and compare with the labels:
the arg-max FE class against fe_label, and the AUs with probability >= au_threshold against
au_active wherever au_labeled says the AU was annotated.
"""

EPILOG = """\
examples:
  mien evaluate --model models/tiny --data instructions/ --split holdout --output eval/tiny.json
  mien evaluate --model models:/mien-tiny@candidate --data rafdb:/data/RAF-DB/EmoLabel/list_patition_label.txt
  mien evaluate --model default --data out/ --output eval/default_vs_pseudo.json

Reports FE accuracy, UAR, WAR, per-class recall, confusion matrix and ECE; per-AU F1 and mean F1.
Plots go to FILE_plots/ beside the JSON; everything is logged to MLflow (experiment mien-evaluate).
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "evaluate", help="score faces with a model: FE accuracy/UAR/WAR/ECE, AU F1; JSON + plots + MLflow",
        formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EPILOG, description=DESCRIPTION)
    p.add_argument("--model", required=True, metavar="URI", help=MODEL_URI_HELP)
    p.add_argument("--data", required=True, metavar="URI",
                   help=TRAINING_DATA_HELP.replace("training data", "labeled faces"))
    p.add_argument("--output", metavar="FILE.json", default=None,
                   help="write the report here (local or s3://), plots to FILE_plots/")
    p.add_argument("--split", metavar="NAME", default=None,
                   help="only instruction rows of this split (e.g. holdout); default all rows")
    add_config_args(p, "au_threshold=0.4")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from model.model_dir import ModelDirError
    from workflows.core.config import load_config
    from workflows.evaluation.evaluate import EvaluateConfig, evaluate

    overrides = list(args.overrides)
    if args.split:
        overrides.append(f"split={args.split}")
    cfg = load_config(EvaluateConfig, args.config, overrides)
    try:
        result = evaluate(args.model, args.data, cfg, output=args.output)
    except (FileNotFoundError, PermissionError, ValueError, ModelDirError) as e:
        print(f"mien evaluate: {e}", file=sys.stderr)
        return 2
    print(result.render())
    return 0
