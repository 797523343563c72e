"""``mien report``: one self-contained HTML file that shows what an annotate output holds.

Sections: run summary, the licences of the models the runs used (may the labels be used
commercially?), expression distribution, action-unit frequency, errors by kind, a per-video status
table (error messages included) and a contact sheet of face crops with their labels. Charts are inline SVG and crops are ``data:`` URIs, so the file opens offline, can be
mailed or attached to a ticket, and loads nothing from the network (no CDN, no script). Every
value taken from the output is HTML-escaped: error messages and file names are user data; URI
credentials in them (``https://user:password@host``, presigned-URL signatures) are masked first.

The contact sheet samples distinct tracks per expression (a stable hash of video and track,
so reruns pick the same faces) and shows each sampled track's most confident face; it reads a
few light columns of every faces part, then only the row groups holding the chosen crops.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import html
import io
import math
import zlib
from collections.abc import Iterable
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from model.taxonomy import AU_DESCRIPTIONS
from workflows.core import storage
from workflows.core.licences import Component, from_dicts, most_restrictive
from workflows.core.redact import redact
from workflows.corpus.reader import AnnotationOutput, top_active_aus
from workflows.outputs.palette import AU_COLOR, ERROR_COLOR, fe_color
from workflows.outputs.summary import OutputSummary, summarize

DETAIL_COLUMNS = ["frame_index", "timestamp_s", "au_active", "au_probs", "crop_jpeg"]
THUMB_PX = 128


@dataclasses.dataclass
class ReportOptions:
    """What goes into the report."""

    max_crops: int = 48  # faces on the contact sheet
    max_videos: int = 1000  # rows of the video table (error videos first)
    title: str = "mien annotation report"


def esc(value: Any) -> str:
    """HTML-escape any value (None -> empty), URI credentials masked: every shown value passes here."""
    return html.escape("" if value is None else redact(str(value)), quote=True)


# -- charts ---------------------------------------------------------------------------
def svg_hbar(items: list[tuple[str, float, str, str]], width: int = 560, label_w: int = 190,
             row_h: int = 24, title: str = "") -> str:
    """A horizontal bar chart as inline SVG.

    ``items``: ``(label, fraction in [0, 1], value text, colour)``; bars are scaled to the
    largest fraction so small distributions stay readable.
    """
    if not items:
        return '<p class="empty">no data</p>'
    top = max(max(f for _, f, _, _ in items), 1e-9)
    value_w = 120
    bar_w = width - label_w - value_w
    height = row_h * len(items) + 6
    parts = [f'<svg class="chart" role="img" aria-label="{esc(title)}" xmlns="http://www.w3.org/2000/svg" '
             f'viewBox="0 0 {width} {height}" width="{width}" height="{height}">']
    for i, (label, frac, text, color) in enumerate(items):
        y = 3 + i * row_h
        w = max(0.0, bar_w * frac / top)
        parts.append(
            f'<g><title>{esc(label)}: {esc(text)}</title>'
            f'<text x="{label_w - 8}" y="{y + row_h * 0.68:.1f}" text-anchor="end" class="lbl">{esc(label)}</text>'
            f'<rect x="{label_w}" y="{y + 3}" width="{bar_w}" height="{row_h - 6}" class="track"/>'
            f'<rect x="{label_w}" y="{y + 3}" width="{w:.1f}" height="{row_h - 6}" rx="2" fill="{esc(color)}"/>'
            f'<text x="{label_w + bar_w + 8}" y="{y + row_h * 0.68:.1f}" class="val">{esc(text)}</text></g>')
    parts.append("</svg>")
    return "".join(parts)


def fe_chart(s: OutputSummary) -> str:
    items = [(label, n / s.faces, f"{n} · {100 * n / s.faces:.1f}%", fe_color(label))
             for label, n in s.fe_faces.items()] if s.faces else []
    return svg_hbar(items, title="faces per expression")


def au_chart(s: OutputSummary) -> str:
    items = []
    for au, n in s.au_active.items():
        share = n / s.faces if s.faces else 0.0
        mean = s.au_mean.get(au)
        text = f"{100 * share:.1f}%" + (f" · p̄ {mean:.2f}" if mean is not None else "")
        items.append((f"{au} {AU_DESCRIPTIONS.get(au, '')}".strip(), share, text, AU_COLOR))
    return svg_hbar(items, label_w=230, title="share of faces where each AU is active")


# -- contact sheet --------------------------------------------------------------------
@dataclasses.dataclass
class SheetFace:
    """One face chosen for the contact sheet: located by part and row; details loaded later."""

    part: int
    row: int
    video_id: str
    track_id: int
    fe_label: str
    fe_confidence: float
    frame_index: int = -1
    timestamp_s: float = math.nan
    aus: list[str] = dataclasses.field(default_factory=list)
    crop: bytes | None = None


def _track_key(video_id: str, track_id: int) -> int:
    return zlib.crc32(f"{video_id}/{track_id}".encode())


def choose_sheet_faces(out: AnnotationOutput, max_crops: int) -> list[SheetFace]:
    """Up to ``max_crops`` faces: distinct tracks, spread over expressions, the most confident
    face of each (track, expression); tracks are sampled by a stable hash."""
    if max_crops <= 0:
        return []
    # label -> (hash, video, track) -> best face so far; trimmed to the smallest hashes per label.
    chosen: dict[str, dict[tuple[int, str, int], SheetFace]] = {}
    for p, uri in enumerate(out.parts("faces")):
        # row: the position in the part file, where _load_details reads the face back
        t = out.read_part(uri, ["video_id", "track_id", "fe_label", "fe_confidence"], row_numbers=True)
        if not len(t):
            continue
        # The best row of every (label, video, track) in this part, computed in Arrow.
        t = t.sort_by([("fe_confidence", "descending")])
        g = t.group_by(["fe_label", "video_id", "track_id"], use_threads=False).aggregate(
            [("row", "first"), ("fe_confidence", "first")])
        for label, vid, tid, row, conf in zip(*(g[c].to_pylist() for c in (
                "fe_label", "video_id", "track_id", "row_first", "fe_confidence_first")), strict=True):
            conf = float(conf) if conf is not None else -1.0
            key = (_track_key(vid, tid), vid, int(tid))
            per_label = chosen.setdefault(str(label), {})
            best = per_label.get(key)
            if best is None or conf > best.fe_confidence:
                per_label[key] = SheetFace(p, int(row), vid, int(tid), str(label), conf)
        for label, per_label in chosen.items():
            if len(per_label) > 2 * max_crops:
                chosen[label] = {k: per_label[k] for k in sorted(per_label)[:max_crops]}
    # Round-robin over labels (most tracks first) so every expression gets a place.
    queues = {label: [per[k] for k in sorted(per)] for label, per in chosen.items()}
    order = sorted(queues, key=lambda lbl: -len(chosen[lbl]))
    picked: list[SheetFace] = []
    while len(picked) < max_crops and any(queues.values()):
        for label in order:
            if queues[label] and len(picked) < max_crops:
                picked.append(queues[label].pop(0))
    _load_details(out, picked)
    return sorted(picked, key=lambda f: (order.index(f.fe_label), -f.fe_confidence))


def _load_details(out: AnnotationOutput, faces: list[SheetFace]) -> None:
    """Fill time, AUs and crop of the chosen faces, reading only the row groups that hold them."""
    parts = out.parts("faces")
    by_part: dict[int, list[SheetFace]] = {}
    for f in faces:
        by_part.setdefault(f.part, []).append(f)
    for p, wanted in by_part.items():
        fs, path = storage.filesystem(parts[p])
        with fs.open(path, "rb") as fh:
            pf = pq.ParquetFile(fh)
            columns = [c for c in DETAIL_COLUMNS if c in pf.schema_arrow.names]
            starts = np.cumsum([0] + [pf.metadata.row_group(i).num_rows for i in range(pf.metadata.num_row_groups)])
            groups: dict[int, list[SheetFace]] = {}
            for f in wanted:
                groups.setdefault(int(np.searchsorted(starts, f.row, side="right")) - 1, []).append(f)
            for g, members in groups.items():
                t = pf.read_row_group(g, columns=columns)
                rows = t.take(pa.array([f.row - int(starts[g]) for f in members])).to_pylist()
                for f, r in zip(members, rows, strict=True):
                    f.frame_index = int(r["frame_index"])
                    f.timestamp_s = float(r["timestamp_s"])
                    f.aus = top_active_aus(r.get("au_active"), r.get("au_probs"), 3)
                    f.crop = r.get("crop_jpeg")


def thumbnail_data_uri(jpeg: bytes, size: int = THUMB_PX) -> str | None:
    """A ``data:image/jpeg;base64,…`` thumbnail (longest side ``size`` px); None if undecodable."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(jpeg)) as im:
            im = im.convert("RGB")
            im.thumbnail((size, size))
            buf = io.BytesIO()
            im.save(buf, format="JPEG", quality=85)
    except OSError:
        return None
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def contact_sheet(faces: list[SheetFace], videos: dict[str, dict[str, Any]]) -> str:
    if not faces:
        return '<p class="empty">no faces in this output</p>'
    cells = []
    missing = 0
    for f in faces:
        uri = thumbnail_data_uri(f.crop) if f.crop else None
        if uri is None:
            missing += 1
            continue
        name = str(videos.get(f.video_id, {}).get("video_uri", f.video_id)).rsplit("/", 1)[-1]
        conf = f"{f.fe_confidence:.2f}" if f.fe_confidence >= 0 else "?"
        cells.append(
            f'<figure class="face" title="{esc(f.video_id)} track {f.track_id} frame {f.frame_index}">'
            f'<img src="{uri}" alt="{esc(f.fe_label)} face, track {f.track_id}" width="{THUMB_PX}" '
            f'height="{THUMB_PX}">'
            f'<figcaption><span class="chip" style="background:{fe_color(f.fe_label)}"></span>'
            f'<b>{esc(f.fe_label)}</b> {conf}<br><span class="aus">{esc(" ".join(f.aus) or "no active AU")}</span>'
            f'<br><span class="where">{esc(_short(name, 22))} · #{f.track_id} · {f.timestamp_s:.2f}s</span>'
            f"</figcaption></figure>")
    note = (f'<p class="note">{missing} sampled faces have no stored crop (annotate ran with '
            f"output.crops=false or output.privacy=strict).</p>") if missing else ""
    if not cells:
        return note or '<p class="empty">no crops stored</p>'
    return f'<div class="sheet">{"".join(cells)}</div>{note}'


