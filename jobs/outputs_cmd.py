"""``mien render | report | export | inspect``: look at an annotate output and hand it to other tools.

Only argparse is imported at module level: ``jobs/cli.py`` registers these subcommands on
every start, and ``mien --help`` must stay instant. Each command imports its implementation
when it runs.
"""

from __future__ import annotations

import argparse
import sys
import textwrap

COMMANDS = ("render", "report", "export", "inspect")

_OUTPUT_HELP = "annotate output root (the --output of `mien annotate`): a local path or s3://bucket/prefix"


def _paragraphs(*texts: str) -> str:
    """Descriptions for RawDescriptionHelpFormatter (which keeps line breaks but does not wrap)."""
    return "\n\n".join(textwrap.fill(t, 92) for t in texts)


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """Register the output subcommands on the ``mien`` subparsers object."""
    raw = argparse.RawDescriptionHelpFormatter

    p = sub.add_parser(
        "render", help="MP4 of a source video with boxes, track ids, expression and top AUs drawn on",
        formatter_class=raw,
        description=_paragraphs(
            "Re-decode one annotated video and draw, on every frame, each face's box, #track, expression "
            "label + confidence and its top active AUs (H.264, source timestamps kept, no audio).",
            "Faces are annotated on sampled frames only: a face is held until its track's next sampled "
            "frame and dropped after --max-gap seconds."),
        epilog="example:\n  mien render --input out/ --video 3f2a9c --output interview.mp4")
    p.add_argument("--input", required=True, metavar="OUT", help=_OUTPUT_HELP)
    p.add_argument("--video", required=True, metavar="ID",
                   help="video_id, a unique prefix of it, the source URI, or the source file name")
    p.add_argument("--output", metavar="FILE", default=None,
                   help="where to write (local or s3://; .jpg/.png writes one annotated frame); "
                        "default OUT/renders/<video_id>.mp4")
    p.add_argument("--max-gap", type=float, default=None, metavar="SECONDS",
                   help="hold a face at most this long after its last annotated frame "
                        "(default: 1.5 x the sampling step)")
    p.add_argument("--top-aus", type=int, default=3, metavar="N", help="active AUs shown per face (default 3)")
    p.add_argument("--crf", type=int, default=20, help="x264 quality, lower is better (default 20)")
    p.add_argument("--no-timecode", action="store_true", help="do not draw the time and frame number")

    p = sub.add_parser(
        "report", help="one self-contained HTML report (summary, charts, video table, face contact sheet)",
        description="Write one HTML file with no external resources: run summary, expression distribution, "
                    "AU frequency, per-video status with error messages, and a contact sheet of face crops.")
    p.add_argument("--input", required=True, metavar="OUT", help=_OUTPUT_HELP)
    p.add_argument("--output", metavar="FILE", default=None, help="HTML file (local or s3://); default OUT/report.html")
    p.add_argument("--max-crops", type=int, default=48, metavar="N", help="faces on the contact sheet (default 48)")
    p.add_argument("--max-videos", type=int, default=1000, metavar="N",
                   help="rows in the video table, errors first (default 1000)")
    p.add_argument("--title", default="mien annotation report", help="report title")

    p = sub.add_parser("export", help="export to other tools' formats (openface CSV, Hugging Face dataset)")
    esub = p.add_subparsers(dest="export_format", metavar="FORMAT")
    e = esub.add_parser(
        "openface", help="one CSV per video in OpenFace 2.0 FeatureExtraction columns",
        formatter_class=raw,
        description=_paragraphs(
            "One CSV per ok video with OpenFace 2.0 columns (frame, face_id, timestamp, confidence, success, "
            "pose_*, AUxx_r, AUxx_c) plus mien_* extras, and videos.csv as an index.",
            "Columns mien has no value for are empty; workflows/outputs/openface.py documents each column's "
            "source. Read with pandas.read_csv(path, skipinitialspace=True), as OpenFace output."))
    e.add_argument("--input", required=True, metavar="OUT", help=_OUTPUT_HELP)
    e.add_argument("--output", required=True, metavar="DIR", help="directory for the CSVs (local or s3://)")
    e.add_argument("--au-intensity", choices=["none", "probability"], default="none",
                   help="AUxx_r: 'none' leaves it empty (mien estimates presence, not 0-5 intensity); "
                        "'probability' writes 5 x P(AU) as an uncalibrated proxy")
    e = esub.add_parser(
        "hf", help="Parquet + dataset card that datasets.load_dataset reads",
        description="Write data/{faces,tracks,videos}/*.parquet and a README.md dataset card; faces carry "
                    "their crop as an Image column. Load with datasets.load_dataset(DIR) or upload to the Hub.")
    e.add_argument("--input", required=True, metavar="OUT", help=_OUTPUT_HELP)
    e.add_argument("--output", required=True, metavar="DIR", help="dataset directory (local or s3://)")
    e.add_argument("--no-images", action="store_true", help="leave the face crops out (much smaller)")
    e.add_argument("--name", default=None, help="pretty_name of the dataset card")

    p = sub.add_parser("inspect", help="terminal summary of an annotate output",
                       description="Videos and errors by kind, faces, tracks, expression distribution, "
                                   "top AUs, model ids and runs.")
    p.add_argument("output_root", metavar="OUT", help=_OUTPUT_HELP)
    p.add_argument("--videos", action="store_true", help="also list every video with its status")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")


