"""Parsers for labeled FE / AU datasets in their usual release layouts → one record table.

Every parser reads label files (local paths or ``s3://`` URIs) and returns a
:class:`ParsedDataset`: a pandas frame with the columns of :data:`RECORD_SCHEMA` plus a
:class:`ParseReport`. Rows that cannot be parsed never stop a parse: each becomes a
:class:`LabelProblem` naming ``file:line`` and the reason. Rows the dataset itself marks
as unusable (AffectNet "No-Face", FERPlus "unknown" majority, ...) are *skipped* and
counted by reason. Only ``strict=True`` (any problem) or ``max_problem_fraction`` (too
many problems) turn problems into one :class:`LabelFileError` that lists them.

Label maps (dataset label → canonical name of :mod:`model.taxonomy`):

========== ========================================== ===========================================
dataset    file                                       label ids (dataset order, see DATASET_CLASSES)
========== ========================================== ===========================================
RAF-DB     ``EmoLabel/list_patition_label.txt``       1 surprise, 2 fear, 3 disgust, 4 happiness,
           ``train_00001.jpg 5``                      5 sadness, 6 anger, 7 neutral
AffectNet  ``training.csv`` / ``validation.csv``      0 neutral, 1 happiness, 2 sadness, 3 surprise,
                                                      4 fear, 5 disgust, 6 anger, 7 contempt;
                                                      8 None, 9 Uncertain, 10 No-Face → skipped
FERPlus    ``fer2013new.csv`` (10 votes per image)    vote columns neutral, happiness, surprise,
                                                      sadness, anger, disgust, fear, contempt,
                                                      unknown, NF
DFEW       ``single_trainset_1.csv``                  1 happiness, 2 sadness, 3 neutral, 4 anger,
           ``video_name,label``                       5 surprise, 6 disgust, 7 fear; 0 → skipped
FERV39k    ``train_All.csv`` ``path label``           same ids as DFEW, or names (``Happy``)
MAFW       ``set_1/train.txt`` ``clip label``         1 anger, 2 disgust, 3 fear, 4 happiness,
                                                      5 neutral, 6 sadness, 7 surprise, 8 contempt,
                                                      9 anxiety, 10 helplessness, 11 disappointment
BP4D       ``AU_OCC/F001_T1.csv`` per-frame AU        header = AU numbers; 0 absent, 1 present,
           columns                                    9 unknown (that AU is not labeled there)
DISFA      ``SN001/SN001_au12.txt`` ``frame,int``     intensity 0..5; active when ≥ 2 (default)
========== ========================================== ===========================================

With ``label_space="basic"`` (default) records whose class is outside the seven basic
expressions (contempt, MAFW's anxiety / helplessness / disappointment) are skipped and
counted under their class name; ``label_space="dataset"`` keeps them with that name.

AU records carry ``au_labeled`` next to ``au_active``: an AU that a dataset does not
annotate (or marks unknown for that frame) is *unknown*, not negative, and metrics and
instruction building must not read it as absent.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import os
import posixpath
import re
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, Literal

import pandas as pd
import pyarrow as pa

from model.taxonomy import AU_NAMES, AU_SUBSETS, DATASET_CLASSES, FE_BASIC, canonical_fe
from workflows.core import storage

LabelSpace = Literal["basic", "dataset"]

RECORD_SCHEMA = pa.schema([
    pa.field("id", pa.string(), nullable=False),   # "<dataset>/<key>", unique within a dataset
    pa.field("dataset", pa.string(), nullable=False),
    pa.field("split", pa.string()),                # the dataset's own split: train / val / test
    pa.field("fold", pa.int32()),                  # cross-validation fold (DFEW, MAFW set_N)
    pa.field("media", pa.string()),                # "image" or "video" (clip file or frame dir)
    pa.field("uri", pa.string()),                  # where the image / clip is expected to be
    pa.field("video_id", pa.string()),             # clip or recording the sample belongs to
    pa.field("subject", pa.string()),              # person id where the dataset gives one
    pa.field("frame_index", pa.int64()),           # frame number as numbered by the dataset
    pa.field("bbox", pa.list_(pa.float32())),      # x0, y0, x1, y1 source pixels
    pa.field("landmarks", pa.list_(pa.float32())),  # flattened x, y pairs (AffectNet: 68 points)
    pa.field("fe_label", pa.string()),             # canonical FE name (model.taxonomy)
    pa.field("fe_label_raw", pa.string()),         # the label token as written in the file
    pa.field("fe_probs", pa.map_(pa.string(), pa.float32())),  # soft label (FERPlus votes)
    pa.field("au_active", pa.list_(pa.string())),  # AU names judged present
    pa.field("au_labeled", pa.list_(pa.string())),  # AU names annotated for this record
    pa.field("au_intensity", pa.map_(pa.string(), pa.int8())),  # DISFA 0..5
    pa.field("valence", pa.float32()),
    pa.field("arousal", pa.float32()),
    pa.field("source_file", pa.string()),
    pa.field("source_line", pa.int64()),           # 1-based line in source_file
])
RECORD_COLUMNS: tuple[str, ...] = tuple(RECORD_SCHEMA.names)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
VIDEO_SUFFIXES = (".mp4", ".avi", ".mkv", ".mov", ".webm", ".m4v", ".mpg", ".mpeg")


# ---------------------------------------------------------------------------------------------
# problems and reports


@dataclasses.dataclass(frozen=True)
class LabelProblem:
    """One row that could not be parsed: where it is, why, and the offending text."""

    file: str
    line: int | None
    reason: str
    text: str = ""

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line is not None else self.file
        shown = self.text if len(self.text) <= 120 else self.text[:117] + "..."
        return f"{where}: {self.reason}" + (f" [{shown!r}]" if shown else "")


class LabelFileError(ValueError):
    """Label files with problems beyond what the caller tolerates; ``problems`` lists them."""

    def __init__(self, dataset: str, problems: Sequence[LabelProblem], why: str, limit: int = 20):
        self.dataset = dataset
        self.problems = list(problems)
        shown = "\n".join(f"  - {p}" for p in self.problems[:limit])
        more = f"\n  ... and {len(self.problems) - limit} more" if len(self.problems) > limit else ""
        super().__init__(f"{dataset}: {why}; {len(self.problems)} malformed row(s):\n{shown}{more}")


@dataclasses.dataclass
class ParseReport:
    """What a parse read, kept, skipped (by reason) and could not parse (with file:line)."""

    dataset: str
    files: list[str] = dataclasses.field(default_factory=list)
    n_rows_read: int = 0  # data rows seen (headers and blank lines excluded)
    n_records: int = 0
    skipped: Counter[str] = dataclasses.field(default_factory=Counter)
    problems: list[LabelProblem] = dataclasses.field(default_factory=list)

    @property
    def problem_fraction(self) -> float:
        return len(self.problems) / self.n_rows_read if self.n_rows_read else 0.0

    def check(self, strict: bool = False, max_problem_fraction: float | None = None) -> None:
        """Raise :class:`LabelFileError` when ``strict`` and any problem, or over the fraction."""
        if not self.problems:
            return
        if strict:
            raise LabelFileError(self.dataset, self.problems, "strict parsing")
        if max_problem_fraction is not None and self.problem_fraction > max_problem_fraction:
            raise LabelFileError(
                self.dataset, self.problems,
                f"{self.problem_fraction:.1%} of rows malformed, above max_problem_fraction "
                f"{max_problem_fraction:.1%}")

    def merge(self, other: ParseReport) -> ParseReport:
        """A report covering both parses (dataset names joined with ``+`` when they differ)."""
        name = self.dataset if other.dataset == self.dataset else f"{self.dataset}+{other.dataset}"
        return ParseReport(name, self.files + other.files, self.n_rows_read + other.n_rows_read,
                           self.n_records + other.n_records, self.skipped + other.skipped,
                           self.problems + other.problems)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able summary; problems as ``file:line: reason`` strings."""
        return {"dataset": self.dataset, "files": list(self.files), "n_rows_read": self.n_rows_read,
                "n_records": self.n_records, "skipped": dict(sorted(self.skipped.items())),
                "n_problems": len(self.problems), "problems": [str(p) for p in self.problems]}


