"""``mien inspect``: a terminal summary of an annotate output."""

from __future__ import annotations

import argparse
import sys

from jobs.commands.arguments import ANNOTATE_OUTPUT_HELP


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("inspect", help="terminal summary of an annotate output",
                       description="Videos and errors by kind, faces, tracks, expression distribution, "
                                   "top AUs, model ids and runs; damaged parts with their repair (exit status 1 "
                                   "while there are any).")
    p.add_argument("output_root", metavar="OUT", help=ANNOTATE_OUTPUT_HELP)
    p.add_argument("--videos", action="store_true", help="also list every video with its status")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.add_argument("--check", action="store_true",
                   help="also check the output against its contract (docs/OUTPUT.md) and print every problem "
                        "(to stderr with --json); exit status 1 when there is one")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from workflows.corpus.reader import AnnotationOutput
    from workflows.outputs.inspect import inspect_output

    output = AnnotationOutput(args.output_root)
    print(inspect_output(output, as_json=args.json, list_videos=args.videos))
    status = 1 if output.damaged else 0  # the summary names the damaged parts and the rerun that repairs them
    if not args.check:
        return status
    from workflows.corpus.contract import check_output

    problems = check_output(args.output_root)
    out = sys.stderr if args.json else sys.stdout
    if not problems:
        print("contract: ok (docs/OUTPUT.md)", file=out)
        return status
    print(f"contract: {len(problems)} problem(s) (docs/OUTPUT.md)", file=out)
    for problem in problems:
        print(f"  - {problem}", file=out)
    return 1
