"""Arguments and help texts that several ``mien`` commands share."""

from __future__ import annotations

import argparse
import textwrap

MODEL_URI_HELP = "model directory, s3:// URI, models:/name@alias, or 'default' (offline default)"
RAY_ADDRESS_HELP = "Ray cluster address (default: RAY_ADDRESS, else a local Ray on 127.0.0.1)"
ANNOTATE_OUTPUT_HELP = ("annotate output root (the --output of `mien annotate`): a local path or "
                        "s3://bucket/prefix")
TRAINING_DATA_HELP = ("training data: instruction Parquet (file or folder), a `mien annotate` output (its faces/ "
                      "are filtered into pseudo-labels), labeled records Parquet, or FORMAT:LABEL_FILE "
                      "(rafdb, affectnet, ferplus, dfew, ferv39k, mafw, bp4d, disfa); local or s3://")


def add_config_args(p: argparse.ArgumentParser, example: str, configs: str | None = None) -> None:
    """``--config FILE`` and repeatable ``--set KEY=VALUE``; ``configs`` names the folder of shipped configs."""
    where = f"see {configs}; local or s3://" if configs else "local or s3://"
    p.add_argument("--config", metavar="FILE", default=None,
                   help=f"YAML config ({where}); defaults apply without it")
    p.add_argument("--set", dest="overrides", metavar="KEY=VALUE", action="append", default=[],
                   help=f"override a config key with a dotted path, e.g. --set {example} (repeatable)")


def paragraphs(*texts: str) -> str:
    """Descriptions for RawDescriptionHelpFormatter (which keeps line breaks but does not wrap)."""
    return "\n\n".join(textwrap.fill(t, 92) for t in texts)