@dataclasses.dataclass
class ParsedDataset:
    """Records (pandas, columns :data:`RECORD_COLUMNS`) and the report of the parse."""

    records: pd.DataFrame
    report: ParseReport

    def __len__(self) -> int:
        return len(self.records)

    def to_arrow(self) -> pa.Table:
        """The records as an Arrow table with :data:`RECORD_SCHEMA` (maps as Arrow maps)."""
        return records_to_arrow(self.records)


def records_to_arrow(records: pd.DataFrame) -> pa.Table:
    """Convert a record frame (dict-valued map columns) to an Arrow table of RECORD_SCHEMA."""
    rows = records.reindex(columns=list(RECORD_COLUMNS)).astype(object)
    rows = rows.where(pd.notna(rows), None) if len(rows) else rows
    data = {}
    for field in RECORD_SCHEMA:
        values = rows[field.name].tolist()
        if pa.types.is_map(field.type):
            values = [None if v is None else list(v.items()) for v in values]
        data[field.name] = pa.array(values, type=field.type)
    return pa.table(data, schema=RECORD_SCHEMA)


def concat_parsed(parts: Iterable[ParsedDataset]) -> ParsedDataset:
    """Concatenate several parses (e.g. train and test lists) into one dataset and report."""
    parts = list(parts)
    if not parts:
        return ParsedDataset(pd.DataFrame(columns=list(RECORD_COLUMNS)), ParseReport("empty"))
    report = parts[0].report
    for p in parts[1:]:
        report = report.merge(p.report)
    frames = [p.records for p in parts if len(p.records)]
    records = pd.concat(frames, ignore_index=True) if frames else parts[0].records
    return ParsedDataset(records, report)