# -- tables ---------------------------------------------------------------------------
def _short(text: str, n: int) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"


def _fmt(v: Any, spec: str = "") -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "–"
    return format(v, spec)


def _table(headers: Iterable[str], rows: Iterable[str], table_id: str = "", cls: str = "") -> str:
    head = "".join(f"<th>{esc(h)}</th>" for h in headers)
    attrs = (f' id="{table_id}"' if table_id else "") + (f' class="{cls}"' if cls else "")
    return f'<table{attrs}><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>'



def runs_table(s: OutputSummary) -> str:
    if not s.runs:
        return '<p class="empty">no runs/*.json in this output</p>'
    rows = []
    for r in s.runs:
        c, tm = r.get("counts") or {}, r.get("timings") or {}
        sampling = ((r.get("config") or {}).get("decode") or {}).get("sampling")
        rows.append(
            f'<tr><td class="mono">{esc(r.get("run_id"))}</td><td class="mono">{esc(r.get("model_id"))}</td>'
            f'<td>{esc(sampling or "–")}</td><td class="num">{esc(c.get("videos_ok", "–"))}</td>'
            f'<td class="num">{esc(c.get("videos_error", "–"))}</td>'
            f'<td class="num">{esc(c.get("videos_skipped", "–"))}</td><td class="num">{esc(c.get("faces", "–"))}</td>'
            f'<td class="num">{esc(_fmt(tm.get("wall_s"), ".1f"))}</td>'
            f'<td class="num">{esc(_fmt(tm.get("faces_per_s"), ".1f"))}</td></tr>')
    return _table(["run", "model", "sampling", "ok", "error", "skipped", "faces", "wall s", "faces/s"], rows,
                  "runs-table")


