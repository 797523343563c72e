"""The output contract check (``workflows.corpus.contract``, ``mien inspect OUT --check``): a valid
output passes, and each way of breaking the contract is named, on local disk and on S3."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable
from pathlib import Path

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.outputs.conftest import RUN1, RUN2, FixtureOutput, build_annotated_output, mien
from tests.workflows.corpus.test_reader import RUN2_FINISHED, RUN3, write_chunk
from workflows.corpus import schema
from workflows.corpus.contract import check_output
from workflows.corpus.lease import RunLease
from workflows.corpus.writer import AnnotationSink


def _rows(root: Path, name: str, run_id: str) -> list[dict]:
    return pq.read_table(root / name / f"{run_id}-00000.parquet").to_pylist()


def _rewrite(root: Path, name: str, run_id: str, edit: Callable[[list[dict]], None]) -> None:
    """Rewrite one part through the contract schema after ``edit`` changed its rows in place."""
    rows = _rows(root, name, run_id)
    edit(rows)
    pq.write_table(schema.table(name, rows), root / name / f"{run_id}-00000.parquet")


def _first_face(rows: list[dict], **changes) -> None:
    rows[0].update(changes)


def _drop_column(root: Path, name: str, run_id: str, column: str) -> None:
    path = root / name / f"{run_id}-00000.parquet"
    pq.write_table(pq.read_table(path).drop_columns([column]), path)


def _retype_frame_index(root: Path) -> None:
    path = root / "faces" / f"{RUN2}-00000.parquet"
    t = pq.read_table(path)
    i = t.schema.get_field_index("frame_index")
    pq.write_table(t.set_column(i, "frame_index", t.column("frame_index").cast(pa.int64())), path)


def _cut_short(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


# (what is broken, how, a piece of the problem that must name it)
BREAKAGES: list[tuple[str, Callable[[FixtureOutput], None], str]] = [
    ("unknown status", lambda fx: _rewrite(fx.root, "videos", RUN2, lambda r: r[1].update(status="done")),
     "status must be ok or error, found ['done']"),
    ("error row without a message", lambda fx: _rewrite(fx.root, "videos", RUN1, lambda r: r[1].update(error=" ")),
     "1 error row(s) without an error message"),
    ("ok row with an error message",
     lambda fx: _rewrite(fx.root, "videos", RUN2, lambda r: r[1].update(error="decode failed")),
     "1 ok row(s) carrying an error message"),
    ("row without finished_at",
     lambda fx: _rewrite(fx.root, "videos", RUN1, lambda r: r[0].update(finished_at=None)),
     "1 row(s) without finished_at"),
    ("a face row twice", lambda fx: _rewrite(fx.root, "faces", RUN2, lambda r: r.append(dict(r[0]))),
     "faces: 1 duplicate row(s) (the same frame_index, track_id of a video twice)"),
    ("faces missing", lambda fx: _rewrite(fx.root, "faces", RUN2, lambda r: r.pop()),
     "videos.n_faces disagrees with the faces rows for 1 video(s)"),
    ("faces of an error row", lambda fx: _rewrite(fx.root, "faces", RUN1, lambda r: r.append(
        {**_rows(fx.root, "faces", RUN2)[0], "video_id": fx.error_video_id, "run_id": RUN1})),
     f"faces/{RUN1}-00000.parquet: 1 row(s) of no ok row of videos/{RUN1}-00000.parquet"),
    ("expression probabilities not summing to 1", lambda fx: _rewrite(fx.root, "faces", RUN2, lambda r: _first_face(
        r, fe_probs=[("happiness", 0.5), ("neutral", 0.1)])), "fe_probs sums to 0.6000, not 1"),
    ("an active AU without a probability", lambda fx: _rewrite(fx.root, "faces", RUN2, lambda r: _first_face(
        r, au_active=["AU99"])), "au_active lists ['AU99'], which au_probs does not score"),
    ("a segment ending before it starts", lambda fx: _rewrite(fx.root, "tracks", RUN2, lambda r: r[0].update(
        end_s=r[0]["start_s"] - 1)), "track_id 0 segment_id 0: ends before it starts"),
    ("a contract column missing", lambda fx: _drop_column(fx.root, "tracks", RUN2, "description"),
     f"tracks/{RUN2}-00000.parquet lacks columns ['description']"),
    ("a column of another type", lambda fx: _retype_frame_index(fx.root),
     f"faces/{RUN2}-00000.parquet: frame_index is int64, not int32"),
    ("no run file", lambda fx: [p.unlink() for p in (fx.root / "runs").iterdir()],
     "no readable runs/<run_id>.json"),
    ("an unreadable run file", lambda fx: (fx.root / "runs" / f"{RUN2}.json").write_text("{"),
     f"runs/{RUN2}.json is not readable JSON"),
    ("a replaced ok row left in the files",
     lambda fx: write_chunk(fx.root, RUN3, fx.video_id, RUN2_FINISHED + dt.timedelta(days=1), 2),
     "1 replaced ok row(s) still in the files"),
    ("a part cut short", lambda fx: _cut_short(fx.root / "faces" / f"{RUN2}-00000.parquet"),
     f"damaged part(s) left out, so 2 video(s) count as not annotated: faces/{RUN2}-00000.parquet"),
    ("a crashed run's uncommitted part",
     lambda fx: write_chunk(fx.root, RUN3, fx.video_id, RUN2_FINISHED + dt.timedelta(days=1), 2, commit=False),
     f"2 uncommitted part(s) left by an interrupted run (no videos part of the same name): faces/{RUN3}-00000"),
]


@pytest.fixture
def fx(tmp_path) -> FixtureOutput:
    fx = build_annotated_output(tmp_path)
    assert check_output(str(fx.root)) == []
    return fx


@pytest.mark.parametrize("broken,breaker,named", BREAKAGES, ids=[b for b, _, _ in BREAKAGES])
def test_each_breach_of_the_contract_is_named(fx, broken, breaker, named):
    breaker(fx)
    problems = check_output(str(fx.root))
    assert any(named in p for p in problems), f"{broken}: {problems}"


def test_not_an_output_is_one_problem_that_says_what_to_give(tmp_path):
    (tmp_path / "faces").mkdir()
    assert check_output(str(tmp_path)) == [f"{tmp_path} is not a mien annotate output (it has no videos/ "
                                           "directory); give the --output directory of `mien annotate`"]


def test_the_next_run_tidying_the_files_makes_the_output_pass_again(fx):
    write_chunk(fx.root, RUN3, fx.video_id, RUN2_FINISHED + dt.timedelta(days=1), 2)
    assert check_output(str(fx.root))
    AnnotationSink(str(fx.root), "20260104T000000Z-dddd4444").drop_replaced()
    assert check_output(str(fx.root)) == []


def test_a_live_runs_chunk_in_flight_is_no_problem(fx):
    """Its faces part precedes its commit by design; readers ignore it until then."""
    with RunLease(str(fx.root), RUN3, ttl_s=60):
        write_chunk(fx.root, RUN3, fx.video_id, RUN2_FINISHED + dt.timedelta(days=1), 2, commit=False)
        assert check_output(str(fx.root)) == []
    assert any("uncommitted part(s) left by an interrupted run" in p for p in check_output(str(fx.root)))


def test_inspect_check_on_s3_exits_0_when_clean_and_1_with_the_problems(fx, s3_bucket, capsys):
    root = f"{s3_bucket}/annotations"
    fs = fsspec.filesystem("s3")
    fs.put(str(fx.root), root.removeprefix("s3://"), recursive=True)
    assert mien("inspect", root, "--check") == 0
    assert capsys.readouterr().out.rstrip().endswith("contract: ok (docs/OUTPUT.md)")

    fs.rm(f"{root}/runs".removeprefix("s3://"), recursive=True)
    assert mien("inspect", root, "--json", "--check") == 1
    captured = capsys.readouterr()
    assert json.loads(captured.out)["videos_ok"] == 2  # stdout stays the JSON document
    assert captured.err.splitlines()[-2:] == [
        "contract: 1 problem(s) (docs/OUTPUT.md)",
        "  - no readable runs/<run_id>.json: no run on this output has finished (a run writes it when it ends); "
        "rerun `mien annotate` with the same --input and --output"]
