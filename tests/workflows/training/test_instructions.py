"""Instruction rows from annotate output and labeled records; FERID / FEALLM text; leak-free splits."""

from __future__ import annotations

import datetime as dt
import io
import random
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest
from PIL import Image

from model.taxonomy import AU_NAMES
from workflows.core import storage
from workflows.corpus import schema
from workflows.training.datasets import concat_parsed, parse_bp4d, parse_rafdb
from workflows.training.instructions import (
    IMAGE_TOKEN,
    INSTRUCTION_SCHEMA,
    TASKS,
    PseudoLabelFilter,
    assign_splits,
    au_detection_answer,
    build_conversations,
    fe_au_reasoning_answer,
    fe_category_turns,
    instructions_from_annotations,
    instructions_from_records,
    read_instructions,
    select_pseudo_labels,
    split_counts,
    split_of,
    write_instructions,
)

FERID_QUESTION = ("<image>\nWhat is the facial expression of the person in the image? Choose one from the "
                  "following options: {surprise, fear, disgust, happiness, sadness, anger, neutral}.")


def jpeg(color: tuple[int, int, int] = (200, 120, 90), fmt: str = "JPEG") -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (16, 16), color).save(buf, format=fmt)
    return buf.getvalue()


def au_probs(active: dict[str, float]) -> list[tuple[str, float]]:
    return [(a, active.get(a, 0.1)) for a in AU_NAMES]


def face(video_id: str, frame: int, track: int | None, label: str, conf: float, *, det: float = 0.9,
         aus: dict[str, float] | None = None, crop: bytes | None = None) -> dict:
    """One faces/ row as the annotate sink writes it (workflows.corpus.schema.FACES)."""
    aus = aus or {}
    return {
        "video_id": video_id, "frame_index": frame, "timestamp_s": frame / 25.0, "track_id": track,
        "bbox": [10.0, 10.0, 60.0, 70.0], "det_score": det, "age": 31.0, "gender": "female",
        "fe_label": label, "fe_confidence": conf, "fe_probs": [(label, conf), ("neutral", 1 - conf)],
        "au_probs": au_probs(aus), "au_active": [a for a, p in aus.items() if p >= 0.5],
        "au_evidence": au_probs(aus), "fe_prior": [(label, conf)], "pose": [0.0, 5.0, -2.0],
        # every fixed-size list filled: pyarrow 25 cannot read back a null in one from Parquet
        "landmarks_5": [20.0, 30.0, 50.0, 30.0, 35.0, 45.0, 25.0, 60.0, 45.0, 60.0],
        "description": None, "model_id": "mien-prior@1", "run_id": "run-1", "crop_jpeg": crop,
    }


SMILE = {"AU06": 0.9, "AU12": 0.8, "AU25": 0.55}


@pytest.fixture
def annotate_output(tmp_path: Path) -> Path:
    """A small mien annotate output: two committed chunks (a faces part and the videos part of the
    same name that commits it, as workflows.corpus.writer writes them)."""
    out = tmp_path / "out"
    part0 = [
        face("v1", 0, 0, "happiness", 0.90, aus=SMILE, crop=jpeg()),
        face("v1", 1, 0, "happiness", 0.95, aus=SMILE, crop=jpeg()),  # best face of track v1/0
        face("v1", 2, 0, "happiness", 0.70, aus=SMILE, crop=jpeg()),
        face("v1", 0, 1, "sadness", 0.50),  # below min_fe_confidence
        face("v1", 2, 1, "sadness", 0.99, det=0.3),  # below min_det_score
    ]
    part1 = [
        face("v2", 0, None, "neutral", 0.80),  # a still image, untracked, no crop
        face("v3", 0, 5, "happiness", 0.90), face("v3", 1, 5, "happiness", 0.80),
        face("v3", 2, 5, "anger", 0.95),
    ]
    uris = {"v1": "/data/v1.mp4", "v2": "/data/p.jpg", "v3": "/data/v3.mkv"}
    finished = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    for i, rows in enumerate((part0, part1)):
        videos = [{"video_id": v, "video_uri": uris[v], "status": "ok", "run_id": "run-1", "finished_at": finished}
                  for v in dict.fromkeys(r["video_id"] for r in rows)]
        for name, table_rows in (("faces", rows), ("videos", videos)):  # videos last: it commits the chunk
            (out / name).mkdir(parents=True, exist_ok=True)
            pq.write_table(schema.table(name, table_rows), out / name / f"part-{i}.parquet")
    return out


