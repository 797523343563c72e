"""Labeled-dataset parsers: each format in its release layout, label maps, skips and file:line problems."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pytest

from workflows.core.config import ConfigError, from_dict
from workflows.training import datasets
from workflows.training.datasets import (
    RECORD_SCHEMA,
    LabeledSource,
    LabelFileError,
    concat_parsed,
    load_labeled,
    parse_affectnet,
    parse_bp4d,
    parse_dfew,
    parse_disfa,
    parse_ferplus,
    parse_ferv39k,
    parse_mafw,
    parse_rafdb,
)


def write(path: Path, text: str) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return str(path)


def problem_lines(parsed: datasets.ParsedDataset) -> list[int | None]:
    return [p.line for p in parsed.report.problems]


# --- RAF-DB ----------------------------------------------------------------------------------

RAF_LIST = """train_00001.jpg 5
train_00002.jpg 4
train_00003.jpg
test_0001.jpg 7

test_0002.jpg 9
test_0003.jpg x
test_0004.jpg 1
"""


def test_rafdb_labels_uris_and_malformed_rows(tmp_path):
    label_file = write(tmp_path / "basic" / "EmoLabel" / "list_patition_label.txt", RAF_LIST)
    parsed = parse_rafdb(label_file)
    rec = parsed.records.set_index("id")
    # RAF-DB ids: 1 surprise, 2 fear, 3 disgust, 4 happiness, 5 sadness, 6 anger, 7 neutral
    assert rec.loc["rafdb/train_00001", "fe_label"] == "sadness"
    assert rec.loc["rafdb/train_00002", "fe_label"] == "happiness"
    assert rec.loc["rafdb/test_0001", "fe_label"] == "neutral"
    assert rec.loc["rafdb/test_0004", "fe_label"] == "surprise"
    assert rec.loc["rafdb/train_00001", "split"] == "train"
    assert rec.loc["rafdb/test_0001", "split"] == "test"
    # EmoLabel/ layout → images under Image/aligned with the _aligned suffix
    expected_uri = tmp_path / "basic/Image/aligned/train_00001_aligned.jpg"
    assert rec.loc["rafdb/train_00001", "uri"] == str(expected_uri)
    report = parsed.report
    assert report.n_rows_read == 7 and report.n_records == 4
    assert problem_lines(parsed) == [3, 6, 7]
    text = [str(p) for p in report.problems]
    assert text[0].startswith(f"{label_file}:3: expected 'NAME LABEL'")
    assert "label must be an integer 1..7" in text[1]
    assert report.to_dict()["n_problems"] == 3


def test_rafdb_strict_and_threshold_raise_one_error_listing_problems(tmp_path):
    label_file = write(tmp_path / "list_patition_label.txt", RAF_LIST)
    with pytest.raises(LabelFileError) as err:
        parse_rafdb(label_file, strict=True)
    assert f"{label_file}:3" in str(err.value) and f"{label_file}:7" in str(err.value)
    assert len(err.value.problems) == 3
    # 3 of 7 rows malformed = 43%
    with pytest.raises(LabelFileError, match="above max_problem_fraction"):
        parse_rafdb(label_file, max_problem_fraction=0.25)
    assert len(parse_rafdb(label_file, max_problem_fraction=0.5)) == 4
    # original images, root next to the list when not in EmoLabel/
    rec = parse_rafdb(label_file, aligned=False).records
    assert rec["uri"].iloc[0] == str(tmp_path / "train_00001.jpg")


# --- AffectNet -------------------------------------------------------------------------------

AFFECTNET_HEADER = ("subDirectory_filePath,face_x,face_y,face_width,face_height,facial_landmarks,"
                    "expression,valence,arousal\n")


def test_affectnet_label_map_skips_and_problems(tmp_path):
    rows = [
        '689/a.jpg,10,20,100,120,"1.0;2.0;3.0;4.0",1,0.5,0.2',  # 2 happiness
        "689/b.jpg,0,0,50,50,,6,-0.4,0.7",  # 3 anger, no landmarks
        "689/c.jpg,0,0,50,50,,8,-2,-2",  # 4 None → skipped
        "689/d.jpg,0,0,50,50,,9,-2,-2",  # 5 Uncertain → skipped
        "689/e.jpg,0,0,50,50,,10,-2,-2",  # 6 No-Face → skipped
        "689/f.jpg,0,0,50,50,,7,0.1,0.1",  # 7 contempt → skipped in the basic space
        "689/g.jpg,0,0,50,50,,happy,0.1,0.1",  # 8 malformed expression
        "689/h.jpg,0,0,50",  # 9 too few fields
        "689/i.jpg,0,0,50,50,,12,0,0",  # 10 out of range
    ]
    csv_file = write(tmp_path / "Manually_Annotated_file_lists" / "training.csv",
                     AFFECTNET_HEADER + "\n".join(rows))
    parsed = parse_affectnet(csv_file)
    rec = parsed.records.set_index("id")
    assert list(rec.index) == ["affectnet/689/a", "affectnet/689/b"]
    assert rec.loc["affectnet/689/a", "fe_label"] == "happiness"
    assert rec.loc["affectnet/689/b", "fe_label"] == "anger"
    assert rec.loc["affectnet/689/a", "bbox"] == [10.0, 20.0, 110.0, 140.0]
    assert rec.loc["affectnet/689/a", "landmarks"] == [1.0, 2.0, 3.0, 4.0]
    assert rec.loc["affectnet/689/a", "valence"] == pytest.approx(0.5)
    assert rec.loc["affectnet/689/a", "split"] == "train"
    assert rec.loc["affectnet/689/a", "uri"] == str(tmp_path / "Manually_Annotated_Images/689/a.jpg")
    assert dict(parsed.report.skipped) == {"none": 1, "uncertain": 1, "no_face": 1, "contempt": 1}
    assert problem_lines(parsed) == [8, 9, 10]
    eight = parse_affectnet(csv_file, label_space="dataset")
    assert "contempt" in set(eight.records["fe_label"])


def test_affectnet_wrong_header_is_a_clear_error(tmp_path):
    csv_file = write(tmp_path / "validation.csv", "path,label\nx.jpg,1\n")
    with pytest.raises(LabelFileError, match="header lacks"):
        parse_affectnet(csv_file)


# --- FERPlus ---------------------------------------------------------------------------------

FERPLUS = """Usage,Image name,neutral,happiness,surprise,sadness,anger,disgust,fear,contempt,unknown,NF
Training,fer0000000.png,4,0,0,1,3,2,0,0,0,0
Training,fer0000001.png,0,10,0,0,0,0,0,0,0,0
PublicTest,fer0000002.png,3,0,0,3,0,0,0,0,4,0
PrivateTest,fer0000003.png,0,0,0,0,0,0,0,0,0,10
Training,,0,0,0,0,0,0,0,0,0,10
Training,fer0000005.png,1,1,1,1,1,1,1,1,1,1
Training,fer0000006.png,0,0,0,0,0,0,0,8,2,0
Training,fer0000007.png,4,4,2,0,0,0,0,0,0,0
Training,fer0000008.png,a,0,0,0,0,0,0,0,0,0
Other,fer0000009.png,10,0,0,0,0,0,0,0,0,0
Training,fer0000010.png,10
"""


def test_ferplus_majority_vote_and_skips(tmp_path):
    csv_file = write(tmp_path / "fer2013new.csv", FERPLUS)
    parsed = parse_ferplus(csv_file)
    rec = parsed.records.set_index("id")
    # line 2: votes neutral 4, sadness 1 (dropped: single vote), anger 3, disgust 2 → total 9,
    # neutral 4/9 is not above half → no majority; line 3: 10/10 happiness.
    assert list(rec.index) == ["ferplus/train/fer0000001"]
    assert rec.loc["ferplus/train/fer0000001", "fe_label"] == "happiness"
    assert rec.loc["ferplus/train/fer0000001", "uri"] == str(tmp_path / "FER2013Train/fer0000001.png")
    assert rec.loc["ferplus/train/fer0000001", "fe_probs"]["happiness"] == pytest.approx(1.0)
    # line 4 top is unknown; line 5 NF; line 6 no image; line 7 all single votes; line 8 contempt;
    # line 9: neutral 4 + happiness 4 + surprise 2 → no strict majority
    assert dict(parsed.report.skipped) == {"no_majority": 3, "unknown": 1, "not_face": 1, "no_image": 1,
                                           "contempt": 1}
    assert problem_lines(parsed) == [10, 11, 12]


def test_ferplus_probability_mode_gives_soft_labels(tmp_path):
    csv_file = write(tmp_path / "fer2013new.csv", FERPLUS)
    rec = parse_ferplus(csv_file, mode="probability").records.set_index("id")
    probs = rec.loc["ferplus/train/fer0000000", "fe_probs"]
    # kept votes after dropping the single sadness vote: neutral 4, anger 3, disgust 2 (of 9)
    assert rec.loc["ferplus/train/fer0000000", "fe_label"] == "neutral"
    assert probs["neutral"] == pytest.approx(4 / 9) and probs["anger"] == pytest.approx(3 / 9)
    assert probs["sadness"] == 0.0 and sum(probs.values()) == pytest.approx(1.0)
    assert set(probs) == {"neutral", "happiness", "surprise", "sadness", "anger", "disgust", "fear"}
    # line 9 ties neutral/happiness at 4: plurality picks the first vote column (neutral)
    assert rec.loc["ferplus/train/fer0000007", "fe_label"] == "neutral"


# --- DFEW / FERV39k / MAFW -------------------------------------------------------------------


def test_dfew_split_file_ids_padding_fold_and_skips(tmp_path):
    split = write(tmp_path / "label" / "single_trainset_3.csv",
                  "video_name,label\n1,5\n00002,1\n3,0\n4,8\n5\n6,7\n")
    parsed = parse_dfew(split, video_root=str(tmp_path / "clips"))
    rec = parsed.records.set_index("id")
    # DFEW ids: 1 happy, 2 sad, 3 neutral, 4 angry, 5 surprise, 6 disgust, 7 fear
    assert rec.loc["dfew/00001", "fe_label"] == "surprise"
    assert rec.loc["dfew/00002", "fe_label"] == "happiness"
    assert rec.loc["dfew/00006", "fe_label"] == "fear"
    assert rec.loc["dfew/00001", "uri"] == str(tmp_path / "clips/00001.mp4")
    assert rec.loc["dfew/00001", "video_id"] == "dfew:00001"
    assert rec.loc["dfew/00001", "split"] == "train" and rec.loc["dfew/00001", "fold"] == 3
    assert rec.loc["dfew/00001", "media"] == "video"
    assert dict(parsed.report.skipped) == {"non_single_label": 1}
    assert problem_lines(parsed) == [5, 6]
    frames = parse_dfew(split, video_root=str(tmp_path / "frames"), video_ext="").records
    assert frames["uri"].iloc[0] == str(tmp_path / "frames/00001")


def test_ferv39k_names_and_unknown_labels(tmp_path):
    split = write(tmp_path / "4_setups" / "All_scenes" / "test_All.csv",
                  "Action/Crime/0010/0010_0001 Angry\nDaily/Home/0002/0002_0003 Happy\n"
                  "Daily/Home/0002/0002_0004 Bored\nDaily/Home/0002/0002_0005 4\n")
    parsed = parse_ferv39k(split, video_root="s3://bucket/ferv39k/2_ClipsforFaceCrop", video_ext="")
    rec = parsed.records.set_index("id")
    assert rec.loc["ferv39k/Action/Crime/0010/0010_0001", "fe_label"] == "anger"
    assert rec.loc["ferv39k/Daily/Home/0002/0002_0003", "fe_label"] == "happiness"
    assert rec.loc["ferv39k/Daily/Home/0002/0002_0005", "fe_label"] == "anger"  # id 4 = angry
    assert rec.loc["ferv39k/Action/Crime/0010/0010_0001", "uri"] == (
        "s3://bucket/ferv39k/2_ClipsforFaceCrop/Action/Crime/0010/0010_0001")
    assert rec["split"].unique().tolist() == ["test"]
    assert problem_lines(parsed) == [3]
    assert "unknown label 'Bored'" in str(parsed.report.problems[0])


def test_mafw_eleven_classes_and_label_space(tmp_path):
    split = write(tmp_path / "single" / "no_caption" / "set_2" / "train.txt",
                  "00025.mp4 8\n00026.mp4 4\n00027.mp4 helplessness\n00028.mp4 12\n")
    basic = parse_mafw(split)
    # MAFW ids: 1 anger ... 4 happiness ... 8 contempt, 10 helplessness
    assert basic.records.set_index("id").loc["mafw/00026", "fe_label"] == "happiness"
    # names work as well as ids; classes outside the basic seven are skipped and counted
    assert dict(basic.report.skipped) == {"contempt": 1, "helplessness": 1}
    assert problem_lines(basic) == [4]  # id 12 is outside 1..11
    wide = parse_mafw(split, label_space="dataset")
    assert wide.records.set_index("id").loc["mafw/00025", "fe_label"] == "contempt"
    assert wide.records.set_index("id").loc["mafw/00027", "fe_label"] == "helplessness"
    assert wide.records["fold"].unique().tolist() == [2]


# --- BP4D / DISFA ----------------------------------------------------------------------------


def test_bp4d_occurrence_codes_unknowns_and_problems(tmp_path):
    occ = tmp_path / "AUCoding" / "AU_OCC"
    write(occ / "F001_T1.csv",
          "0,1,2,4,6,7,10,12,14,15,17,23,24,27\n"
          "1000,0,0,0,1,1,0,1,0,0,0,0,0,9\n"  # AU06, AU07, AU12 active; AU27 is outside the protocol
          "1001,1,9,0,0,0,0,0,0,0,0,0,0,0\n"  # AU02 not coded on this frame
          "1002,9,9,9,9,9,9,9,9,9,9,9,9,9\n"  # nothing coded → skipped
          "1003,0,0,3,0,0,0,0,0,0,0,0,0,0\n"  # 3 is no occurrence code
          "1004,0,0,0\n")
    write(occ / "notes.csv", "frame,1\n1,0\n")
    parsed = parse_bp4d(str(occ), image_root="/data/bp4d/2DFaces")
    rec = parsed.records.set_index("id")
    first = rec.loc["bp4d/F001_T1/1000"]
    assert first["au_active"] == ["AU06", "AU07", "AU12"]
    assert len(first["au_labeled"]) == 12 and "AU27" not in first["au_labeled"]
    assert first["subject"] == "F001" and first["video_id"] == "bp4d:F001_T1"
    assert first["uri"] == "/data/bp4d/2DFaces/F001/T1/1000.jpg"
    second = rec.loc["bp4d/F001_T1/1001"]
    assert second["au_active"] == ["AU01"] and "AU02" not in second["au_labeled"]
    assert dict(parsed.report.skipped) == {"all_unknown": 1}
    problems = [str(p) for p in parsed.report.problems]
    assert any("notes.csv: file name is not SUBJECT_TASK.csv" in p for p in problems)
    assert any(p.startswith(f"{occ / 'F001_T1.csv'}:5: AU codes must be 0, 1 or 9") for p in problems)
    assert any(p.startswith(f"{occ / 'F001_T1.csv'}:6: expected 14 fields") for p in problems)


def test_disfa_merges_per_au_files_with_threshold(tmp_path):
    root = tmp_path / "ActionUnit_Labels"
    write(root / "SN001" / "SN001_au1.txt", "1,0\n2,3\n3,1\n")
    write(root / "SN001" / "SN001_au12.txt", "1,2\n2,1\nx,y\n4,7\n")
    write(root / "SN002" / "SN002_au25.txt", "1,5\n")
    write(root / "SN002" / "SN002_au5.txt", "1,5\n")  # AU05 is not in the DISFA protocol subset
    parsed = parse_disfa(str(root), frame_template="{subject}/{frame:05d}.png")
    rec = parsed.records.set_index("id")
    # intensity >= 2 is active
    assert rec.loc["disfa/SN001/1", "au_active"] == ["AU12"]
    assert rec.loc["disfa/SN001/2", "au_active"] == ["AU01"]
    assert rec.loc["disfa/SN001/1", "au_intensity"] == {"AU01": 0, "AU12": 2}
    # frame 3 only in the AU01 file: AU12 unknown there, not negative
    assert rec.loc["disfa/SN001/3", "au_labeled"] == ["AU01"]
    assert rec.loc["disfa/SN002/1", "au_active"] == ["AU25"]
    assert rec.loc["disfa/SN001/1", "uri"] == str(root / "SN001/00001.png")
    assert problem_lines(parsed) == [3, 4]
    lenient = parse_disfa(str(root), threshold=1).records.set_index("id")
    assert lenient.loc["disfa/SN001/3", "au_active"] == ["AU01"]


# --- shared behaviour ------------------------------------------------------------------------


def test_arrow_table_registry_and_config_source(tmp_path):
    rafdb = load_labeled("rafdb", write(tmp_path / "list.txt", "train_1.jpg 1\n"))
    ferplus = load_labeled(LabeledSource("ferplus", write(tmp_path / "fer2013new.csv", FERPLUS)))
    both = concat_parsed([rafdb, ferplus])
    table = both.to_arrow()
    assert table.schema == RECORD_SCHEMA and table.num_rows == 2
    assert both.report.dataset == "rafdb+ferplus" and both.report.n_records == 2
    probs = table.column("fe_probs").to_pylist()[1]
    assert dict(probs)["happiness"] == pytest.approx(1.0)
    assert pa.types.is_map(table.schema.field("fe_probs").type)
    with pytest.raises(ValueError, match="unknown dataset format"):
        load_labeled("celeba", "x")
    with pytest.raises(ConfigError, match="format: must be one of"):
        from_dict(LabeledSource, {"format": "celeba", "path": "x"})


def test_duplicate_samples_are_reported(tmp_path):
    parsed = parse_rafdb(write(tmp_path / "list.txt", "train_1.jpg 1\ntrain_1.jpg 2\n"))
    assert len(parsed) == 1
    expected = f"{tmp_path / 'list.txt'}:2: duplicate sample rafdb/train_1"
    assert [str(p) for p in parsed.report.problems] == [expected]