def run(args: argparse.Namespace) -> int:
    """Run the parsed output subcommand; returns the exit code (2 for a problem the user can fix)."""
    from workflows.corpus.reader import OutputError

    try:
        return _dispatch(args)
    except OutputError as e:
        print(f"mien {args.command}: {e}", file=sys.stderr)
        return 2
    except PermissionError as e:
        print(f"mien {args.command}: {e} (check the path, its permissions or your S3 credentials)",
              file=sys.stderr)
        return 2


def _dispatch(args: argparse.Namespace) -> int:
    if args.command == "render":
        from workflows.outputs.render import RenderOptions, render_video

        opts = RenderOptions(max_gap_s=args.max_gap, top_aus=args.top_aus, crf=args.crf,
                             timecode=not args.no_timecode)
        r = render_video(args.input, args.video, args.output, opts)
        print(f"rendered {r.video_id}: {r.frames} frames, {r.frames_with_faces} with faces "
              f"(hold {r.max_gap_s:.2f} s) -> {r.path}")
        return 0
    if args.command == "report":
        from workflows.outputs.report import ReportOptions, write_report

        path = write_report(args.input, args.output, ReportOptions(max_crops=args.max_crops,
                                                                   max_videos=args.max_videos, title=args.title))
        print(f"report: {path}")
        return 0
    if args.command == "export":
        if args.export_format == "openface":
            from workflows.outputs.openface import export_openface

            r = export_openface(args.input, args.output, au_intensity=args.au_intensity)
            print(f"openface: {len(r.files)} CSV files, {r.rows} face rows, {r.skipped_errors} error videos "
                  f"skipped -> {r.directory} (index: videos.csv)")
            return 0
        if args.export_format == "hf":
            from workflows.outputs.hf import export_hf

            h = export_hf(args.input, args.output, images=not args.no_images, pretty_name=args.name)
            print(f"hf dataset: faces {h.rows['faces']}, tracks {h.rows['tracks']}, videos {h.rows['videos']} "
                  f"-> {h.directory} (datasets.load_dataset({h.directory!r}))")
            return 0
        print("mien export: give a format: openface or hf (mien export --help)", file=sys.stderr)
        return 2
    if args.command == "inspect":
        from workflows.outputs.inspect import inspect_output

        print(inspect_output(args.output_root, as_json=args.json, list_videos=args.videos))
        return 0
    raise ValueError(f"not an output command: {args.command}")