def test_ferid_category_and_feallm_reasoning_text():
    turns = fe_category_turns("happiness")
    assert turns == [{"from": "human", "value": FERID_QUESTION}, {"from": "gpt", "value": "happiness"}]
    # label first (generation is forced to open with the scored label), then the AU evidence
    assert fe_au_reasoning_answer("happiness", ["AU06", "AU12"]) == (
        "The person shows happiness, because AU06 Cheek Raiser and AU12 Lip Corner Puller are active: "
        "the cheeks are raised and the lip corners are pulled up.")
    # only the AUs that explain the label are its reasons
    assert fe_au_reasoning_answer("happiness", ["AU12", "AU25", "AU06"]) == (
        fe_au_reasoning_answer("happiness", ["AU06", "AU12"]))
    assert fe_au_reasoning_answer("sadness", ["AU15"]).startswith(
        "The person shows sadness, because AU15 Lip Corner Depressor is active")
    assert "no action unit is clearly active" in fe_au_reasoning_answer("neutral", [])
    # active AUs that contradict the label: no invented reason, no row
    assert fe_au_reasoning_answer("happiness", ["AU04"]) is None
    assert au_detection_answer([], ["AU01", "AU12"]) == "none"
    assert au_detection_answer(["AU12", "AU01"], ["AU01", "AU12"]) == (
        "AU01 Inner Brow Raiser, AU12 Lip Corner Puller")
    yes_no = build_conversations("au_yes_no", fe_label=None, au_active=["AU12"], au_labeled=["AU01", "AU12"])
    assert [t["value"] for t in yes_no] == [
        "<image>\nIs AU01 (Inner Brow Raiser) present on this face? Answer yes or no.", "no",
        "Is AU12 (Lip Corner Puller) present on this face? Answer yes or no.", "yes"]
    # a task whose labels are missing yields no row
    no_aus = build_conversations("fe_au_reasoning", fe_label="happiness", au_active=None, au_labeled=None)
    assert no_aus is None
    with pytest.raises(ValueError, match="unknown task"):
        build_conversations("caption", fe_label="happiness", au_active=None, au_labeled=None)


def test_instruction_text_is_in_the_builtin_tokenizer_vocabulary():
    """Every word of every task is a known token of the tiny models' word tokenizer."""
    from model.tokenizer import _WORD, builtin_vocabulary

    vocab = set(builtin_vocabulary())
    texts = []
    for fe in ("happiness", "neutral", "anger"):
        for task in TASKS:
            turns = build_conversations(task, fe_label=fe, au_active=["AU04", "AU06", "AU12"],
                                        au_labeled=list(AU_NAMES))
            texts += [t["value"].replace(IMAGE_TOKEN, "") for t in turns or []]
    unknown = {w for text in texts for w in _WORD.findall(text.lower())} - vocab
    assert not unknown, f"words outside the built-in vocabulary: {sorted(unknown)}"


def test_pseudo_labels_filtered_deduped_by_track(annotate_output):
    built = instructions_from_annotations(str(annotate_output), flt=PseudoLabelFilter(min_au_margin=0.1))
    table = built.table
    assert table.schema == INSTRUCTION_SCHEMA
    rows = table.to_pandas()
    kept = rows.drop_duplicates("group_id")[["video_id", "frame_index", "track_id"]]
    # v1/0 → frame 1 (the most confident); v1/1 dropped (confidence, detection); v2 untracked kept;
    # v3/5 → frame 2 (anger, the most confident: no agreement filter by default)
    faces = {(r["video_id"], r["frame_index"], r["track_id"])
             for r in table.select(["video_id", "frame_index", "track_id"]).to_pylist()}
    assert faces == {("v1", 1, "0"), ("v2", 0, None), ("v3", 2, "5")}
    assert len(kept) == 3
    assert built.report["dropped"] == {"det_score": 1, "fe_confidence": 1, "fe_label": 0, "dedupe_track": 4}
    assert built.report["n_faces"] == 9 and built.report["n_kept_faces"] == 3
    v1 = rows[rows["video_id"] == "v1"].set_index("task")
    assert set(v1.index) == {"fe_category", "au_detection", "fe_au_reasoning"}
    assert v1.loc["fe_category", "conversations"][0]["value"] == FERID_QUESTION
    assert v1.loc["fe_category", "conversations"][1]["value"] == "happiness"
    # AU25 at 0.55 is within the 0.1 margin of 0.5: neither asked about nor answered
    assert "AU25" not in v1.loc["au_detection", "au_labeled"]
    assert v1.loc["au_detection", "conversations"][1]["value"] == "AU06 Cheek Raiser, AU12 Lip Corner Puller"
    assert v1.loc["fe_au_reasoning", "conversations"][1]["value"].startswith(
        "The person shows happiness, because AU06 Cheek Raiser and AU12 Lip Corner Puller are active")
    assert v1.loc["fe_category", "image"] == jpeg() and v1.loc["fe_category", "media"] == "image"
    assert v1.loc["fe_category", "age"] == 31.0 and v1.loc["fe_category", "gender"] == "female"
    assert dict(v1.loc["fe_category", "au_evidence"])["AU06"] == pytest.approx(0.9)
    assert dict(v1.loc["fe_category", "fe_prior"]) == {"happiness": pytest.approx(0.95)}
    assert list(v1.loc["fe_category", "pose"]) == [0.0, 5.0, -2.0]
    assert v1.loc["fe_category", "id"] == "pseudo/v1/1/0/fe_category"
    v2 = rows[rows["video_id"] == "v2"].iloc[0]
    assert v2["image"] is None and v2["image_uri"] == "/data/p.jpg" and v2["media"] == "image"
    v3 = rows[rows["video_id"] == "v3"].iloc[0]
    assert v3["media"] == "frame" and v3["image_uri"] == "/data/v3.mkv" and v3["fe_label"] == "anger"
    assert set(rows["group_id"]) == {"v1", "v2", "v3"}