_COMMERCIAL_TEXT = {
    "no": "Not for commercial use: the licence of {names} does not allow it.",
    "unknown": "Commercial use unknown: check the licence of {names} before any commercial use.",
    "conditions": "Commercial use under the licensor's terms: read the terms of {names}.",
    "yes": "Every component's licence allows commercial use.",
}


def licences_section(s: OutputSummary) -> str:
    """Every component the runs used (each distinct entry once), its licence and whether it allows
    commercial use, under a one-line answer for the output as a whole (the most restrictive)."""
    seen: dict[tuple[str, str, str], Component] = {}
    unrecorded = 0
    for r in s.runs:
        entries = r.get("licences")
        if not isinstance(entries, list):
            unrecorded += 1
            continue
        for c in from_dicts(entries):
            seen.setdefault((c.component, c.source, c.licence), c)
    note = (f'<p class="note">{unrecorded} run(s) were written before licences were recorded; their components '
            "are not listed (<code>mien model inspect MODEL</code> lists a model's).</p>") if unrecorded else ""
    if not seen:
        return (note or '<p class="empty">no runs recorded</p>')
    components = list(seen.values())
    answer = most_restrictive([c.commercial for c in components] + (["unknown"] if unrecorded else []))
    names = ", ".join(dict.fromkeys(c.component for c in components if c.commercial == answer)) or "earlier runs"
    rows = [f'<tr class="licence-{esc(c.commercial)}"><td class="mono">{esc(c.component)}</td>'
            f'<td class="mono">{esc(c.source)}</td><td>{esc(c.licence or "unknown")}</td>'
            f"<td>{esc(c.commercial)}</td></tr>" for c in components]
    return (f'<p class="commercial commercial-{answer}">{esc(_COMMERCIAL_TEXT[answer].format(names=names))}</p>'
            + _table(["component", "source", "licence", "commercial use"], rows, "licences-table") + note)


