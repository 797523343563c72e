"""Check an annotate output against its contract (``docs/OUTPUT.md``, :mod:`workflows.corpus.schema`).

:func:`check_output` is what ``mien inspect OUT --check`` prints and what the tests assert after
every scenario that writes an output (crashes, reruns, ``--force``, concurrent runs, storage
faults), so users and tests hold outputs to the same rules:

* layout: ``videos/`` exists and at least one ``runs/<run_id>.json`` can be read;
* schema: every committed part has every contract column with the contract type (more columns
  are allowed);
* videos: ``status`` is ``ok`` or ``error``; an ``error`` row has a readable ``error`` and an
  ``error_kind``, an ``ok`` row no ``error``; every row has ``finished_at``; a run writes one row
  per video; no replaced ``ok`` row is left in the files (pandas and DuckDB would read it);
* faces and tracks: every row belongs to a current ``ok`` row of the videos part of the same name;
  ``n_faces`` (and ``n_tracks`` where set) counts them; no face (video, frame, track) and no track
  segment appears twice; probabilities lie in 0..1, ``fe_probs`` sums to 1, ``au_probs`` names
  ``AU..`` units and ``au_active`` only units it scores; a segment does not end before it starts;
* no damaged chunk (:attr:`~workflows.corpus.reader.AnnotationOutput.damaged`: a part cut short,
  overwritten or disagreeing with its commit record), reported with its repair;
* no uncommitted faces/tracks part of a run that is gone (a live run's chunk in flight is fine).

It reads through :class:`~workflows.corpus.reader.AnnotationOutput`, local or ``s3://`` alike.
Run it on an output no run is writing to: a commit landing mid-check can read as a mismatch.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import pyarrow.parquet as pq

from workflows.core import storage
from workflows.corpus import schema
from workflows.corpus.lease import read_leases
from workflows.corpus.reader import AnnotationOutput, OutputError, run_of_part

STATUSES = ("ok", "error")
PROB_SUM_TOLERANCE = 1e-3  # float32 probabilities of 7 expressions
AU_NAME = re.compile(r"AU\d\d")
MAX_EXAMPLES = 3  # offending keys quoted per problem
Owners = dict[str, dict[tuple[str, str], dict[str, Any]]]  # videos part -> (video_id, run_id) -> its row


def check_output(uri: str) -> list[str]:
    """Every way the annotate output at ``uri`` (local path or ``s3://`` prefix) breaks its
    contract, one readable line each, naming the part and what to do; empty when it holds."""
    try:
        output = AnnotationOutput(uri)
    except OutputError as e:
        return [str(e)]
    problems = _check_runs(output)
    # A damaged chunk (a part cut short, overwritten, not matching its commit record) is one
    # problem with its repair; its parts are not read further.
    damaged = {d.part for d in output.damaged}
    if damaged:
        problems.append(output.damage_message())
    for name in schema.TABLES:
        problems += _check_schemas(output, name, damaged)
    by_part = {part: output.read_part(uri).to_pylist() for uri in output.parts("videos")
               if (part := uri.rsplit("/", 1)[-1]) not in damaged}
    problems += _check_videos(output, [row for rows in by_part.values() for row in rows])
    replaced = output.replaced_rows()
    owners: Owners = {part: {key: r for r in rows if (key := (r["video_id"], r["run_id"])) not in replaced}
                      for part, rows in by_part.items()}
    problems += _check_faces(output, owners, damaged)
    problems += _check_tracks(output, owners, damaged)
    problems += _check_uncommitted(output)
    return problems


def _examples(items: list[Any]) -> str:
    shown = ", ".join(str(i) for i in items[:MAX_EXAMPLES])
    return shown + (f" and {len(items) - MAX_EXAMPLES} more" if len(items) > MAX_EXAMPLES else "")


def _part_name(uri: str) -> str:
    return "/".join(uri.rsplit("/", 2)[-2:])


def _check_runs(output: AnnotationOutput) -> list[str]:
    try:
        uris = storage.list_files(storage.join(output.root, "runs"), (".json",))
    except FileNotFoundError:
        uris = []
    problems = []
    for uri in uris:
        try:
            json.loads(storage.read_text(uri))
        except (OSError, ValueError) as e:
            problems.append(f"{_part_name(uri)} is not readable JSON ({e}); delete it, or rerun `mien annotate`")
    if len(uris) == len(problems):  # none could be read
        problems.append("no readable runs/<run_id>.json: no run on this output has finished (a run writes it "
                        "when it ends); rerun `mien annotate` with the same --input and --output")
    return problems


def _check_schemas(output: AnnotationOutput, name: str, damaged: set[str]) -> list[str]:
    contract = schema.TABLES[name]
    problems = []
    for uri in _sound_parts(output, name, damaged):
        fs, path = storage.filesystem(uri)
        found = storage.with_retries(pq.read_schema)(path, filesystem=fs)
        missing = [f.name for f in contract if f.name not in found.names]
        wrong = [f"{f.name} is {found.field(f.name).type}, not {f.type}" for f in contract
                 if f.name in found.names and found.field(f.name).type != f.type]
        if missing:
            problems.append(f"{_part_name(uri)} lacks columns {missing} (written by another version of mien?); "
                            f"rerun `mien annotate --force` to rewrite it")
        if wrong:
            problems.append(f"{_part_name(uri)}: {'; '.join(wrong)} (not written by mien's writer?)")
    return problems


def _check_videos(output: AnnotationOutput, videos: list[dict[str, Any]]) -> list[str]:
    problems = []
    if any(r["video_id"] is None for r in videos):
        problems.append(f"videos: {sum(r['video_id'] is None for r in videos)} row(s) without a video_id")
    bad_status = sorted({str(r["status"]) for r in videos if r["status"] not in STATUSES})
    if bad_status:
        problems.append(f"videos: status must be ok or error, found {bad_status}")
    silent = [r["video_id"] for r in videos if r["status"] == "error"
              and (not str(r["error"] or "").strip() or not str(r["error_kind"] or "").strip())]
    if silent:
        problems.append(f"videos: {len(silent)} error row(s) without an error message and error_kind: "
                        f"{_examples(silent)}")
    noisy = [r["video_id"] for r in videos if r["status"] == "ok" and r["error"] is not None]
    if noisy:
        problems.append(f"videos: {len(noisy)} ok row(s) carrying an error message: {_examples(noisy)}")
    undated = [r["video_id"] for r in videos if r["finished_at"] is None]
    if undated:
        problems.append(f"videos: {len(undated)} row(s) without finished_at, so their video's current row "
                        f"cannot be told: {_examples(undated)}")
    twice = [k for k, n in Counter((r["video_id"], r["run_id"]) for r in videos).items() if n > 1]
    if twice:
        problems.append(f"videos: {len(twice)} video(s) with several rows from one run: {_examples(twice)}")
    stale = sorted(f"{vid} (videos/{part})" for part, rows in output.replaced_ok_rows().items() for vid, _ in rows)
    if stale:
        problems.append(f"videos: {len(stale)} replaced ok row(s) still in the files (an interrupted --force or "
                        f"runs that overlapped; mien's readers skip them, pandas and DuckDB do not): "
                        f"{_examples(stale)}; the next `mien annotate` on this output drops them")
    return problems


def _sound_parts(output: AnnotationOutput, name: str, damaged: set[str]) -> list[str]:
    """The committed parts of ``name`` outside damaged chunks."""
    return [uri for uri in output.parts(name) if uri.rsplit("/", 1)[-1] not in damaged]


def _owned_rows(output: AnnotationOutput, name: str, columns: list[str], owners: Owners, damaged: set[str],
                problems: list[str]) -> Iterator[tuple[str, dict[tuple[str, str], list[dict[str, Any]]]]]:
    """Per sound committed part of ``name``, one part at a time (faces parts are large): its rows by
    the current ``ok`` videos row of the same part that owns them, ``(video_id, run_id) -> rows``.
    Rows no such row owns go to ``problems``."""
    for uri in _sound_parts(output, name, damaged):
        part = uri.rsplit("/", 1)[-1]
        groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
        orphans = []
        for r in output.read_part(uri, ["video_id", "run_id", *columns]).to_pylist():
            owner = owners.get(part, {}).get((r["video_id"], r["run_id"]))
            if owner is None or owner["status"] != "ok":
                orphans.append(str(r["video_id"]))
            else:
                groups.setdefault((r["video_id"], r["run_id"]), []).append(r)
        if orphans:
            problems.append(f"{name}/{part}: {len(orphans)} row(s) of no ok row of videos/{part} "
                            f"(video ids {_examples(sorted(set(orphans)))})")
        yield part, groups


def _check_rows(output: AnnotationOutput, name: str, owners: Owners, damaged: set[str], *, identity: tuple[str, ...],
                columns: list[str], row_problem: Callable[[dict[str, Any]], str | None],
                count_column: str, count_unset_ok: bool) -> list[str]:
    """Ownership, ``videos.<count_column>``, rows repeating ``identity`` within a video, and
    ``row_problem`` of each row of ``faces`` or ``tracks``."""
    problems: list[str] = []
    counts: Counter[tuple[str, str, str]] = Counter()
    # A video's rows live in the part of its one current ok row; only a (video, run) owning rows in
    # several parts (a chunk committed twice) can repeat a row across parts.
    parts_of = Counter(key for rows in owners.values() for key, row in rows.items() if row["status"] == "ok")
    across: dict[tuple[str, str], Counter] = {key: Counter() for key, n in parts_of.items() if n > 1}
    repeated, invalid = [], []
    columns = list(dict.fromkeys([*identity, *columns]))
    for part, groups in _owned_rows(output, name, columns, owners, damaged, problems):
        for (vid, run), rows in groups.items():
            counts[(part, vid, run)] = len(rows)
            keys = Counter(tuple(r[c] for c in identity) for r in rows)
            if (vid, run) in across:
                across[(vid, run)].update(keys)
            else:
                repeated += [(vid, k) for k, n in keys.items() if n > 1]
            for r in rows:
                why = row_problem(r)
                if why:
                    invalid.append(f"{_describe(vid, identity, r)}: {why}")
    for (vid, _), keys in across.items():
        repeated += [(vid, k) for k, n in keys.items() if n > 1]
    wrong = [f"{vid} ({row[count_column]} in videos/{part}, {counts[(part, vid, run)]} rows)"
             for part, rows in owners.items() for (vid, run), row in rows.items()
             if row["status"] == "ok" and row[count_column] != counts[(part, vid, run)]
             and not (count_unset_ok and row[count_column] is None)]
    if wrong:
        problems.append(f"videos.{count_column} disagrees with the {name} rows for {len(wrong)} video(s): "
                        f"{_examples(wrong)}")
    if repeated:
        shown = [_describe(vid, identity, dict(zip(identity, k, strict=True))) for vid, k in repeated]
        problems.append(f"{name}: {len(repeated)} duplicate row(s) (the same {', '.join(identity)} of a video "
                        f"twice): {_examples(shown)}")
    if invalid:
        problems.append(f"{name}: {len(invalid)} row(s) breaking the contract: {_examples(invalid)}")
    return problems


def _describe(video_id: str, identity: tuple[str, ...], row: dict[str, Any]) -> str:
    return " ".join([str(video_id), *(f"{c} {row[c]}" for c in identity)])


def _check_faces(output: AnnotationOutput, owners: Owners, damaged: set[str]) -> list[str]:
    return _check_rows(output, "faces", owners, damaged, identity=("frame_index", "track_id"),
                       columns=["bbox", "fe_probs", "au_probs", "au_active"], row_problem=_face_problem,
                       count_column="n_faces", count_unset_ok=False)


def _face_problem(row: dict[str, Any]) -> str | None:
    if row["bbox"] is not None and len(row["bbox"]) != 4:
        return f"bbox has {len(row['bbox'])} values, not x0, y0, x1, y1"
    fe, au = dict(row["fe_probs"] or []), dict(row["au_probs"] or [])
    if any(not 0.0 <= p <= 1.0 for p in [*fe.values(), *au.values()]):
        return "a probability outside 0..1"
    if fe and abs(sum(fe.values()) - 1.0) > PROB_SUM_TOLERANCE:
        return f"fe_probs sums to {sum(fe.values()):.4f}, not 1"
    if any(not AU_NAME.fullmatch(k) for k in au):
        return f"au_probs names {sorted(k for k in au if not AU_NAME.fullmatch(k))}, not AUnn"
    unscored = sorted(set(row["au_active"] or []) - au.keys())
    if unscored:
        return f"au_active lists {unscored}, which au_probs does not score"
    return None


def _check_tracks(output: AnnotationOutput, owners: Owners, damaged: set[str]) -> list[str]:
    # n_tracks is not among the columns DESIGN.md requires: compared where a writer set it
    return _check_rows(output, "tracks", owners, damaged, identity=("track_id", "segment_id"),
                       columns=["start_s", "end_s"], row_problem=_track_problem, count_column="n_tracks",
                       count_unset_ok=True)


def _track_problem(row: dict[str, Any]) -> str | None:
    start, end = row["start_s"], row["end_s"]
    return "ends before it starts" if start is not None and end is not None and end < start else None


def _check_uncommitted(output: AnnotationOutput) -> list[str]:
    """A live run's chunk in flight is part of the protocol; a gone run's leftover is not (pandas
    and DuckDB read its rows)."""
    leftovers = [_part_name(uri) for name in ("faces", "tracks") for uri in output.uncommitted_parts(name)]
    if not leftovers:
        return []
    live = {run for run, lease in read_leases(output.root).items() if lease.dead_because() is None}
    leftovers = [p for p in leftovers if run_of_part(p) not in live]
    if not leftovers:
        return []
    return [f"{len(leftovers)} uncommitted part(s) left by an interrupted run (no videos part of the same name): "
            f"{_examples(leftovers)}; the next `mien annotate` on this output deletes them"]
