"""``mien report``: one self-contained HTML report of an annotate output."""

from __future__ import annotations

import argparse

from jobs.commands.arguments import ANNOTATE_OUTPUT_HELP


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "report", help="one self-contained HTML report (summary, charts, video table, face contact sheet)",
        description="Write one HTML file with no external resources: run summary, expression distribution, "
                    "AU frequency, per-video status with error messages, and a contact sheet of face crops.")
    p.add_argument("--input", required=True, metavar="OUT", help=ANNOTATE_OUTPUT_HELP)
    p.add_argument("--output", metavar="FILE", default=None, help="HTML file (local or s3://); default OUT/report.html")
    p.add_argument("--max-crops", type=int, default=48, metavar="N", help="faces on the contact sheet (default 48)")
    p.add_argument("--max-videos", type=int, default=1000, metavar="N",
                   help="rows in the video table, errors first (default 1000)")
    p.add_argument("--title", default="mien annotation report", help="report title")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from workflows.outputs.report import ReportOptions, write_report

    path = write_report(args.input, args.output, ReportOptions(max_crops=args.max_crops,
                                                               max_videos=args.max_videos, title=args.title))
    print(f"report: {path}")
    return 0
