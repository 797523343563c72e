"""Hostile inputs, generated at test time (see ``hostile.py``): each ends as an error row with a
clear message or as a rejected input with a reason; the job completes; memory stays bounded."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.reliability import hostile
from tests.reliability.conftest import ROOT, RssSampler, annotate_cfg, check_contract, face_image, local_ray
from workflows.annotate.ingest import discover, printable
from workflows.annotate.pipeline import annotate
from workflows.core.storage import strip_file_scheme

pytestmark = pytest.mark.timeout(420)
GiB = 1 << 30


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, asset):
    """``(media dir, {name: Expect}, manifest path, {manifest entry: reason})``."""
    root = tmp_path_factory.mktemp("hostile")
    media = root / "media"
    media.mkdir()
    outside = root / "outside"
    outside.mkdir()
    (outside / "secret.mp4").write_bytes((ROOT / "tests" / "media.py").read_bytes())
    expect = hostile.build_media(media, face_image(asset))
    entries = hostile.manifest_entries(media, outside)
    lines = [n.encode() for n in sorted(expect)] + [e.encode() for e in entries] + [hostile.NON_UTF8_ENTRY]
    manifest = media / "manifest.csv"
    manifest.write_bytes(b"uri\n" + b"\n".join(_csv_field(x) for x in lines) + b"\n")
    return media, expect, manifest, entries


def _csv_field(raw: bytes) -> bytes:
    return b'"' + raw.replace(b'"', b'""') + b'"' if any(c in raw for c in b',"\n') or not raw else raw


def _check_row(name: str, row: dict, e: hostile.Expect) -> None:
    where = f"{name}: {row.get('status')} {row.get('error_kind')} {row.get('error')}"
    assert row["status"] in ("ok", "error"), where
    if row["status"] == "error":
        assert e.status in ("error", hostile.OK_OR_ERROR), where
        assert row["error"] and row["error_kind"], where
        assert row["error_kind"] != "face_stage_exception", where  # a named kind, not a stray exception
        if e.kinds:
            assert row["error_kind"] in e.kinds, where
        return
    assert e.status in ("ok", hostile.OK_OR_ERROR), where
    if e.size is not None:
        assert (row["width"], row["height"]) == e.size, where
    assert row["n_faces"] >= e.min_faces, where


def test_at_least_fifty_hostile_inputs(corpus):
    _, expect, _, entries = corpus
    assert len(expect) + len(entries) + 1 >= 50 and len(expect) >= 50


def test_each_file_becomes_a_row_with_a_clear_error(corpus):
    """Decode + face stage in-process (no Ray): the per-file verdicts, with exact kinds."""
    from workflows.annotate.stages import DecodeFacesStage

    media, expect, _, _ = corpus
    stage = DecodeFacesStage(annotate_cfg(media))
    try:
        for name, e in sorted(expect.items()):
            _check_row(name, stage.process_video(name, str(media / name)), e)
    finally:
        stage.extractor.close()


@pytest.mark.parametrize("name", ["bomb_12000sq.png", "bomb_header_100000sq.png", "absurd_100000sq.y4m.mkv"])
def test_bombs_are_refused_before_anything_is_allocated(corpus, name):
    """A 12000x12000 PNG is 300 KB on disk, 144 MB as pixels and 432 MB as RGB: it must be
    refused from its header. Peak RSS of a fresh process decoding it must barely move."""
    media, expect, _, _ = corpus
    code = (
        "import resource, sys\n"
        "from workflows.annotate.decode import DecodeError, SamplingPolicy, VideoReader\n"
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "try:\n"
        "    with VideoReader(sys.argv[1], SamplingPolicy.parse('fps:2')) as r:\n"
        "        list(r.frames())\n"
        "    kind = 'ok'\n"
        "except DecodeError as e:\n"
        "    kind = e.kind\n"
        "print(kind, (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024)\n")
    r = subprocess.run([sys.executable, "-c", code, str(media / name)], cwd=ROOT, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    kind, grown = r.stdout.split()
    assert kind in expect[name].kinds
    assert int(grown) < 64 << 20, f"{name}: peak RSS grew by {int(grown) >> 20} MiB"


def test_directory_listing_rejects_what_is_not_a_regular_file_inside(tmp_path):
    d = tmp_path / "corpus"
    (d / "sub").mkdir(parents=True)
    (d / "a.mp4").write_bytes(b"x")
    (tmp_path / "secret.mp4").write_bytes(b"s")
    os.symlink(tmp_path / "secret.mp4", d / "out_link.mp4")  # escapes the root
    os.symlink("/etc/passwd", d / "passwd.mp4")
    os.symlink("/dev/zero", d / "zero.mp4")
    os.symlink(d / "a.mp4", d / "in_link.mp4")  # stays inside: fine
    os.symlink("nowhere.mp4", d / "dangling.mp4")
    os.symlink("loop2.mp4", d / "loop1.mp4")
    os.symlink("loop1.mp4", d / "loop2.mp4")
    os.symlink(d, d / "sub" / "cycle.mp4")  # a directory symlink back up: never followed
    os.symlink("/", d / "sub" / "root")
    os.mkfifo(d / "fifo.mp4")  # opening it would block a worker forever
    with open(os.path.join(os.fsencode(d), b"caf\xe9.mp4"), "wb") as fh:  # Latin-1 name
        fh.write(b"x")
    found = discover(str(d))
    sources, rejected = found.sources, found.rejected
    latin1 = os.fsdecode(os.path.join(os.fsencode(d), b"caf\xe9.mp4"))
    assert [strip_file_scheme(s.uri) for s in sources] == [str(d / "a.mp4"), latin1, str(d / "in_link.mp4")]
    assert sources[1].uri.startswith("file://") and sources[1].uri.endswith("/caf%E9.mp4")  # annotated, UTF-8
    reasons = {Path(r.entry).name: r.reason for r in rejected}
    assert all(r.line == 0 for r in rejected)
    assert "outside the input directory" in reasons["out_link.mp4"]
    assert "outside the input directory" in reasons["passwd.mp4"]
    assert "outside the input directory" in reasons["zero.mp4"]
    assert "dangling or looping symlink" in reasons["dangling.mp4"]
    assert "dangling or looping symlink" in reasons["loop1.mp4"]
    assert "not a regular file" in reasons["fifo.mp4"] and "not a regular file" in reasons["cycle.mp4"]
    assert "caf\\xe9.mp4" not in reasons
    json.dumps([r.entry for r in rejected]).encode("utf-8")


def test_manifest_rejects_hostile_lines_with_reasons(corpus):
    media, expect, manifest, entries = corpus
    found = discover(str(manifest))
    sources, rejected = found.sources, found.rejected
    assert sorted(Path(s.uri).name for s in sources) == sorted(expect)
    by_entry = {r.entry: r for r in rejected}
    for entry, reason in entries.items():  # the NUL byte is stored escaped, as \x00
        assert reason in by_entry[printable(entry)].reason, (entry, by_entry[printable(entry)])
    bad = by_entry[hostile.NON_UTF8_ENTRY.decode("latin-1").replace("\xe9", "\\xe9")]
    assert "not valid UTF-8" in bad.reason
    assert len(rejected) == len(entries) + 1
    first = len(expect) + 2  # CSV header is line 1
    assert by_entry["../../etc/passwd"].line == first


def test_end_to_end_hostile_corpus_completes_with_bounded_memory(corpus, tmp_path):
    """One annotate over the whole hostile manifest on a real local Ray: every accepted file has
    exactly one row with the verdict the decode-level test gives; every hostile line is
    rejected with its reason; the Ray workers' peak RSS stays under a fixed bound."""
    import psutil

    media, expect, manifest, entries = corpus
    out = tmp_path / "out"
    with local_ray():
        raylet = [p.pid for p in psutil.Process().children(recursive=True) if p.name() == "raylet"]
        assert raylet
        with RssSampler(raylet) as rss:
            summary = annotate(str(manifest), str(out), annotate_cfg(tmp_path), progress=False)
    assert summary.videos_total == len(expect)
    assert summary.videos_ok + summary.videos_error == len(expect)
    assert len(summary.rejected) == len(entries) + 1
    check_contract(str(out))
    import pandas as pd

    v = pd.read_parquet(out / "videos")
    assert len(v) == len(expect) and v.video_id.is_unique
    for row in v.to_dict("records"):
        name = Path(row["video_uri"]).name
        _check_row(name, row, expect[name])
    text = summary.render()
    text.encode("utf-8")  # printable: no surrogates from undecodable names
    assert "rejected manifest line" in text
    doc = json.loads((out / "runs" / f"{summary.run_id}.json").read_text())
    assert doc["counts"]["rejected_manifest_lines"] == len(entries) + 1
    peak_worker, name = rss.peak_worker
    print(f"peak RSS: worker {peak_worker / GiB:.2f} GiB ({name}), "
          f"all Ray workers {rss.peak_total / GiB:.2f} GiB")
    # A face worker holds its models in ~0.5 GiB; the 12000x12000 bomb decoded would add
    # 0.55 GiB (grey + RGB copies) before any face detection, the 100000x100000 one 28 GiB.
    assert peak_worker < 1.0 * GiB, rss.peak_by_pid
    assert rss.peak_total < 4 * GiB, rss.peak_by_pid