def test_track_agreement_class_cap_and_required_crop(annotate_output):
    from workflows.corpus.reader import AnnotationOutput

    faces = AnnotationOutput(str(annotate_output)).faces_of()
    # v3/5: happiness 2 of 3 faces = 0.67 agreement; majority faces only
    kept, dropped = select_pseudo_labels(faces, PseudoLabelFilter(min_track_agreement=0.6))
    v3 = kept[kept["video_id"] == "v3"]
    assert v3["fe_label"].tolist() == ["happiness"] and v3["frame_index"].tolist() == [0]
    assert dropped["track_agreement"] == 1
    strict_kept, _ = select_pseudo_labels(faces, PseudoLabelFilter(min_track_agreement=0.7))
    assert "v3" not in set(strict_kept["video_id"])
    capped, dropped = select_pseudo_labels(faces, PseudoLabelFilter(max_per_track=3, max_per_class=2))
    assert (capped["fe_label"] == "happiness").sum() == 2 and dropped["class_cap"] == 3
    with_crop, dropped = select_pseudo_labels(faces, PseudoLabelFilter(require_crop=True))
    assert set(with_crop["video_id"]) == {"v1"} and dropped["no_crop"] == 4
    legacy = faces.rename(columns={"crop_jpeg": "crop"})  # older outputs name the column "crop"
    assert len(select_pseudo_labels(legacy, PseudoLabelFilter(require_crop=True))[0]) == 1
    with pytest.raises(ValueError, match="max_per_track"):
        select_pseudo_labels(faces, PseudoLabelFilter(max_per_track=0))


def test_records_to_instructions_with_embedded_images(tmp_path):
    img_dir = tmp_path / "Image" / "aligned"
    img_dir.mkdir(parents=True)
    (img_dir / "train_00001_aligned.jpg").write_bytes(jpeg())
    (img_dir / "train_00002_aligned.jpg").write_bytes(jpeg(fmt="PNG"))  # misnamed PNG → re-encoded
    labels = tmp_path / "EmoLabel" / "list_patition_label.txt"
    labels.parent.mkdir()
    labels.write_text("train_00001.jpg 4\ntrain_00002.jpg 1\ntrain_00003.jpg 7\n")
    occ = tmp_path / "AU_OCC"
    occ.mkdir()
    (occ / "M002_T3.csv").write_text("frame,1,2,4,6,7,10,12,14,15,17,23,24\n7,0,0,0,1,0,0,1,0,0,0,0,9\n")
    (occ / "M002" / "T3").mkdir(parents=True)
    (occ / "M002" / "T3" / "0007.jpg").write_bytes(jpeg((10, 20, 30)))
    records = concat_parsed([parse_rafdb(str(labels)), parse_bp4d(str(occ))])
    built = instructions_from_records(records, embed_images=True)
    rows = built.table.to_pandas()
    # train_00003 has no image file: dropped and listed
    assert built.report["n_image_errors"] == 1
    assert "train_00003_aligned.jpg" in built.report["image_errors"][0]
    raf = rows[rows["source"] == "rafdb"].set_index("id")
    assert set(raf["task"]) == {"fe_category"}  # RAF-DB has no AU labels
    assert raf.loc["rafdb/train_00001/fe_category", "conversations"][1]["value"] == "happiness"
    assert raf.loc["rafdb/train_00002/fe_category", "conversations"][1]["value"] == "surprise"
    assert all(b[:3] == b"\xff\xd8\xff" for b in raf["image"])
    assert raf.loc["rafdb/train_00001/fe_category", "dataset_split"] == "train"
    bp4d = rows[rows["source"] == "bp4d"].set_index("task")
    assert set(bp4d.index) == {"au_detection"}  # no FE label: no category or reasoning rows
    assert bp4d.loc["au_detection", "group_id"] == "bp4d:M002"  # subject-independent splits
    answer = bp4d.loc["au_detection", "conversations"][1]["value"]
    assert answer == "AU06 Cheek Raiser, AU12 Lip Corner Puller"
    assert "AU24" not in bp4d.loc["au_detection", "conversations"][0]["value"]  # coded 9: not asked
    assert bp4d.loc["au_detection", "image"] == jpeg((10, 20, 30))
    assert bp4d.loc["au_detection", "image_uri"].endswith("M002/T3/0007.jpg")