class _Collector:
    """Accumulates records, skips and problems for one parse."""

    def __init__(self, dataset: str):
        self.dataset = dataset
        self.rows: list[dict[str, Any]] = []
        self.report = ParseReport(dataset)

    def file(self, uri: str) -> None:
        self.report.files.append(uri)

    def row_read(self) -> None:
        self.report.n_rows_read += 1

    def add(self, **fields: Any) -> None:
        unknown = set(fields) - set(RECORD_COLUMNS)
        if unknown:  # a programming error in a parser, not a data problem
            raise KeyError(f"not record columns: {sorted(unknown)}")
        row = dict.fromkeys(RECORD_COLUMNS)
        row["dataset"] = self.dataset
        row.update(fields)
        self.rows.append(row)

    def skip(self, reason: str) -> None:
        self.report.skipped[reason] += 1

    def problem(self, file: str, line: int | None, reason: str, text: str = "") -> None:
        self.report.problems.append(LabelProblem(file, line, reason, text.strip()))

    def finish(self, strict: bool, max_problem_fraction: float | None) -> ParsedDataset:
        seen: set[str] = set()
        unique = []
        for row in self.rows:
            if row["id"] in seen:
                self.problem(row["source_file"], row["source_line"], f"duplicate sample {row['id']}")
                continue
            seen.add(row["id"])
            unique.append(row)
        self.report.n_records = len(unique)
        self.report.check(strict, max_problem_fraction)
        records = pd.DataFrame(unique, columns=list(RECORD_COLUMNS))
        for name in ("fold", "frame_index", "source_line"):  # nullable ints, not floats with NaN
            records[name] = records[name].astype("Int64")
        return ParsedDataset(records, self.report)


# ---------------------------------------------------------------------------------------------
# helpers


def _lines(uri: str) -> list[str]:
    # utf-8-sig drops the BOM some Windows-exported label files start with.
    return storage.read_text(uri, encoding="utf-8-sig").splitlines()


def _parent(uri: str) -> str:
    """The folder holding ``uri`` (absolute for local paths)."""
    if storage.is_remote(uri):
        return posixpath.dirname(uri.rstrip("/"))
    return os.path.dirname(os.path.abspath(storage.strip_file_scheme(uri)))


def _default_root(label_file: str, marker_dir: str, sibling: str) -> str:
    """``<parent>/<sibling>`` when the label file sits in ``<parent>/<marker_dir>/``, else its dir."""
    folder = _parent(label_file)
    if posixpath.basename(folder.rstrip("/")) == marker_dir:
        return storage.join(_parent(folder), sibling)
    return folder


def _split_from_name(name: str) -> str | None:
    low = name.lower()
    for token, split in (("train", "train"), ("valid", "val"), ("val", "val"), ("test", "test")):
        if re.search(rf"(^|[^a-z]){token}", low):
            return split
    return None


def _fold_from_name(name: str) -> int | None:
    m = re.search(r"(?:set|fold)_?(\d+)", name.lower())
    return int(m.group(1)) if m else None


def _keep(label: str, label_space: LabelSpace) -> bool:
    return label_space == "dataset" or label in FE_BASIC


def _float_or_none(text: str) -> float | None:
    text = text.strip()
    if not text:
        return None
    return float(text)


def _csv_rows(uri: str) -> list[tuple[int, list[str]]]:
    """``(line_number, cells)`` for each physical record of a CSV file (1-based lines)."""
    text = storage.read_text(uri, encoding="utf-8-sig")
    reader = csv.reader(io.StringIO(text))
    out = []
    for cells in reader:
        out.append((reader.line_num, cells))
    return out


def _data_rows(col: _Collector, uri: str, rows: list[tuple[int, list[str]]], width: int
               ) -> Iterator[tuple[int, list[str], str]]:
    """``(line, cells, text)`` of each non-blank data row with ``width`` fields; a row of another
    width is reported with its file and line and skipped."""
    for n, cells in rows[1:]:
        if not any(c.strip() for c in cells):
            continue
        col.row_read()
        text = ",".join(cells)
        if len(cells) != width:
            col.problem(uri, n, f"expected {width} fields, got {len(cells)}", text)
            continue
        yield n, cells, text


def _check_options(problems: list[str]) -> None:
    if problems:
        raise ValueError("; ".join(problems))


