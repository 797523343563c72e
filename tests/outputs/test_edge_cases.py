"""Every command on an output without a single face (one failed video): no crash, clear output."""

import json

import pytest
import yaml

from tests.outputs.conftest import mien
from workflows.corpus import schema


@pytest.fixture(scope="module")
def faceless(tmp_path_factory):
    import pyarrow.parquet as pq

    root = tmp_path_factory.mktemp("faceless") / "out"
    for name in ("videos", "faces", "tracks"):
        (root / name).mkdir(parents=True)
    rows = [{"video_id": "d4" + "0" * 18, "video_uri": "s3://bucket/corrupt.mkv", "status": "error",
             "error": "no decodable video frames", "error_kind": "no_frames", "n_frames": 0, "n_faces": 0,
             "run_id": "r1"}]
    pq.write_table(schema.table("videos", rows), root / "videos" / "r1-00000.parquet")
    pq.write_table(schema.table("faces", []), root / "faces" / "r1-00000.parquet")
    pq.write_table(schema.table("tracks", []), root / "tracks" / "r1-00000.parquet")
    return root  # and no runs/ directory at all


def test_inspect_and_report(faceless, tmp_path, capsys):
    assert mien("inspect", faceless, "--json") == 0
    doc = json.loads(capsys.readouterr().out)
    assert (doc["faces"], doc["videos_error"], doc["errors_by_kind"], doc["runs"]) == (0, 1, {"no_frames": 1}, [])
    assert mien("inspect", faceless) == 0
    assert "runs     0" in capsys.readouterr().out
    assert mien("report", "--input", faceless, "--output", tmp_path / "r.html") == 0
    text = (tmp_path / "r.html").read_text()
    assert "no faces in this output" in text and "no decodable video frames" in text
    assert "no runs/*.json" in text


def test_exports(faceless, tmp_path):
    assert mien("export", "openface", "--input", faceless, "--output", tmp_path / "of") == 0
    assert sorted(p.name for p in (tmp_path / "of").iterdir()) == ["videos.csv"]
    assert mien("export", "hf", "--input", faceless, "--output", tmp_path / "hf") == 0
    card = (tmp_path / "hf" / "README.md").read_text()
    meta = yaml.safe_load(card.split("---\n")[1])
    # `datasets` cannot read a config without rows, so only videos is declared (and is the default).
    assert meta["configs"] == [{"config_name": "videos", "default": True,
                                "data_files": [{"split": "train", "path": "data/videos/*.parquet"}]}]
    assert "| `faces` (no rows, not declared) | 0 |" in card
    datasets = pytest.importorskip("datasets", reason="`pip install datasets` to run the load_dataset check")
    videos = datasets.load_dataset(str(tmp_path / "hf"), split="train", cache_dir=str(tmp_path / "c"))
    assert videos["error_kind"] == ["no_frames"]