def errors_table(s: OutputSummary) -> str:
    rows = []
    for kind, n in s.errors_by_kind.items():
        example = next((v for v in s.videos if v["status"] != "ok" and (v.get("error_kind") or "unknown") == kind),
                       {})
        rows.append(f'<tr><td class="mono">{esc(kind)}</td><td class="num">{n}</td>'
                    f'<td class="err">{esc(example.get("error"))}</td></tr>')
    return _table(["kind", "videos", "example message"], rows, "errors-table")


def rejected_table(s: OutputSummary, max_rows: int) -> str:
    rows = [f'<tr><td class="num">{esc(r.get("line") or "–")}</td><td class="mono">{esc(r.get("entry"))}</td>'
            f'<td class="err">{esc(r.get("reason"))}</td></tr>' for r in s.rejected[:max_rows]]
    return _table(["manifest line", "entry", "why it was refused"], rows, "rejected-table")


def videos_table(s: OutputSummary, max_rows: int) -> str:
    rows = []
    for v in s.videos[:max_rows]:
        ok = v["status"] == "ok"
        name = str(v["video_uri"]).rsplit("/", 1)[-1]
        dom = s.dominant_fe(v["video_id"])
        dom_html = (f'<span class="chip" style="background:{fe_color(dom[0])}"></span>{esc(dom[0])} '
                    f'{100 * dom[1]:.0f}%') if dom else "–"
        size = f"{v['width']}×{v['height']}" if v.get("width") else "–"
        problem = "" if ok else (f'<span class="mono">{esc(v.get("error_kind") or "error")}</span>: '
                                 f'{esc(v.get("error"))}')
        rows.append(
            f'<tr class="status-{"ok" if ok else "error"}">'
            f'<td><span class="badge {"ok" if ok else "error"}">{esc(v["status"])}</span></td>'
            f'<td title="{esc(v["video_uri"])}">{esc(name)}<br><span class="mono dim">{esc(v["video_id"])}</span></td>'
            f'<td class="err">{problem}</td><td class="num">{_fmt(v.get("n_frames"))}</td>'
            f'<td class="num">{_fmt(v.get("n_faces"))}</td><td class="num">{_fmt(v.get("n_tracks"))}</td>'
            f'<td class="num">{_fmt(v.get("duration_s"), ".1f")}</td><td class="num">{esc(size)}</td>'
            f'<td class="num">{_fmt(v.get("fps"), ".2f")}</td><td>{dom_html}</td>'
            f'<td class="num">{_fmt(v.get("attempts"))}</td></tr>')
    more = len(s.videos) - max_rows
    note = f'<p class="note">{more} more videos not shown (see <code>mien inspect --videos</code>).</p>' \
        if more > 0 else ""
    return _table(["status", "video", "error", "frames", "faces", "tracks", "duration s", "size", "fps",
                   "dominant expression", "attempts"], rows, "video-table") + note