# ---------------------------------------------------------------------------------------------
# RAF-DB


def parse_rafdb(label_file: str, *, image_root: str | None = None, aligned: bool = True,
                strict: bool = False, max_problem_fraction: float | None = None) -> ParsedDataset:
    """Parse RAF-DB basic ``list_patition_label.txt`` (``train_00001.jpg 5``, labels 1..7).

    ``image_root`` defaults to ``<root>/Image/aligned`` (or ``original``) when the list sits in
    ``<root>/EmoLabel/``, else the list's folder. With ``aligned`` the uri names the aligned
    crop ``train_00001_aligned.jpg``. The split comes from the ``train_`` / ``test_`` prefix.
    """
    col = _Collector("rafdb")
    col.file(label_file)
    variant = "aligned" if aligned else "original"
    root = image_root or _default_root(label_file, "EmoLabel", f"Image/{variant}")
    classes = DATASET_CLASSES["rafdb"]
    for n, line in enumerate(_lines(label_file), start=1):
        if not line.strip():
            continue
        col.row_read()
        parts = line.split()
        if len(parts) != 2:
            col.problem(label_file, n, f"expected 'NAME LABEL', got {len(parts)} field(s)", line)
            continue
        name, raw = parts
        if not raw.isdigit() or not 1 <= int(raw) <= len(classes):
            col.problem(label_file, n, f"label must be an integer 1..{len(classes)}", line)
            continue
        label = classes[int(raw) - 1]
        stem, ext = posixpath.splitext(name)
        file_name = f"{stem}_aligned{ext}" if aligned else name
        col.add(id=f"rafdb/{stem}", split=_split_from_name(stem), media="image",
                uri=storage.join(root, file_name), fe_label=label, fe_label_raw=raw,
                source_file=label_file, source_line=n)
    return col.finish(strict, max_problem_fraction)


# ---------------------------------------------------------------------------------------------
# AffectNet

AFFECTNET_COLUMNS = ("subDirectory_filePath", "face_x", "face_y", "face_width", "face_height",
                     "facial_landmarks", "expression", "valence", "arousal")
AFFECTNET_SKIP = {8: "none", 9: "uncertain", 10: "no_face"}


def parse_affectnet(csv_file: str, *, image_root: str | None = None, split: str | None = None,
                    label_space: LabelSpace = "basic", strict: bool = False,
                    max_problem_fraction: float | None = None) -> ParsedDataset:
    """Parse an AffectNet manual-annotation CSV (``training.csv`` / ``validation.csv``).

    Expression 0..7 maps through ``DATASET_CLASSES["affectnet8"]``; 8 None, 9 Uncertain and
    10 No-Face are skipped and counted (``none`` / ``uncertain`` / ``no_face``); 7 contempt is
    skipped under ``label_space="basic"``. The face box becomes ``bbox`` (x0, y0, x1, y1) and the
    ``;``-separated landmarks ``landmarks``. ``image_root`` defaults to the sibling
    ``Manually_Annotated_Images`` of a ``Manually_Annotated_file_lists`` folder, else the CSV's
    folder. ``split`` defaults to ``train`` / ``val`` from the file name.
    """
    col = _Collector("affectnet")
    col.file(csv_file)
    root = image_root or _default_root(csv_file, "Manually_Annotated_file_lists", "Manually_Annotated_Images")
    split = split or _split_from_name(posixpath.basename(csv_file))
    classes = DATASET_CLASSES["affectnet8"]
    rows = _csv_rows(csv_file)
    if not rows:
        return col.finish(strict, max_problem_fraction)
    header = [c.strip() for c in rows[0][1]]
    missing = [c for c in AFFECTNET_COLUMNS if c not in header]
    if missing:
        raise LabelFileError("affectnet", [LabelProblem(csv_file, rows[0][0], f"header lacks {missing}",
                                                        ",".join(header))], "not an AffectNet CSV")
    idx = {name: header.index(name) for name in AFFECTNET_COLUMNS}
    for n, cells, text in _data_rows(col, csv_file, rows, len(header)):
        get = {name: cells[i].strip() for name, i in idx.items()}
        try:
            expression = int(get["expression"])
        except ValueError:
            col.problem(csv_file, n, "expression is not an integer", text)
            continue
        if expression in AFFECTNET_SKIP:
            col.skip(AFFECTNET_SKIP[expression])
            continue
        if not 0 <= expression < len(classes):
            col.problem(csv_file, n, f"expression {expression} outside 0..10", text)
            continue
        label = classes[expression]
        if not _keep(label, label_space):
            col.skip(label)
            continue
        try:
            x, y, w, h = (float(get[k]) for k in ("face_x", "face_y", "face_width", "face_height"))
            valence, arousal = _float_or_none(get["valence"]), _float_or_none(get["arousal"])
            marks = [float(v) for v in get["facial_landmarks"].split(";") if v.strip()]
        except ValueError:
            col.problem(csv_file, n, "face box, landmarks, valence or arousal is not numeric", text)
            continue
        if len(marks) % 2:
            col.problem(csv_file, n, f"odd number of landmark coordinates ({len(marks)})", text)
            continue
        path = get["subDirectory_filePath"]
        if not path:
            col.problem(csv_file, n, "empty subDirectory_filePath", text)
            continue
        col.add(id=f"affectnet/{posixpath.splitext(path)[0]}", split=split, media="image",
                uri=storage.join(root, path), bbox=[x, y, x + w, y + h], landmarks=marks or None,
                fe_label=label, fe_label_raw=str(expression), valence=valence, arousal=arousal,
                source_file=csv_file, source_line=n)
    return col.finish(strict, max_problem_fraction)