def test_split_by_group_never_leaks_and_is_stable():
    rng = random.Random(0)
    groups = [f"video-{i}" for i in range(2000)]
    rows = pd.DataFrame({"group_id": [g for g in groups for _ in range(rng.randint(1, 4))]})
    split = assign_splits(rows)
    per_group = split.groupby("group_id")["split"].nunique()
    assert (per_group == 1).all()
    shares = split.drop_duplicates("group_id")["split"].value_counts(normalize=True)
    assert shares["train"] == pytest.approx(0.8, abs=0.04)
    assert shares["holdout"] == pytest.approx(0.1, abs=0.03)
    # order-independent and stable when data grows: old groups keep their split
    shuffled = assign_splits(rows.sample(frac=1.0, random_state=1))
    assert shuffled.groupby("group_id")["split"].first().equals(split.groupby("group_id")["split"].first())
    grown = assign_splits(pd.concat([rows, pd.DataFrame({"group_id": ["video-new"] * 3})]))
    assert grown.groupby("group_id")["split"].first().drop("video-new").equals(
        split.groupby("group_id")["split"].first())
    # Pinned: a change of the hashing would silently move groups, the holdout among them, between
    # training runs and releases (Python's hash() would differ per process).
    assert {g: split_of(g) for g in ("video-0", "video-4", "video-7", "video-15")} == {
        "video-0": "train", "video-4": "val", "video-7": "train", "video-15": "holdout"}
    # Another salt is another draw: about a third of the groups move, the shares hold.
    resalted = pd.Series({g: split_of(g, salt="other") for g in groups})
    moved = resalted != split.groupby("group_id")["split"].first()[resalted.index]
    assert moved.mean() == pytest.approx(0.34, abs=0.05)
    assert resalted.value_counts(normalize=True)["train"] == pytest.approx(0.8, abs=0.04)
    with pytest.raises(ValueError, match="sum to 1"):
        assign_splits(rows, {"train": 0.9, "val": 0.2})


def test_split_instruction_table_keeps_every_video_in_one_split(annotate_output, tmp_path):
    built = instructions_from_annotations(str(annotate_output), flt=PseudoLabelFilter(max_per_track=3))
    table = assign_splits(built.table, {"train": 0.5, "val": 0.25, "holdout": 0.25})
    df = table.select(["video_id", "track_id", "split"]).to_pandas()
    assert (df.groupby("video_id")["split"].nunique() == 1).all()
    by_track = instructions_from_annotations(str(annotate_output),
                                             flt=PseudoLabelFilter(max_per_track=3, group_by="track")).table
    assert set(by_track.column("group_id").to_pylist()) == {"v1/0", "v2/frame0", "v3/5"}
    counts = split_counts(table)
    assert sum(c["rows"] for c in counts.values()) == table.num_rows
    files = write_instructions(table, str(tmp_path / "instr"), rows_per_file=5)
    assert len(files) == -(-table.num_rows // 5)
    back = read_instructions(str(tmp_path / "instr"))
    assert back.schema == INSTRUCTION_SCHEMA and back.num_rows == table.num_rows
    assert back.column("conversations").to_pylist() == table.column("conversations").to_pylist()


def test_labels_and_instructions_on_s3(s3_bucket):
    storage.write_text(f"{s3_bucket}/rafdb/EmoLabel/list_patition_label.txt", "test_0001.jpg 6\nbroken\n")
    parsed = parse_rafdb(f"{s3_bucket}/rafdb/EmoLabel/list_patition_label.txt")
    assert parsed.records["uri"].tolist() == [f"{s3_bucket}/rafdb/Image/aligned/test_0001_aligned.jpg"]
    assert str(parsed.report.problems[0]).startswith(f"{s3_bucket}/rafdb/EmoLabel/list_patition_label.txt:2:")
    table = assign_splits(instructions_from_records(parsed).table)
    write_instructions(table, f"{s3_bucket}/instructions")
    back = read_instructions(f"{s3_bucket}/instructions")
    assert back.column("fe_label").to_pylist() == ["anger"]
