"""``mien inspect OUT``: a terminal summary of an annotate output.

Videos and their status, errors by kind (with the latest messages), faces and tracks, the
expression distribution, the most frequent action units, model ids and runs. ``--json``
prints the same numbers as one JSON document; ``--videos`` adds one line per video.
"""

from __future__ import annotations

import json
from typing import Any

from model.taxonomy import AU_DESCRIPTIONS
from workflows.corpus.reader import AnnotationOutput
from workflows.outputs.summary import OutputSummary, summarize

BAR_WIDTH = 28
MAX_ERRORS_SHOWN = 10


def _bar(share: float) -> str:
    n = share * BAR_WIDTH
    full = int(n)
    return "█" * full + ("▌" if n - full >= 0.5 else "")


def _pct(n: int, total: int) -> str:
    return f"{100.0 * n / total:5.1f}%" if total else "    -"


def _short(text: Any, width: int) -> str:
    s = " ".join(str(text).split())
    return s if len(s) <= width else s[: width - 1] + "…"


def render_summary(s: OutputSummary, list_videos: bool = False) -> str:
    """The human-readable summary as one string (no trailing newline)."""
    lines = [f"mien output {s.root}"]
    latest = s.runs[-1] if s.runs else None
    if latest:
        counts = latest.get("counts") or {}
        wall = (latest.get("timings") or {}).get("wall_s")
        lines.append(f"  runs     {len(s.runs)}   latest {latest.get('run_id')} (model {latest.get('model_id')}, "
                     f"{counts.get('videos_ok', '?')} ok / {counts.get('videos_error', '?')} error"
                     + (f", {wall:.1f} s" if isinstance(wall, int | float) else "") + ")")
    else:
        lines.append("  runs     0   (no runs/*.json)")
    lines.append(f"  videos   {len(s.videos)}   ok {s.n_ok} · error {s.n_error}"
                 + (f"   ({s.video_rows} rows across runs)" if s.video_rows != len(s.videos) else ""))
    if s.errors_by_kind:
        lines.append("  errors   " + " · ".join(f"{k} {n}" for k, n in s.errors_by_kind.items()))
    lines.append(f"  frames   {s.sampled_frames} sampled · {s.duration_s:.1f} s of video")
    lines.append(f"  faces    {s.faces} · tracks {s.tracks}")
    lines.append("  models   " + (", ".join(f"{m} ({n} faces)" for m, n in s.model_ids.items()) or "-"))

    if s.faces:
        lines += ["", "expressions (faces)"]
        for label, n in s.fe_faces.items():
            lines.append(f"  {label:12s} {n:7d} {_pct(n, s.faces)}  {_bar(n / s.faces)}")
        if s.fe_tracks:
            lines.append("  per track segment: " + " · ".join(f"{k} {n}" for k, n in s.fe_tracks.items()))
        top = s.top_aus(8)
        if top:
            lines += ["", "top action units (share of faces where active)"]
            for au, share in top:
                name = f"{au} {AU_DESCRIPTIONS.get(au, '')}".strip()
                lines.append(f"  {name:26s} {100 * share:5.1f}%  {_bar(share)}")

    if s.runs:
        lines += ["", "runs", f"  {'run_id':30s} {'ok':>5s} {'error':>5s} {'faces':>8s} {'wall_s':>8s}  model"]
        for r in s.runs:
            c = r.get("counts") or {}
            wall = (r.get("timings") or {}).get("wall_s")
            lines.append(f"  {str(r.get('run_id')):30s} {c.get('videos_ok', '-')!s:>5s} "
                         f"{c.get('videos_error', '-')!s:>5s} {c.get('faces', '-')!s:>8s} "
                         f"{(f'{wall:.1f}' if isinstance(wall, int | float) else '-'):>8s}  {r.get('model_id', '-')}")

    if s.damaged:
        lines += ["", f"damaged parts ({len(s.damaged)}, left out: their videos count as not annotated)"]
        for d in s.damaged:
            videos = ", ".join(v[:12] for v in d["video_ids"][:5]) + (" ..." if len(d["video_ids"]) > 5 else "")
            lines.append(f"  {d['part']}  {_short(d['reason'], 90)}  videos: {videos or 'unknown'}")
        lines.append(f"  fix: {s.repair}")

    if s.rejected or s.skipped_non_media:
        lines += ["", f"not annotated in the newest run's input ({len(s.rejected)} refused"
                      + (", non-media files " + " · ".join(f"{k} {n}" for k, n in s.skipped_non_media.items())
                         if s.skipped_non_media else "") + ")"]
        for r in s.rejected[:MAX_ERRORS_SHOWN]:
            where = f"line {r.get('line')}" if r.get("line") else "entry"
            lines.append(f"  {where:10s} {_short(str(r.get('entry')), 40):40s}  {_short(str(r.get('reason')), 80)}")

    errors = [v for v in s.videos if v["status"] != "ok"]
    if errors:
        lines += ["", f"errors ({min(len(errors), MAX_ERRORS_SHOWN)} of {len(errors)})"]
        for v in errors[:MAX_ERRORS_SHOWN]:
            lines.append(f"  {v['video_id'][:12]}  {_short(v['video_uri'], 40):40s}  "
                         f"{v.get('error_kind') or 'error'}: {_short(v.get('error') or '', 80)}")

    if list_videos:
        lines += ["", "videos", f"  {'video_id':20s} {'status':6s} {'frames':>6s} {'faces':>6s} "
                              f"{'dur_s':>7s}  {'dominant FE':18s} uri"]
        for v in s.videos:
            dom = s.dominant_fe(v["video_id"])
            dom_text = f"{dom[0]} {100 * dom[1]:.0f}%" if dom else "-"
            lines.append(f"  {v['video_id']:20s} {v['status']:6s} {int(v.get('n_frames') or 0):6d} "
                         f"{int(v.get('n_faces') or 0):6d} {float(v.get('duration_s') or 0):7.1f}  "
                         f"{dom_text:18s} {v['video_uri']}" + (f"  {_meta_text(v.get('meta'))}" if v.get("meta") else ""))
    return "\n".join(lines)


def _meta_text(meta: list[tuple[str, str]]) -> str:
    """The manifest's columns of a video (``meta``), as ``key=value`` pairs."""
    return " ".join(f"{k}={v}" for k, v in meta)


def inspect_output(root: str | AnnotationOutput, as_json: bool = False, list_videos: bool = False) -> str:
    """The text (or JSON) that ``mien inspect`` prints for the output at ``root`` (a URI, or the
    output already open)."""
    s = summarize(root if isinstance(root, AnnotationOutput) else AnnotationOutput(root))
    if as_json:
        doc = s.to_dict()
        if list_videos:
            doc["video_list"] = [{**{k: v.get(k) for k in ("video_id", "video_uri", "status", "error_kind", "error",
                                                            "n_frames", "n_faces", "duration_s", "attempts")},
                                  "meta": dict(v["meta"]) if v.get("meta") else None}
                                 for v in s.videos]
        return json.dumps(doc, indent=2, default=str)
    return render_summary(s, list_videos=list_videos)