# ---------------------------------------------------------------------------------------------
# FERPlus

FERPLUS_VOTE_COLUMNS = ("neutral", "happiness", "surprise", "sadness", "anger", "disgust", "fear",
                        "contempt", "unknown", "NF")
FERPLUS_USAGE = {"Training": ("train", "FER2013Train"), "PublicTest": ("val", "FER2013Valid"),
                 "PrivateTest": ("test", "FER2013Test")}


def parse_ferplus(csv_file: str, *, image_root: str | None = None,
                  mode: Literal["majority", "probability"] = "majority",
                  label_space: LabelSpace = "basic", strict: bool = False,
                  max_problem_fraction: float | None = None) -> ParsedDataset:
    """Parse FERPlus ``fer2013new.csv`` (``Usage,Image name,<10 vote counts>``).

    As in the FERPlus reference code, single votes are dropped as outliers first. ``fe_probs``
    is the remaining vote distribution over the kept classes. ``mode="majority"`` keeps an
    image only when one class holds more than half of the votes (else skipped as
    ``no_majority``); ``mode="probability"`` labels it with the plurality class. Images whose
    top class is ``unknown`` / ``NF`` (not a face) are skipped as such, rows without an image
    name as ``no_image``. Usage Training / PublicTest / PrivateTest → train / val / test, and
    the uri is ``<image_root>/FER2013Train|Valid|Test/<name>`` (``image_root`` defaults to the
    CSV's folder).
    """
    col = _Collector("ferplus")
    col.file(csv_file)
    root = image_root or _parent(csv_file)
    rows = _csv_rows(csv_file)
    if not rows:
        return col.finish(strict, max_problem_fraction)
    first = [c.strip() for c in rows[0][1]]
    # The released file has a header; tolerate a headerless copy.
    body = rows[1:] if first and first[0] == "Usage" else rows
    classes = DATASET_CLASSES["ferplus"]
    kept = [c for c in classes if _keep(c, label_space)]
    for n, cells in body:
        if not any(c.strip() for c in cells):
            continue
        col.row_read()
        text = ",".join(cells)
        if len(cells) != 2 + len(FERPLUS_VOTE_COLUMNS):
            expected = 2 + len(FERPLUS_VOTE_COLUMNS)
            col.problem(csv_file, n, f"expected {expected} fields, got {len(cells)}", text)
            continue
        usage, name = cells[0].strip(), cells[1].strip()
        if usage not in FERPLUS_USAGE:
            col.problem(csv_file, n, f"unknown Usage {usage!r}", text)
            continue
        try:
            votes = [int(v) for v in cells[2:]]
        except ValueError:
            col.problem(csv_file, n, "vote counts must be integers", text)
            continue
        if any(v < 0 for v in votes) or sum(votes) == 0:
            col.problem(csv_file, n, "vote counts must be non-negative with a positive sum", text)
            continue
        if not name:
            col.skip("no_image")
            continue
        counts = dict(zip(FERPLUS_VOTE_COLUMNS, (v if v > 1 else 0 for v in votes), strict=True))
        total = sum(counts.values())
        if total == 0:
            col.skip("no_majority")
            continue
        top = max(counts, key=lambda k: counts[k])  # first in column order on ties
        if top in ("unknown", "NF"):
            col.skip("unknown" if top == "unknown" else "not_face")
            continue
        if mode == "majority" and counts[top] * 2 <= total:
            col.skip("no_majority")
            continue
        if not _keep(top, label_space):
            col.skip(top)
            continue
        kept_total = sum(counts[c] for c in kept)
        probs = {c: counts[c] / kept_total for c in kept}
        split, folder = FERPLUS_USAGE[usage]
        col.add(id=f"ferplus/{split}/{posixpath.splitext(name)[0]}", split=split, media="image",
                uri=storage.join(root, folder, name), fe_label=top, fe_label_raw=";".join(map(str, votes)),
                fe_probs=probs, source_file=csv_file, source_line=n)
    return col.finish(strict, max_problem_fraction)


