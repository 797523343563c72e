"""``mien model init | inspect``: create and inspect model directories (``mien_model.json`` + safetensors).

Both log a warning when a component's licence does not allow commercial use (``workflows.core.licences``)."""

from __future__ import annotations

import argparse
import json
import sys

EPILOG = """\
examples:
  mien model init jobs/configs/model/tiny_cpu.yaml --output /tmp/mien-tiny   # build + save (untrained parts)
  mien model init --base /models/llava-1.5-7b-hf --output models/llava-lora --set vlm.lora.enabled=true
  mien model inspect /tmp/mien-tiny
  mien model inspect models:/mien@champion

The directory works with `mien annotate --model DIR`, `mien evaluate --model DIR` and as
init_from in a `mien train` config.
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("model", help="create a model directory from a config, or print one's manifest summary",
                       description="Create and inspect mien model directories (mien_model.json + safetensors).",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.set_defaults(handler=lambda args: _usage(p))
    msub = p.add_subparsers(dest="model_command", metavar="ACTION")
    a = msub.add_parser("init", help="build a model from a config (or around a pretrained VLM, --base) and save "
                                     "it as a model directory; prints its model id")
    a.add_argument("config", metavar="CONFIG", nargs="?",
                   help="model config YAML (see jobs/configs/model/; local or s3://); also --config")
    a.add_argument("--config", dest="config_file", metavar="FILE", help="the model config, given as an option")
    a.add_argument("--base", metavar="URI",
                   help="a plain Hugging Face image-text-to-text checkpoint (local, s3:// or models:/): the "
                        "directory references it by URI and sha256 and holds only trained parts; "
                        "--set vlm.lora.enabled=true makes it ready for `mien train` (init_from)")
    a.add_argument("--output", required=True, metavar="URI", help="local directory or s3:// prefix")
    a.add_argument("--set", dest="overrides", metavar="KEY=VALUE", action="append", default=[],
                   help="override a config key with a dotted path, e.g. --set seed=3 (repeatable)")
    a.set_defaults(handler=_init)
    a = msub.add_parser("inspect", help="print a model directory's manifest summary (JSON), with every "
                                        "component's licence and whether the model may be used commercially")
    a.add_argument("uri", metavar="URI", help="default, a directory, s3://..., or models:/name@alias")
    a.set_defaults(handler=_inspect)


def _usage(p: argparse.ArgumentParser) -> int:
    p.print_help()
    return 2


def _init(args: argparse.Namespace) -> int:
    from model import build_model, init_from_base, save_model
    from model.annotator import FacialAnnotator
    from model.config import load_model_config

    if args.config and args.config_file:
        print("mien model init: give the config once (CONFIG or --config FILE)", file=sys.stderr)
        return 2
    config = args.config or args.config_file
    if args.base:
        from model.model_dir import ModelDirError

        try:
            print(init_from_base(args.base, args.output, config, args.overrides))
        except (ModelDirError, ValueError) as e:
            print(f"mien model init: {e}", file=sys.stderr)
            return 2
        _warn_licences(args.output)
        return 0
    if not config:
        print("mien model init: give a model config (CONFIG or --config FILE) or --base CHECKPOINT", file=sys.stderr)
        return 2
    cfg = load_model_config(config, args.overrides)
    needs_llm = bool(cfg.llm.enabled and (not cfg.llm.source or cfg.llm.lora.enabled or cfg.face_prior.enabled
                                          or cfg.vision.enabled or cfg.fim.local_clue))
    target = build_model(cfg) if needs_llm else FacialAnnotator(cfg, f"{cfg.name}-{cfg.version}+unsaved")
    print(save_model(target, args.output))
    _warn_licences(args.output)
    return 0


def _warn_licences(output: str) -> None:
    """The licence warnings of the directory just written (its manifest alone is read back)."""
    from model.model_dir import MANIFEST, model_licences
    from workflows.core import storage
    from workflows.core.licences import warn

    warn(model_licences(json.loads(storage.read_text(storage.join(output, MANIFEST)))), f"model {output}")


def _inspect(args: argparse.Namespace) -> int:
    from model import open_model
    from model.model_dir import ModelDirError, compute_model_id, model_licences
    from workflows.core.licences import most_restrictive, to_dicts, warn

    try:
        directory, manifest = open_model(args.uri)
    except (ModelDirError, ValueError) as e:
        print(f"mien model inspect: {e}", file=sys.stderr)
        return 2
    arch = manifest["architecture"]
    licences = model_licences(manifest, directory)
    kind = "mien model"
    if arch.get("vlm", {}).get("source"):
        trained, fresh = sorted(manifest.get("parts", {})), manifest.get("fresh_parts", [])
        kind = ("pretrained VLM, " + (f"tuned ({', '.join(trained)})" if trained else
                                      f"untrained {', '.join(fresh)}" if fresh else "zero-shot"))
    summary = {
        "model_id": manifest.get("model_id") or compute_model_id(manifest),
        "kind": kind,
        "prior_weight": arch.get("prior_weight"),
        "components": manifest.get("components", {}),
        "parts": {k: {"file": v["file"], "parameters": v.get("parameters")}
                  for k, v in manifest.get("parts", {}).items()},
        "metrics": manifest.get("metrics", {}),
        # "may we use this model commercially?": the most restrictive component's answer
        "commercial_use": most_restrictive(c.commercial for c in licences),
        "licences": to_dicts(licences),
    }
    warn(licences, f"model {args.uri}")
    print(json.dumps(summary, indent=2))
    return 0