def summary_cards(s: OutputSummary) -> str:
    cards = [
        ("Videos", f"{len(s.videos)}", f"{s.n_ok} ok · {s.n_error} error"),
        ("Faces", f"{s.faces}", f"{s.tracks} track segments"),
        ("Sampled frames", f"{s.sampled_frames}", f"{s.duration_s:.1f} s of video"),
        ("Runs", f"{len(s.runs)}", f"latest {s.runs[-1].get('run_id')}" if s.runs else "none recorded"),
    ]
    html_cards = "".join(f'<div class="card"><div class="k">{esc(k)}</div><div class="v">{esc(v)}</div>'
                         f'<div class="d">{esc(d)}</div></div>' for k, v, d in cards)
    models = ", ".join(f'<span class="mono">{esc(m)}</span> ({n} faces)' for m, n in s.model_ids.items()) or "–"
    return f'<div class="cards">{html_cards}</div><p class="models">Models: {models}</p>'


CSS = """
:root{--fg:#1f2328;--dim:#667085;--line:#e4e7ec;--bg:#fff;--panel:#f8f9fb;--err:__ERR__}
*{box-sizing:border-box}
body{margin:0;font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif;
 color:var(--fg);background:var(--bg)}
main{max-width:1220px;margin:0 auto;padding:24px 28px 48px}
header h1{margin:0 0 4px;font-size:26px}
.sub{color:var(--dim);margin:0 0 18px;word-break:break-all}
h2{font-size:18px;margin:30px 0 10px;padding-bottom:6px;border-bottom:1px solid var(--line)}
.cards{display:grid;grid-template-columns:repeat(4,1fr);gap:12px}
.card{background:var(--panel);border:1px solid var(--line);border-radius:8px;padding:12px 14px}
.card .k{color:var(--dim);font-size:12px;text-transform:uppercase;letter-spacing:.04em}
.card .v{font-size:28px;font-weight:650;margin:2px 0}
.card .d{color:var(--dim);font-size:12.5px;word-break:break-all}
.models{color:var(--dim);margin:10px 0 0}
.grid2{display:grid;grid-template-columns:1fr 1fr;gap:24px;align-items:start}
.chart{max-width:100%;height:auto}
.chart .lbl{font-size:12.5px;fill:var(--fg)}.chart .val{font-size:12px;fill:var(--dim)}
.chart .track{fill:#f0f2f5}
table{border-collapse:collapse;width:100%;font-size:13px}
th,td{border-bottom:1px solid var(--line);padding:6px 8px;text-align:left;vertical-align:top}
th{background:var(--panel);font-weight:600;position:sticky;top:0}
td.num,th.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
td.err{color:var(--err);max-width:420px;word-break:break-word}
tr.status-error td{background:#fff6f6}
.mono{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;font-size:12px}
.dim{color:var(--dim)}
.badge{display:inline-block;padding:1px 8px;border-radius:10px;font-size:12px;font-weight:600;color:#fff}
.badge.ok{background:#2e7d32}.badge.error{background:var(--err)}
.chip{display:inline-block;width:10px;height:10px;border-radius:2px;margin-right:5px;vertical-align:baseline}
.sheet{display:grid;grid-template-columns:repeat(auto-fill,minmax(140px,1fr));gap:12px}
figure.face{margin:0;background:var(--panel);border:1px solid var(--line);border-radius:8px;padding:6px;
 text-align:center}
figure.face img{display:block;width:128px;height:128px;object-fit:cover;margin:0 auto 4px;border-radius:4px}
figcaption{font-size:12px;line-height:1.35}
figcaption .aus{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:11px;color:#3949ab}
figcaption .where{color:var(--dim);font-size:11px}
.empty,.note{color:var(--dim)}
.commercial{font-weight:600}.commercial-no{color:var(--err)}.licence-no td{background:#fff6f6}
footer{color:var(--dim);font-size:12px;margin-top:36px}
@media (max-width:900px){.cards{grid-template-columns:repeat(2,1fr)}.grid2{grid-template-columns:1fr}}
""".replace("__ERR__", ERROR_COLOR)


