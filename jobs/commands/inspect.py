"""``mien inspect``: a terminal summary of an annotate output."""

from __future__ import annotations

import argparse

from jobs.commands.arguments import ANNOTATE_OUTPUT_HELP


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("inspect", help="terminal summary of an annotate output",
                       description="Videos and errors by kind, faces, tracks, expression distribution, "
                                   "top AUs, model ids and runs.")
    p.add_argument("output_root", metavar="OUT", help=ANNOTATE_OUTPUT_HELP)
    p.add_argument("--videos", action="store_true", help="also list every video with its status")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from workflows.outputs.inspect import inspect_output

    print(inspect_output(args.output_root, as_json=args.json, list_videos=args.videos))
    return 0
