"""`mien export hf`: Parquet + dataset card; `datasets.load_dataset` reads it with images."""

import io

import pyarrow.parquet as pq
import pytest
import yaml

from tests.outputs.conftest import faces_frame, mien


@pytest.fixture(scope="module")
def exported(annotated, tmp_path_factory):
    out = tmp_path_factory.mktemp("hf")
    assert mien("export", "hf", "--input", annotated.root, "--output", out, "--name", "fixture faces") == 0
    return out


def test_card_and_parquet_layout(annotated, exported):
    card = (exported / "README.md").read_text()
    assert card.startswith("---\n")
    meta = yaml.safe_load(card.split("---\n")[1])
    assert meta["pretty_name"] == "fixture faces"
    configs = {c["config_name"]: c for c in meta["configs"]}
    assert set(configs) == {"faces", "tracks", "videos"} and configs["faces"]["default"] is True
    assert configs["faces"]["data_files"] == [{"split": "train", "path": "data/faces/*.parquet"}]
    assert "## Limitations and responsible use" in card and "| happiness | 3 |" in card

    shards = sorted((exported / "data" / "faces").glob("*.parquet"))
    assert len(shards) == 1  # the empty run-1 part is not exported
    t = pq.read_table(shards[0])
    assert b"huggingface" in t.schema.metadata
    assert t.column_names[:6] == ["video_id", "frame_index", "timestamp_s", "track_id", "segment_id", "image"]
    assert "crop_jpeg" not in t.column_names
    faces = faces_frame(annotated.root)
    assert t.column("image").to_pylist()[0]["bytes"] == faces["crop_jpeg"].iloc[0]


def test_load_dataset_reads_every_config(annotated, exported, tmp_path):
    datasets = pytest.importorskip("datasets", reason="`pip install datasets` to run the load_dataset check")
    faces = datasets.load_dataset(str(exported), "faces", split="train", cache_dir=str(tmp_path))
    assert isinstance(faces.features["image"], datasets.Image)
    src = faces_frame(annotated.root)
    assert len(faces) == len(src) == annotated.n_faces
    got = {(r["video_id"], r["frame_index"], r["track_id"]): r for r in faces}
    for _, face in src.iterrows():
        row = got[(face["video_id"], face["frame_index"], face["track_id"])]
        assert row["fe_label"] == face["fe_label"]
        assert row["image"].size == (112, 112)
        probs = dict(face["au_probs"])
        for au, p in row["au_probs"].items():
            assert (p is None and au not in probs) or p == pytest.approx(probs[au])
        assert row["fe_probs"][face["fe_label"]] == pytest.approx(face["fe_confidence"], abs=1e-6)
        buf = io.BytesIO()
        row["image"].save(buf, format="PNG")  # decodes to pixels
    tracks = datasets.load_dataset(str(exported), "tracks", split="train", cache_dir=str(tmp_path))
    videos = datasets.load_dataset(str(exported), "videos", split="train", cache_dir=str(tmp_path))
    assert len(tracks) == 2 and len(videos) == 3
    assert sorted(videos["status"]) == ["error", "ok", "ok"]


def test_reexport_removes_stale_shards(annotated, tmp_path):
    stale = tmp_path / "data" / "faces" / "from-an-older-export.parquet"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"PAR1")
    assert mien("export", "hf", "--input", annotated.root, "--output", tmp_path, "--no-images") == 0
    assert not stale.exists()
    t = pq.read_table(next((tmp_path / "data" / "faces").glob("*.parquet")))
    assert "image" not in t.column_names and len(t) == annotated.n_faces
