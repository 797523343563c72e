"""``mien review export | import``: a human review loop through Label Studio."""

from __future__ import annotations

import argparse
import sys

from jobs.commands.arguments import ANNOTATE_OUTPUT_HELP, paragraphs

EXPORT_EPILOG = """\
serve the crops to Label Studio, either
  LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED=true label-studio start    # then add a Local Files storage
      whose absolute path is DIR/images (default --image-root: /data/local-files/?d=<DIR>/images/), or
  python -m http.server 8081 --directory DIR                            # with --image-root http://HOST:8081/images/
then create a project with DIR/labeling_config.xml as its labeling interface and import DIR/tasks.json.
When done: Export > JSON, and `mien review import --input EXPORT.json --output LABELED/`.
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("review", help="human review with Label Studio: export faces to label, import the labels")
    p.set_defaults(handler=_no_action)
    rsub = p.add_subparsers(dest="review_action", metavar="ACTION")
    e = rsub.add_parser(
        "export", help="write the faces most worth a human look as Label Studio tasks",
        formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EXPORT_EPILOG,
        description=paragraphs(
            "Pick --budget faces with a crop (at most one per track segment) and write DIR/images/, "
            "DIR/tasks.json (pre-annotated with the model's expression and active AUs, scores = probabilities), "
            "DIR/labeling_config.xml and DIR/faces.parquet (what the import reads the faces from).",
            "uncertainty: lowest top expression probability first (ties: highest entropy); disagreement: the "
            "face prior and the model disagree, most confident first; random: a seeded sample."))
    e.add_argument("--input", required=True, metavar="OUT", help=ANNOTATE_OUTPUT_HELP)
    e.add_argument("--output", required=True, metavar="DIR", help="a new directory for the review set (local or s3://)")
    e.add_argument("--budget", type=int, default=100, metavar="N", help="number of faces to review (default 100)")
    e.add_argument("--strategy", choices=["uncertainty", "disagreement", "random"], default="uncertainty",
                   help="which faces to pick (default uncertainty)")
    e.add_argument("--seed", type=int, default=0, help="seed of --strategy random (default 0)")
    e.add_argument("--image-root", metavar="URL", default=None,
                   help="URL prefix of DIR/images/ as Label Studio's browser reaches it "
                        "(default: Label Studio's local files storage; s3:// for a bucket)")
    e.set_defaults(handler=_export)
    i = rsub.add_parser(
        "import", help="read Label Studio's JSON export as labeled faces for train / evaluate / retrain",
        description=paragraphs(
            "Read the JSON export (Export > JSON) of a project made from `mien review export`: per task the "
            "latest annotation that was not skipped. Writes instruction Parquet with each face's crop and "
            "face-stage measurements, its labels (FE only where no AU was checked) and who labeled it, plus "
            "review_import.json. Use it as `mien train --data DEST`, `mien evaluate --data DEST` or "
            "retrain's holdout.uri."))
    i.add_argument("--input", required=True, metavar="EXPORT.json", help="Label Studio JSON export (local or s3://)")
    i.add_argument("--output", required=True, metavar="DEST", help="directory for the labeled faces")
    i.add_argument("--review-dir", metavar="DIR", default=None,
                   help="the --output of `mien review export` (default: the one each task names)")
    i.set_defaults(handler=_import)


def _no_action(args: argparse.Namespace) -> int:
    print("mien review: give an action: export or import (mien review --help)", file=sys.stderr)
    return 2


def _export(args: argparse.Namespace) -> int:
    from workflows.outputs.review import ReviewError, export_tasks

    try:
        r = export_tasks(args.input, args.output, budget=args.budget, strategy=args.strategy, seed=args.seed,
                         image_root=args.image_root)
    except ReviewError as e:
        print(f"mien review export: {e}", file=sys.stderr)
        return 2
    print(f"review: {r.tasks} faces ({r.strategy}) of {r.candidates} with a crop ({r.faces_read} read) -> "
          f"{r.tasks_file}; images at {r.image_root}")
    if r.tasks == 0:
        why = "the output has no faces" if not r.faces_read else f"no face fits --strategy {r.strategy}; try another"
        print(f"mien review export: nothing to review: {why}", file=sys.stderr)
    return 0


def _import(args: argparse.Namespace) -> int:
    from workflows.outputs.review import ReviewError, import_annotations

    try:
        r = import_annotations(args.input, args.output, review_dir=args.review_dir)
    except ReviewError as e:
        print(f"mien review import: {e}", file=sys.stderr)
        return 2
    rep = r.report
    print(f"review import: {rep['faces']} labeled faces ({rep['fe_and_au']} FE+AU, {rep['fe_only']} FE only, "
          f"{rep['au_only']} AU only) of {rep['tasks']} tasks; {rep['skipped']} skipped, {rep['unannotated']} "
          f"unannotated, {rep['n_problems']} problems -> {r.directory}")
    for p in rep["problems"][:10]:
        print(f"  {p}", file=sys.stderr)
    if not rep["faces"]:
        print("mien review import: no labeled face to write; label tasks in Label Studio and export again",
              file=sys.stderr)
        return 2
    return 0