# ---------------------------------------------------------------------------------------------
# DFEW / FERV39k / MAFW split files

VIDEO_SPLIT_DEFAULTS: dict[str, dict[str, Any]] = {
    # DFEW: label 0 marks clips without a single agreed label; names are 5-digit clip ids.
    "dfew": {"skip_ids": {0: "non_single_label"}, "name_width": 5},
    "ferv39k": {"skip_ids": {}, "name_width": None},
    "mafw": {"skip_ids": {}, "name_width": 5},
}


def parse_video_split(split_file: str, dataset: Literal["dfew", "ferv39k", "mafw"], *,
                      video_root: str | None = None, video_ext: str = ".mp4", split: str | None = None,
                      label_base: int = 1, name_width: int | None = -1,
                      label_space: LabelSpace = "basic", strict: bool = False,
                      max_problem_fraction: float | None = None) -> ParsedDataset:
    """Parse a dynamic-FER split file: one ``clip,label`` or ``clip label`` per line.

    A header line (``video_name,label``) is recognised and skipped. The label is a class id
    (``label_base``-based, 1 by default) into ``DATASET_CLASSES[dataset]`` or a class name
    (``Happy``, ``angry`` … through :func:`model.taxonomy.canonical_fe`). Numeric clip names
    are zero-padded to ``name_width`` (-1: the dataset default, 5 for DFEW / MAFW; None: as
    written). The uri is ``<video_root>/<clip><video_ext>`` unless the name already has a video
    or image suffix; ``video_ext=""`` names a folder of frames. Split and fold come from the
    path (``single_trainset_3.csv`` → train, fold 3) unless ``split`` is given.
    """
    if dataset not in VIDEO_SPLIT_DEFAULTS:
        raise ValueError(f"dataset must be one of {sorted(VIDEO_SPLIT_DEFAULTS)}, got {dataset!r}")
    defaults = VIDEO_SPLIT_DEFAULTS[dataset]
    width = defaults["name_width"] if name_width == -1 else name_width
    skip_ids: Mapping[int, str] = defaults["skip_ids"]
    classes = DATASET_CLASSES[dataset]
    col = _Collector(dataset)
    col.file(split_file)
    root = video_root or _parent(split_file)
    # The file name, then its folder: DFEW "train(single-labeled)/set_1.csv", MAFW "set_2/train.txt".
    name, folder = posixpath.basename(split_file), posixpath.basename(_parent(split_file))
    split = split or _split_from_name(name) or _split_from_name(folder)
    fold = _fold_from_name(name) or _fold_from_name(folder)
    for n, line in enumerate(_lines(split_file), start=1):
        if not line.strip():
            continue
        parts = [p.strip() for p in (line.split(",") if "," in line else line.split())]
        if n == 1 and len(parts) >= 2 and parts[-1].lower() in ("label", "labels", "emotion", "class"):
            continue
        col.row_read()
        if len(parts) != 2 or not parts[0]:
            col.problem(split_file, n, f"expected 'CLIP,LABEL', got {len(parts)} field(s)", line)
            continue
        name, raw = parts
        if re.fullmatch(r"-?\d+", raw):
            ident = int(raw)
            if ident in skip_ids:
                col.skip(skip_ids[ident])
                continue
            pos = ident - label_base
            if not 0 <= pos < len(classes):
                last = label_base + len(classes) - 1
                col.problem(split_file, n, f"label id {ident} outside {label_base}..{last}", line)
                continue
            label = classes[pos]
        else:
            try:
                label = canonical_fe(raw)
            except KeyError:
                col.problem(split_file, n, f"unknown label {raw!r}", line)
                continue
            if label not in classes:
                col.problem(split_file, n, f"label {raw!r} is not a {dataset} class", line)
                continue
        if not _keep(label, label_space):
            col.skip(label)
            continue
        if width and name.isdigit():
            name = name.zfill(width)
        stem, ext = posixpath.splitext(name)
        has_suffix = ext.lower() in VIDEO_SUFFIXES + IMAGE_SUFFIXES
        clip = stem if has_suffix else name
        uri = storage.join(root, name if has_suffix else f"{name}{video_ext}")
        col.add(id=f"{dataset}/{clip}", split=split, fold=fold, media="video", uri=uri,
                video_id=f"{dataset}:{clip}", fe_label=label, fe_label_raw=raw,
                source_file=split_file, source_line=n)
    return col.finish(strict, max_problem_fraction)


def parse_dfew(split_file: str, **kwargs: Any) -> ParsedDataset:
    """DFEW ``single_{train,test}set_N.csv`` (``video_name,label``, 1..7, 0 skipped)."""
    return parse_video_split(split_file, "dfew", **kwargs)


