"""``mien forget``: remove every row of some videos from an annotate output and deny them for good."""

from __future__ import annotations

import argparse
import sys

from jobs.commands.arguments import ANNOTATE_OUTPUT_HELP, paragraphs


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "forget", help="remove every row of some videos from an annotate output, and never annotate them again",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=paragraphs(
            "Puts the videos on the output's deny-list (OUT/_privacy/forgotten.jsonl: the video id and a SHA-256 "
            "of the URI, never the URI) first, then removes their rows from videos/, faces/ and tracks/ (every "
            "run, replaced rows and damaged parts included) and their entries from runs/*.json, keeping the "
            "output exact for every reader throughout. A video id stands for its URI too. Interrupted, the same "
            "command finishes it. Refused (exit status 1) while another run writes to the output.",
            "Not reached: MLflow's copies of the run records, exports and reports made elsewhere, object "
            "versions a versioned bucket keeps (docs/OUTPUT.md, \"What is stored\"). OUT/report.html is rebuilt."))
    p.add_argument("--output", required=True, metavar="OUT", help=ANNOTATE_OUTPUT_HELP)
    p.add_argument("--video-id", dest="video_ids", action="append", default=[], metavar="ID",
                   help="a video_id (`mien inspect OUT --videos` lists them); repeatable")
    p.add_argument("--video-uri", dest="video_uris", action="append", default=[], metavar="URI",
                   help="a video's URI as annotated (local path or s3://); repeatable")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from workflows.core import storage
    from workflows.corpus.forget import ForgetRefused, forget

    if not args.video_ids and not args.video_uris:
        print("mien forget: name the videos to forget with --video-id ID or --video-uri URI", file=sys.stderr)
        return 2
    try:
        report = forget(args.output, args.video_ids, args.video_uris)
    except ForgetRefused as e:
        print(f"mien forget: {e}", file=sys.stderr)
        return 1
    print(report.render())
    html = storage.join(report.root, "report.html")
    if report.video_ids and storage.exists(html):  # `mien report`'s default file shows face crops
        from workflows.outputs.report import write_report

        write_report(report.root)
        print(f"rebuilt {html} without them")
    return 1 if report.overlapping or report.unreadable else 0
