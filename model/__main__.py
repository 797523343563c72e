"""``python -m model``: create and inspect model directories.

    python -m model init CONFIG.yaml --output DIR [--set key=value ...]   # build + save (untrained parts)
    python -m model inspect URI                                            # manifest summary
"""

from __future__ import annotations

import argparse
import json
import sys


def _init(args: argparse.Namespace) -> int:
    from model import build_model, save_model
    from model.annotator import FacialAnnotator
    from model.config import load_model_config

    cfg = load_model_config(args.config, args.set or [])
    needs_llm = bool(cfg.llm.enabled and (not cfg.llm.source or cfg.llm.lora.enabled or cfg.face_prior.enabled
                                          or cfg.vision.enabled or cfg.fim.local_clue))
    target = build_model(cfg) if needs_llm else FacialAnnotator(cfg, f"{cfg.name}-{cfg.version}+unsaved")
    print(save_model(target, args.output))
    return 0


def _inspect(args: argparse.Namespace) -> int:
    from model.checkpoint import read_manifest, resolve_model_uri

    if args.uri == "default":
        from model.default import default_manifest

        manifest = default_manifest()
    else:
        manifest = read_manifest(resolve_model_uri(args.uri))
    arch = manifest["architecture"]
    summary = {
        "model_id": manifest.get("model_id", "(computed at load)"),
        "prior_weight": arch.get("prior_weight"),
        "components": manifest.get("components", {}),
        "parts": {k: {"file": v["file"], "parameters": v.get("parameters")} for k, v in manifest.get("parts", {}).items()},
        "metrics": manifest.get("metrics", {}),
    }
    print(json.dumps(summary, indent=2))
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m model", description="mien model directories")
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("init", help="build a model from a config and save it as a model directory")
    p.add_argument("config")
    p.add_argument("--output", required=True, help="local directory or s3:// prefix")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="config override (repeatable)")
    p.set_defaults(fn=_init)
    p = sub.add_parser("inspect", help="print a model directory's manifest summary")
    p.add_argument("uri", help="default, a directory, s3://..., or models:/name@alias")
    p.set_defaults(fn=_inspect)
    args = ap.parse_args(argv)
    return args.fn(args)


if __name__ == "__main__":
    sys.exit(main())
