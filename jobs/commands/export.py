"""``mien export openface | hf``: hand an annotate output to other tools in their formats."""

from __future__ import annotations

import argparse
import sys

from jobs.commands.arguments import ANNOTATE_OUTPUT_HELP, paragraphs


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="export to other tools' formats (openface CSV, Hugging Face dataset)")
    p.set_defaults(handler=_no_format)
    esub = p.add_subparsers(dest="export_format", metavar="FORMAT")
    e = esub.add_parser(
        "openface", help="one CSV per video in OpenFace 2.0 FeatureExtraction columns",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=paragraphs(
            "One CSV per ok video with OpenFace 2.0 columns (frame, face_id, timestamp, confidence, success, "
            "pose_*, AUxx_r, AUxx_c) plus mien_* extras, and videos.csv as an index.",
            "Columns mien has no value for are empty; workflows/outputs/openface.py documents each column's "
            "source. Read with pandas.read_csv(path, skipinitialspace=True), as OpenFace output."))
    e.add_argument("--input", required=True, metavar="OUT", help=ANNOTATE_OUTPUT_HELP)
    e.add_argument("--output", required=True, metavar="DIR", help="directory for the CSVs (local or s3://)")
    e.add_argument("--au-intensity", choices=["none", "probability"], default="none",
                   help="AUxx_r: 'none' leaves it empty (mien estimates presence, not 0-5 intensity); "
                        "'probability' writes 5 x P(AU) as an uncalibrated proxy")
    e.set_defaults(handler=_openface)
    e = esub.add_parser(
        "hf", help="Parquet + dataset card that datasets.load_dataset reads",
        description="Write data/{faces,tracks,videos}/*.parquet and a README.md dataset card; faces carry "
                    "their crop as an Image column. Load with datasets.load_dataset(DIR) or upload to the Hub.")
    e.add_argument("--input", required=True, metavar="OUT", help=ANNOTATE_OUTPUT_HELP)
    e.add_argument("--output", required=True, metavar="DIR", help="dataset directory (local or s3://)")
    e.add_argument("--no-images", action="store_true", help="leave the face crops out (much smaller)")
    e.add_argument("--name", default=None, help="pretty_name of the dataset card")
    e.set_defaults(handler=_hf)


def _no_format(args: argparse.Namespace) -> int:
    print("mien export: give a format: openface or hf (mien export --help)", file=sys.stderr)
    return 2


def _openface(args: argparse.Namespace) -> int:
    from workflows.outputs.openface import export_openface

    r = export_openface(args.input, args.output, au_intensity=args.au_intensity)
    print(f"openface: {len(r.files)} CSV files, {r.rows} face rows, {r.skipped_errors} error videos "
          f"skipped -> {r.directory} (index: videos.csv)")
    return 0


def _hf(args: argparse.Namespace) -> int:
    from workflows.outputs.hf import export_hf

    h = export_hf(args.input, args.output, images=not args.no_images, pretty_name=args.name)
    print(f"hf dataset: faces {h.rows['faces']}, tracks {h.rows['tracks']}, videos {h.rows['videos']} "
          f"-> {h.directory} (datasets.load_dataset({h.directory!r}))")
    return 0