def build_report(root: str, options: ReportOptions | None = None) -> str:
    """The report of the output at ``root`` as one HTML string."""
    opts = options or ReportOptions()
    out = AnnotationOutput(root)
    s = summarize(out)
    faces = choose_sheet_faces(out, opts.max_crops)
    videos_by_id = {v["video_id"]: v for v in s.videos}
    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    fe_tracks = " · ".join(f"{esc(k)} {n}" for k, n in s.fe_tracks.items())
    sections = [
        f'<header><h1>{esc(opts.title)}</h1><p class="sub">{esc(root)} · generated {now}</p></header>',
        f'<section id="summary">{summary_cards(s)}</section>',
        f'<section id="runs"><h2>Runs</h2>{runs_table(s)}</section>',
        f'<section id="licences"><h2>Licences</h2>{licences_section(s)}</section>',
        '<div class="grid2">'
        f'<section id="fe"><h2>Expression distribution <small class="dim">({s.faces} faces)</small></h2>'
        f'{fe_chart(s)}' + (f'<p class="note">Per track segment: {fe_tracks}</p>' if fe_tracks else "") +
        "</section>"
        f'<section id="au"><h2>Action-unit frequency <small class="dim">(share of faces where active)</small>'
        f"</h2>{au_chart(s)}</section></div>",
    ]
    if s.errors_by_kind:
        sections.append(f'<section id="errors"><h2>Errors by kind</h2>{errors_table(s)}</section>')
    if s.rejected or s.skipped_non_media:
        other = ", ".join(f"{k} {n}" for k, n in s.skipped_non_media.items())
        sections.append(
            f'<section id="rejected"><h2>Not annotated <small class="dim">(the newest run\'s input: '
            f"{len(s.rejected)} entries refused)</small></h2>"
            + (rejected_table(s, opts.max_videos) if s.rejected else "")
            + (f'<p class="note">Files that are not media, skipped: {esc(other)}</p>' if other else "")
            + "</section>")
    sections += [
        f'<section id="videos"><h2>Videos <small class="dim">({len(s.videos)}; errors first)</small></h2>'
        f"{videos_table(s, opts.max_videos)}</section>",
        f'<section id="contact-sheet"><h2>Contact sheet <small class="dim">({len(faces)} sampled faces, '
        f"the best face of each track per expression)</small></h2>{contact_sheet(faces, videos_by_id)}</section>",
        '<footer>Generated by <span class="mono">mien report</span>. Labels are model predictions '
        "(pseudo-labels), not human FACS coding.</footer>",
    ]
    return (f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{esc(opts.title)} – {esc(root)}</title><style>{CSS}</style></head>"
            f'<body><main>{"".join(sections)}</main></body></html>\n')


def default_report_path(root: str) -> str:
    """``OUT/report.html``."""
    return storage.join(root, "report.html")


def write_report(root: str, output: str | None = None, options: ReportOptions | None = None) -> str:
    """Build the report and write it to ``output`` (default ``OUT/report.html``); returns the path."""
    dest = output or default_report_path(root)
    storage.write_text(dest, build_report(root, options))
    return dest
