"""``mien train``: fine-tune the facial MLLM on Ray Train; config loading, exit codes, the summary.

Configuration problems exit with status 2 and the full list of problems (``jobs.cli``); a failed
training run exits with 1 and says how to resume it.
"""

from __future__ import annotations

import argparse
import sys

from jobs.commands.arguments import RAY_ADDRESS_HELP, TRAINING_DATA_HELP, add_config_args

DESCRIPTION = """\
Fine-tune the facial MLLM on instruction rows with Ray Train's TorchTrainer and DeepSpeed ZeRO
(stage 2 by default, 3 with --set deepspeed=zero3): LoRA on the LLM, trainable face-prior encoder
and Face Info Mining, frozen vision tower; bf16 on GPUs, fp32 on CPUs; loss on answer tokens only.
Data is split by group (video / subject / clip) into train / val / holdout. Checkpoints go to the
run's storage path; the final model is written as a model directory (mien_model.json +
safetensors), evaluated on the holdout split and registered in MLflow with alias `candidate`.
"""

EPILOG = """\
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


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train", help="fine-tune the facial MLLM (LoRA + Face Info Mining) with Ray Train + DeepSpeed ZeRO",
        formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EPILOG, description=DESCRIPTION)
    p.add_argument("--data", required=True, metavar="URI", help=TRAINING_DATA_HELP)
    p.add_argument("--output", required=True, metavar="URI", help="model directory to write (local or s3://)")
    add_config_args(p, "optim.lr=1e-4", configs="jobs/configs/train/")
    p.add_argument("--address", metavar="ADDR", default=None, help=RAY_ADDRESS_HELP)
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from workflows.training.config import load_train_config
    from workflows.training.ray_train import TrainingError, train

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
