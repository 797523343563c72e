"""``mien render``: an MP4 (or one frame) of a source video with its annotations drawn on."""

from __future__ import annotations

import argparse

from jobs.commands.arguments import ANNOTATE_OUTPUT_HELP, paragraphs


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "render", help="MP4 of a source video with boxes, track ids, expression and top AUs drawn on",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=paragraphs(
            "Re-decode one annotated video and draw, on every frame, each face's box, #track, expression "
            "label + confidence and its top active AUs (H.264, source timestamps kept, no audio).",
            "Faces are annotated on sampled frames only: a face is held until its track's next sampled "
            "frame and dropped after --max-gap seconds."),
        epilog="examples:\n  mien render --input out/ --video 3f2a9c --output interview.mp4\n"
               "  mien render --input out/ --video interview --output still.png --at 12.5")
    p.add_argument("--input", required=True, metavar="OUT", help=ANNOTATE_OUTPUT_HELP)
    p.add_argument("--video", required=True, metavar="ID",
                   help="video_id, a unique prefix of it, the source URI, or the source file name "
                        "(with or without its extension)")
    p.add_argument("--output", metavar="FILE", default=None,
                   help="where to write (local or s3://; .jpg/.png writes one annotated frame: see --at); "
                        "default OUT/renders/<video_id>.mp4")
    p.add_argument("--at", type=float, default=None, metavar="SECONDS",
                   help="with a .jpg/.png --output: the frame at this time (default: the annotated frame "
                        "showing the most faces, the earliest of them)")
    p.add_argument("--max-gap", type=float, default=None, metavar="SECONDS",
                   help="hold a face at most this long after its last annotated frame "
                        "(default: 1.5 x the sampling step)")
    p.add_argument("--top-aus", type=int, default=3, metavar="N", help="active AUs shown per face (default 3)")
    p.add_argument("--crf", type=int, default=20, help="x264 quality, lower is better (default 20)")
    p.add_argument("--no-timecode", action="store_true", help="do not draw the time and frame number")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from workflows.outputs.render import RenderOptions, render_video

    opts = RenderOptions(max_gap_s=args.max_gap, top_aus=args.top_aus, crf=args.crf,
                         timecode=not args.no_timecode, at_s=args.at)
    r = render_video(args.input, args.video, args.output, opts)
    if r.at_s is not None:
        print(f"rendered {r.video_id} at {r.at_s:.3f} s: {r.faces_drawn} face(s) -> {r.path}")
    else:
        print(f"rendered {r.video_id}: {r.frames} frames, {r.frames_with_faces} with faces "
              f"(hold {r.max_gap_s:.2f} s) -> {r.path}")
    return 0