def parse_ferv39k(split_file: str, **kwargs: Any) -> ParsedDataset:
    """FERV39k ``train_All.csv`` / ``test_All.csv`` (``scene/.../clip Label``, names or ids)."""
    return parse_video_split(split_file, "ferv39k", **kwargs)


def parse_mafw(split_file: str, **kwargs: Any) -> ParsedDataset:
    """MAFW single-label ``set_N/{train,test}.txt`` (11 classes; non-basic ones skipped by default)."""
    return parse_video_split(split_file, "mafw", **kwargs)


# ---------------------------------------------------------------------------------------------
# BP4D / DISFA (AU occurrence)


def _au_name(token: str) -> str | None:
    """``"12"``, ``"AU12"``, ``"au_12"``, ``"AU12_c"`` → ``"AU12"``; None when not an AU header."""
    m = re.fullmatch(r"(?:au[_ ]?)?(\d{1,2})(?:_c)?", token.strip().lower())
    return f"AU{int(m.group(1)):02d}" if m else None


def _au_files(location: str, suffix: str) -> list[str]:
    files = storage.list_files(location, suffixes=(suffix,))
    if not files:
        raise FileNotFoundError(f"no {suffix} label files under {location}")
    return files


def parse_bp4d(location: str, *, image_root: str | None = None,
               frame_template: str = "{subject}/{task}/{frame:04d}.jpg",
               aus: Sequence[str] | None = AU_SUBSETS["bp4d"], strict: bool = False,
               max_problem_fraction: float | None = None) -> ParsedDataset:
    """Parse BP4D AU occurrence CSVs (``AU_OCC/F001_T1.csv``): a file or a folder of them.

    The header row names the frame column first, then AU numbers (``1``, ``AU01``, ...); each
    row is ``frame, 0/1/9 ...`` with 9 = not coded. ``au_labeled`` holds the AUs of ``aus``
    (default: the 12 of the standard protocol; None: every header AU known to mien) coded 0/1
    on that frame; frames with none coded are skipped as ``all_unknown``. Subject and task come
    from the file name; the uri is ``image_root`` + ``frame_template`` (fields subject, task,
    frame), ``image_root`` defaulting to the label folder.
    """
    col = _Collector("bp4d")
    wanted = set(AU_NAMES if aus is None else aus)
    for uri in _au_files(location, ".csv"):
        col.file(uri)
        base = posixpath.splitext(posixpath.basename(uri))[0]
        m = re.fullmatch(r"([FM]\d{3})_(T\d+)", base)
        if not m:
            col.problem(uri, None, "file name is not SUBJECT_TASK.csv (e.g. F001_T1.csv)")
            continue
        subject, task = m.groups()
        root = image_root or _parent(uri)
        rows = _csv_rows(uri)
        if not rows:
            continue
        header_line, header = rows[0]
        columns = {i: _au_name(h) for i, h in enumerate(header) if i > 0}
        unknown_headers = [header[i] for i, name in columns.items() if name is None]
        if unknown_headers:
            col.problem(uri, header_line, f"header cells are not AU numbers: {unknown_headers}",
                        ",".join(header))
        use = {i: name for i, name in columns.items() if name in wanted and name in AU_NAMES}
        for n, cells, text in _data_rows(col, uri, rows, len(header)):
            try:
                frame = int(float(cells[0]))
                values = {name: int(float(cells[i])) for i, name in use.items()}
            except ValueError:
                col.problem(uri, n, "frame and AU codes must be numbers", text)
                continue
            bad = {k: v for k, v in values.items() if v not in (0, 1, 9)}
            if bad:
                col.problem(uri, n, f"AU codes must be 0, 1 or 9, got {bad}", text)
                continue
            labeled = [a for a in AU_NAMES if values.get(a) in (0, 1)]
            if not labeled:
                col.skip("all_unknown")
                continue
            rel = frame_template.format(subject=subject, task=task, frame=frame)
            col.add(id=f"bp4d/{subject}_{task}/{frame}", media="image", uri=storage.join(root, rel),
                    video_id=f"bp4d:{subject}_{task}", subject=subject, frame_index=frame,
                    au_active=[a for a in labeled if values[a] == 1], au_labeled=labeled,
                    source_file=uri, source_line=n)
    return col.finish(strict, max_problem_fraction)


