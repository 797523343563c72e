"""``mien train`` and ``mien evaluate``: argument parsing, config loading, exit codes, summaries.

Only argparse is imported at module level (``mien --help`` stays instant); each command imports
its workflow when it runs. Configuration problems exit with status 2 and the full list of
problems; a failed training run exits with 1 and says how to resume it.
"""

from __future__ import annotations

import argparse
import sys

COMMANDS = ("train", "evaluate")

_DATA_HELP = ("training data: instruction Parquet (file or folder), a `mien annotate` output (its faces/ are "
              "filtered into pseudo-labels), labeled records Parquet, or FORMAT:LABEL_FILE "
              "(rafdb, affectnet, ferplus, dfew, ferv39k, mafw, bp4d, disfa); local or s3://")

TRAIN_DESCRIPTION = """\
Fine-tune the facial MLLM on instruction rows with Ray Train's TorchTrainer and DeepSpeed ZeRO
(stage 2 by default, 3 with --set deepspeed=zero3): LoRA on the LLM, trainable face-prior encoder
and Face Info Mining, frozen vision tower; bf16 on GPUs, fp32 on CPUs; loss on answer tokens only.
Data is split by group (video / subject / clip) into train / val / holdout. Checkpoints go to the
run's storage path; the final model is written as a model directory (mien_model.json +
safetensors), evaluated on the holdout split and registered in MLflow with alias `candidate`.
"""

EVALUATE_DESCRIPTION = """\
Score every face of DATA once through the model's annotate() API and compare with the labels:
the arg-max FE class against fe_label, and the AUs with probability >= au_threshold against
au_active wherever au_labeled says the AU was annotated.
"""

TRAIN_EPILOG = """\
examples:
  mien train --config jobs/configs/train/tiny_cpu.yaml --data instructions/ --output models/tiny
  mien train --config jobs/configs/train/default_prior_lora_zero2.yaml --data out/ \\
      --output models/prior-lora --set optim.lr=1e-4 --set scaling.num_workers=4
  mien submit train --address http://HEAD:8265 -- --config jobs/configs/train/llama7b_clip_lora_zero3.yaml \\
      --data s3://bucket/instructions --output s3://bucket/models/llama7b-lora

Rerunning the same command resumes from the last checkpoint (checkpoint.storage_path/checkpoint.name,
default OUTPUT-checkpoints/run); use --set checkpoint.name=NEW for a fresh run. The exported model
works with `mien annotate --model OUTPUT` and is registered in MLflow as models:/NAME@candidate.
"""

EVALUATE_EPILOG = """\
examples:
  mien evaluate --model models/tiny --data instructions/ --split holdout --output eval/tiny.json
  mien evaluate --model models:/mien-tiny@candidate --data rafdb:/data/RAF-DB/EmoLabel/list_patition_label.txt
  mien evaluate --model default --data out/ --output eval/default_vs_pseudo.json

Reports FE accuracy, UAR, WAR, per-class recall, confusion matrix and ECE; per-AU F1 and mean F1.
Plots go to FILE_plots/ beside the JSON; everything is logged to MLflow (experiment mien-evaluate).
"""


def _config_args(p: argparse.ArgumentParser, example: str) -> None:
    p.add_argument("--config", metavar="FILE", default=None,
                   help="YAML config (local or s3://); defaults apply without it")
    p.add_argument("--set", dest="overrides", metavar="KEY=VALUE", action="append", default=[],
                   help=f"override a config key with a dotted path, e.g. --set {example} (repeatable)")


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """Register ``train`` and ``evaluate`` on the ``mien`` subparsers object."""
    raw = argparse.RawDescriptionHelpFormatter
    p = sub.add_parser(
        "train", help="fine-tune the facial MLLM (LoRA + Face Info Mining) with Ray Train + DeepSpeed ZeRO",
        formatter_class=raw, epilog=TRAIN_EPILOG,
        description=TRAIN_DESCRIPTION)
    p.add_argument("--data", required=True, metavar="URI", help=_DATA_HELP)
    p.add_argument("--output", required=True, metavar="URI", help="model directory to write (local or s3://)")
    _config_args(p, "optim.lr=1e-4")
    p.add_argument("--address", metavar="ADDR", default=None,
                   help="Ray cluster address (default: RAY_ADDRESS, else a local Ray on 127.0.0.1)")

    p = sub.add_parser(
        "evaluate", help="score faces with a model: FE accuracy/UAR/WAR/ECE, AU F1; JSON + plots + MLflow",
        formatter_class=raw, epilog=EVALUATE_EPILOG,
        description=EVALUATE_DESCRIPTION)
    p.add_argument("--model", required=True, metavar="URI",
                   help="model directory, s3:// URI, models:/name@alias, or 'default' (offline default)")
    p.add_argument("--data", required=True, metavar="URI",
                   help=_DATA_HELP.replace("training data", "labeled faces"))
    p.add_argument("--output", metavar="FILE.json", default=None,
                   help="write the report here (local or s3://), plots to FILE_plots/")
    p.add_argument("--split", metavar="NAME", default=None,
                   help="only instruction rows of this split (e.g. holdout); default all rows")
    _config_args(p, "au_threshold=0.4")


def run(args: argparse.Namespace) -> int:
    """Run ``train`` / ``evaluate`` from parsed arguments; returns the exit status."""
    from workflows.core.config import ConfigError

    try:
        if args.command == "train":
            return _train(args)
        if args.command == "evaluate":
            return _evaluate(args)
    except ConfigError as e:
        print(f"mien {args.command}: {e}", file=sys.stderr)
        return 2
    raise ValueError(f"not a train/evaluate command: {args.command}")


def _train(args: argparse.Namespace) -> int:
    from workflows.training.train import TrainingError, load_train_config, train

    overrides = list(args.overrides)
    if args.address:
        overrides.append(f"ray.address={args.address}")
    cfg = load_train_config(args.config, overrides)
    try:
        result = train(cfg, args.data, args.output)
    except (FileNotFoundError, PermissionError, ValueError) as e:
        print(f"mien train: {e}", file=sys.stderr)
        return 2
    except TrainingError as e:
        print(f"mien train: {e}", file=sys.stderr)
        return 1
    print(result.render())
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from model.checkpoint import ModelDirError
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