def parse_disfa(location: str, *, image_root: str | None = None,
                frame_template: str = "{subject}/{frame}.jpg", threshold: int = 2,
                aus: Sequence[str] | None = AU_SUBSETS["disfa"], strict: bool = False,
                max_problem_fraction: float | None = None) -> ParsedDataset:
    """Parse DISFA ``ActionUnit_Labels``: per-subject, per-AU ``SN001_au12.txt`` of ``frame,intensity``.

    Intensity 0..5; an AU is active when intensity ≥ ``threshold`` (2, the usual protocol).
    One record per (subject, frame) merging the AU files; an AU whose file lacks that frame
    is not in ``au_labeled``. ``aus`` selects AUs (default: the 8 of the standard protocol;
    None: all AU files found). The uri is ``image_root`` + ``frame_template`` (fields subject,
    frame), ``image_root`` defaulting to ``location``.
    """
    _check_options([] if 0 <= threshold <= 5 else [f"threshold must be 0..5, got {threshold}"])
    col = _Collector("disfa")
    wanted = set(AU_NAMES if aus is None else aus)
    root = image_root or (location if storage.isdir(location) else _parent(location))
    # subject -> frame -> (AU -> intensity, first file, first line)
    frames: dict[str, dict[int, dict[str, int]]] = {}
    where: dict[tuple[str, int], tuple[str, int]] = {}
    for uri in _au_files(location, ".txt"):
        base = posixpath.splitext(posixpath.basename(uri))[0]
        m = re.fullmatch(r"(SN\d{3})_au(\d{1,2})", base, flags=re.IGNORECASE)
        if not m:
            col.problem(uri, None, "file name is not SNxxx_auN.txt (e.g. SN001_au12.txt)")
            continue
        subject, au = m.group(1).upper(), f"AU{int(m.group(2)):02d}"
        if au not in wanted or au not in AU_NAMES:
            continue
        col.file(uri)
        per_subject = frames.setdefault(subject, {})
        for n, line in enumerate(_lines(uri), start=1):
            if not line.strip():
                continue
            col.row_read()
            parts = [p.strip() for p in line.split(",")]
            if len(parts) != 2 or not all(re.fullmatch(r"-?\d+", p) for p in parts):
                col.problem(uri, n, "expected 'FRAME,INTENSITY' integers", line)
                continue
            frame, intensity = int(parts[0]), int(parts[1])
            if not 0 <= intensity <= 5:
                col.problem(uri, n, f"intensity {intensity} outside 0..5", line)
                continue
            cell = per_subject.setdefault(frame, {})
            if au in cell:
                col.problem(uri, n, f"frame {frame} listed twice", line)
                continue
            cell[au] = intensity
            where.setdefault((subject, frame), (uri, n))
    for subject in sorted(frames):
        for frame in sorted(frames[subject]):
            intensity = frames[subject][frame]
            labeled = [a for a in AU_NAMES if a in intensity]
            src_file, src_line = where[(subject, frame)]
            col.add(id=f"disfa/{subject}/{frame}", media="image",
                    uri=storage.join(root, frame_template.format(subject=subject, frame=frame)),
                    video_id=f"disfa:{subject}", subject=subject, frame_index=frame,
                    au_active=[a for a in labeled if intensity[a] >= threshold], au_labeled=labeled,
                    au_intensity={a: intensity[a] for a in labeled},
                    source_file=src_file, source_line=src_line)
    return col.finish(strict, max_problem_fraction)


# ---------------------------------------------------------------------------------------------
# registry

PARSERS: dict[str, Callable[..., ParsedDataset]] = {
    "rafdb": parse_rafdb,
    "affectnet": parse_affectnet,
    "ferplus": parse_ferplus,
    "dfew": parse_dfew,
    "ferv39k": parse_ferv39k,
    "mafw": parse_mafw,
    "bp4d": parse_bp4d,
    "disfa": parse_disfa,
}


@dataclasses.dataclass
class LabeledSource:
    """One labeled dataset in a config: ``format`` (a key of :data:`PARSERS`), label ``path``
    (file, or folder for BP4D / DISFA) and parser ``options`` (keyword arguments)."""

    format: str
    path: str
    options: dict[str, Any] = dataclasses.field(default_factory=dict)

    def validate(self) -> list[str]:
        if self.format not in PARSERS:
            return [f"format: must be one of {', '.join(sorted(PARSERS))}, got {self.format!r}"]
        return []


def load_labeled(source: LabeledSource | str, path: str | None = None, **options: Any) -> ParsedDataset:
    """Parse a labeled dataset by format name: ``load_labeled("rafdb", path, aligned=False)``
    or ``load_labeled(LabeledSource(...))``."""
    if isinstance(source, LabeledSource):
        fmt, path, options = source.format, source.path, {**source.options, **options}
    else:
        fmt = source
    if fmt not in PARSERS:
        raise ValueError(f"unknown dataset format {fmt!r}; known: {', '.join(sorted(PARSERS))}")
    if not path:
        raise ValueError(f"{fmt}: a label file path is required")
    return PARSERS[fmt](path, **options)
