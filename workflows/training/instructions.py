"""Instruction rows for fine-tuning, from mien pseudo-labels or labeled datasets, and their split.

One row is one face × one task. ``conversations`` holds FERID / LLaVA style turns
(``{"from": "human" | "gpt", "value": ...}``, the first human turn starting with
``<image>``); the attribute prompt ("The person appears to be a 30-year-old woman.") is not
baked in: ``age`` / ``gender`` travel as columns so the model's prompt builder adds it the
same way at training and at annotation time. Tasks:

- ``fe_category``     FERID category question → one class name (``happiness``);
- ``au_detection``    which of the annotated AUs are active → ``AU06 Cheek Raiser, ...`` / ``none``;
- ``fe_au_reasoning`` FEALLM-style FE↔AU description ("The cheeks are raised and the lip corners
  are pulled up. The person shows happiness, because AU06 Cheek Raiser and AU12 Lip Corner
  Puller are active."), only where FE and AUs are both known and agree;
- ``au_yes_no``       one yes/no turn per annotated AU (mirrors scoring mode); opt-in.

Question and answer wording comes from :mod:`model.prompts` (the texts the model is scored and
generates with, and the corpus of its built-in word tokenizer), so training and annotation
read the same sentences.

Rows carry ``group_id``, the unit that must never straddle splits: the video (or the track,
if asked) for pseudo-labels, the clip for video datasets, the subject for BP4D / DISFA, the
image otherwise. :func:`assign_splits` hashes it, so a group's split is fixed for good
(a fixed holdout across retraining rounds) and independent of row order.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Literal

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from model import prompts
from model.taxonomy import AU_NAMES, DATASET_CLASSES, FE_BASIC, FE_PROTOTYPE_AUS, au_label
from workflows.core import storage
from workflows.corpus.reader import AnnotationOutput
from workflows.training.datasets import IMAGE_SUFFIXES, ParsedDataset

IMAGE_TOKEN = "<image>"
# FERID's option order (RAF-DB's) for the seven basic classes; further classes follow.
FERID_OPTIONS: tuple[str, ...] = tuple(c for c in prompts.FERID_OPTION_ORDER if c in FE_BASIC)
# Multi-label AU question. Worded with words of model.prompts' corpus so the built-in word
# tokenizer has no unknown tokens; model/prompts.py would be its natural home.
AU_DETECTION_QUESTION = ("What action units are active on this face? "
                         "Choose from the following options: {{{options}}}.")
NO_AU_ANSWER = "none"

Task = Literal["fe_category", "au_detection", "fe_au_reasoning", "au_yes_no"]
TASKS: tuple[str, ...] = ("fe_category", "au_detection", "fe_au_reasoning", "au_yes_no")
DEFAULT_TASKS: tuple[str, ...] = ("fe_category", "au_detection", "fe_au_reasoning")
DEFAULT_SPLITS: dict[str, float] = {"train": 0.8, "val": 0.1, "holdout": 0.1}
SPLIT_SALT = "mien-split-v1"
# Face-crop JPEG column of faces/*.parquet (workflows.corpus.schema names it crop_jpeg).
CROP_COLUMNS: tuple[str, ...] = ("crop_jpeg", "crop")

_TURN = pa.struct([pa.field("from", pa.string()), pa.field("value", pa.string())])
INSTRUCTION_SCHEMA = pa.schema([
    pa.field("id", pa.string(), nullable=False),  # "<source>/<sample key>/<task>"
    pa.field("source", pa.string(), nullable=False),  # dataset name, or "pseudo" for annotate output
    pa.field("task", pa.string(), nullable=False),
    pa.field("group_id", pa.string(), nullable=False),  # leakage unit for splitting
    pa.field("split", pa.string()),  # set by assign_splits: train / val / holdout
    pa.field("dataset_split", pa.string()),  # the labeled dataset's own split, if any
    pa.field("media", pa.string()),  # image | frame (image_uri is a video; locate by frame/bbox) | video
    pa.field("image", pa.binary()),  # JPEG bytes of the face crop, when embedded
    pa.field("image_uri", pa.string()),
    pa.field("video_id", pa.string()),
    pa.field("track_id", pa.string()),
    pa.field("frame_index", pa.int64()),
    pa.field("timestamp_s", pa.float64()),
    pa.field("bbox", pa.list_(pa.float32())),
    pa.field("fe_label", pa.string()),
    pa.field("fe_confidence", pa.float32()),
    pa.field("fe_probs", pa.map_(pa.string(), pa.float32())),
    pa.field("au_active", pa.list_(pa.string())),
    pa.field("au_labeled", pa.list_(pa.string())),
    pa.field("au_probs", pa.map_(pa.string(), pa.float32())),
    pa.field("au_evidence", pa.map_(pa.string(), pa.float32())),  # face-prior AU evidence
    pa.field("fe_prior", pa.map_(pa.string(), pa.float32())),  # face-prior expression probabilities
    pa.field("landmarks_5", pa.list_(pa.float32())),  # eyes, nose, mouth corners (source px)
    pa.field("pose", pa.list_(pa.float32())),  # yaw, pitch, roll in degrees
    pa.field("blendshapes", pa.list_(pa.float32())),  # (52,) face-prior blendshapes (corpus schema's order)
    pa.field("age", pa.float32()),
    pa.field("gender", pa.string()),
    pa.field("model_id", pa.string()),
    pa.field("run_id", pa.string()),
    pa.field("conversations", pa.list_(_TURN), nullable=False),
])
INSTRUCTION_COLUMNS: tuple[str, ...] = tuple(INSTRUCTION_SCHEMA.names)
# Columns added after instruction Parquet was first written: files without them read back with nulls.
ADDED_COLUMNS: tuple[str, ...] = ("blendshapes",)


# ---------------------------------------------------------------------------------------------
# conversation text


def _human(text: str) -> dict[str, str]:
    return {"from": "human", "value": text}


def _gpt(text: str) -> dict[str, str]:
    return {"from": "gpt", "value": text}


def _question(segment: str) -> str:
    """A model.prompts question segment ("\\n... ASSISTANT:") as plain turn text."""
    return segment.strip().removesuffix(prompts.ASSISTANT).strip()


def fe_options_for(classes: Iterable[str] = ()) -> tuple[str, ...]:
    """FERID's seven options, then any further classes of ``classes`` (e.g. contempt) in order."""
    return FERID_OPTIONS + tuple(c for c in dict.fromkeys(classes) if c not in FERID_OPTIONS)


def fe_category_turns(fe_label: str, options: Sequence[str] = FERID_OPTIONS) -> list[dict[str, str]]:
    """FERID category instruction: the option question (``prompts.fe_question``) → the class name."""
    if fe_label not in options:
        raise ValueError(f"label {fe_label!r} is not among the options {list(options)}")
    return [_human(f"{IMAGE_TOKEN}\n{_question(prompts.fe_question(options))}"), _gpt(fe_label)]


def au_detection_answer(au_active: Iterable[str], au_labeled: Sequence[str]) -> str:
    """``"AU06 Cheek Raiser, AU12 Lip Corner Puller"`` (labeled order) or ``"none"``."""
    active = set(au_active)
    named = [au_label(a) for a in au_labeled if a in active]
    return ", ".join(named) if named else NO_AU_ANSWER


def au_detection_turns(au_active: Iterable[str], au_labeled: Sequence[str]) -> list[dict[str, str]]:
    """Multi-label AU question over the AUs annotated for this face."""
    question = AU_DETECTION_QUESTION.format(options=", ".join(au_label(a) for a in au_labeled))
    return [_human(f"{IMAGE_TOKEN}\n{question}"), _gpt(au_detection_answer(au_active, au_labeled))]


def au_yes_no_turns(au_active: Iterable[str], au_labeled: Sequence[str]) -> list[dict[str, str]]:
    """One ``prompts.au_question`` yes/no turn per annotated AU (what scoring mode asks)."""
    active = set(au_active)
    turns: list[dict[str, str]] = []
    for i, au in enumerate(au_labeled):
        question = _question(prompts.au_question(au))
        turns.append(_human(f"{IMAGE_TOKEN}\n{question}" if i == 0 else question))
        turns.append(_gpt(prompts.YES if au in active else prompts.NO))
    return turns


def fe_au_reasoning_answer(fe_label: str, au_active: Iterable[str]) -> str | None:
    """FEALLM-style answer (``prompts.reasoning_answer``) naming the active AUs that explain the label.

    The reasons are the active prototype AUs of ``fe_label`` (``FE_PROTOTYPE_AUS``):
    ``"... The person shows happiness, because AU06 Cheek Raiser and AU12 Lip Corner Puller
    are active."``. A face with no active AU gets the plain statement. None when AUs are
    active but none of them fits the label (e.g. "happiness" with only AU04): the labels
    disagree, and a reason would be invented.
    """
    active = [a for a in AU_NAMES if a in set(au_active)]
    support = [a for a in active if a in FE_PROTOTYPE_AUS.get(fe_label, ())]
    if active and not support:
        return None
    return prompts.reasoning_answer(fe_label, support)


def fe_au_reasoning_turns(fe_label: str, au_active: Iterable[str]) -> list[dict[str, str]] | None:
    """FE↔AU reasoning instruction (``prompts.describe_question``); None when FE and AUs disagree."""
    answer = fe_au_reasoning_answer(fe_label, au_active)
    if answer is None:
        return None
    return [_human(f"{IMAGE_TOKEN}\n{_question(prompts.describe_question())}"), _gpt(answer)]


def build_conversations(task: str, *, fe_label: str | None, au_active: Sequence[str] | None,
                        au_labeled: Sequence[str] | None,
                        fe_options: Sequence[str] = FERID_OPTIONS) -> list[dict[str, str]] | None:
    """Turns for ``task``, or None when the face lacks the labels that task needs."""
    has_fe = bool(fe_label) and fe_label in fe_options
    has_au = au_active is not None and bool(au_labeled)
    if task == "fe_category":
        return fe_category_turns(fe_label, fe_options) if has_fe else None  # type: ignore[arg-type]
    if task == "au_detection":
        return au_detection_turns(au_active, au_labeled) if has_au else None  # type: ignore[arg-type]
    if task == "au_yes_no":
        return au_yes_no_turns(au_active, au_labeled) if has_au else None  # type: ignore[arg-type]
    if task == "fe_au_reasoning":
        if not (has_fe and has_au):
            return None
        return fe_au_reasoning_turns(fe_label, au_active)  # type: ignore[arg-type]
    raise ValueError(f"unknown task {task!r}; known: {', '.join(TASKS)}")


def _check_tasks(tasks: Sequence[str]) -> None:
    unknown = [t for t in tasks if t not in TASKS]
    if unknown or not tasks:
        raise ValueError(f"tasks must be a non-empty subset of {list(TASKS)}, got {list(tasks)}")


def task_and_split_problems(tasks: Sequence[str], splits: Mapping[str, float]) -> list[str]:
    """Config problems (``tasks:``, ``splits:``) of a data section that builds and splits instructions."""
    problems = []
    unknown = [t for t in tasks if t not in TASKS]
    if unknown or not tasks:
        problems.append(f"tasks: must be a non-empty subset of {list(TASKS)}, got {tasks}")
    fractions = list(splits.values())
    if not fractions or any(v < 0 for v in fractions) or abs(sum(fractions) - 1) > 1e-6:
        problems.append(f"splits: fractions must be >= 0 and sum to 1, got {splits}")
    return problems


# ---------------------------------------------------------------------------------------------
# pseudo-labels from annotate output


@dataclasses.dataclass
class PseudoLabelFilter:
    """Which annotated faces become training rows (a config section of ``mien retrain``).

    Applied in order: detection score, FE confidence, valid FE label, crop present, track
    agreement, dedupe by track (best ``max_per_track`` faces by confidence), class cap.
    """

    min_det_score: float = 0.5
    min_fe_confidence: float = 0.6
    # AUs count as labeled only when their probability is at least this far from 0.5.
    min_au_margin: float = 0.0
    # Share of a track's faces that must carry the track's majority label (0 = no check);
    # when > 0, only faces with the majority label are kept.
    min_track_agreement: float = 0.0
    max_per_track: int = 1
    max_per_class: int | None = None
    require_crop: bool = False
    # "video": a whole video is one split unit (no person leaks through broken tracks).
    group_by: Literal["video", "track"] = "video"

    @classmethod
    def all_faces(cls) -> PseudoLabelFilter:
        """Every labeled face, not a confident subset: what evaluating against an annotate output scores."""
        return cls(min_det_score=0.0, min_fe_confidence=0.0, max_per_track=1_000_000)

    def validate(self) -> list[str]:
        problems = []
        for name in ("min_det_score", "min_fe_confidence", "min_track_agreement"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                problems.append(f"{name}: must be within 0..1, got {getattr(self, name)}")
        if not 0.0 <= self.min_au_margin <= 0.5:
            problems.append(f"min_au_margin: must be within 0..0.5, got {self.min_au_margin}")
        if self.max_per_track < 1:
            problems.append(f"max_per_track: must be >= 1, got {self.max_per_track}")
        if self.max_per_class is not None and self.max_per_class < 1:
            problems.append(f"max_per_class: must be >= 1 or null, got {self.max_per_class}")
        if self.group_by not in ("video", "track"):
            problems.append(f"group_by: must be 'video' or 'track', got {self.group_by!r}")
        return problems


@dataclasses.dataclass
class BuiltInstructions:
    """An instruction table plus a JSON-able account of what was kept and dropped."""

    table: pa.Table
    report: dict[str, Any]

    def __len__(self) -> int:
        return self.table.num_rows


def _as_dict(value: Any) -> dict[str, float] | None:
    """Arrow maps arrive in pandas as lists of (key, value) tuples; normalise to dicts."""
    if value is None:
        return None
    if isinstance(value, Mapping):
        return {str(k): float(v) for k, v in value.items() if v is not None}
    try:
        return {str(k): float(v) for k, v in value if v is not None}
    except (TypeError, ValueError):
        return None


def _as_list(value: Any) -> list[Any] | None:
    if value is None:
        return None
    if isinstance(value, float) and pd.isna(value):
        return None
    return list(value)


def _track_str(value: Any) -> str | None:
    """Track ids as strings; integer ids that pandas widened to float (nulls present) lose the ``.0``."""
    if _is_missing(value):
        return None
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _group_key(row: Mapping[str, Any], group_by: str) -> str:
    """Split unit of a face; built from the face's own fields only, so it never changes between runs."""
    if group_by == "video":
        return str(row["video_id"])
    track = row.get("track_id")
    if track is not None:
        return f"{row['video_id']}/{track}"
    return f"{row['video_id']}/frame{row.get('frame_index')}"  # an untracked face: its frame


def _has_bytes(value: Any) -> bool:
    return isinstance(value, bytes | bytearray | memoryview) and len(value) > 0


def _majority(labels: pd.Series) -> str:
    """Most frequent label; ties broken alphabetically so the result never depends on row order."""
    counts = labels.value_counts()
    return min(counts[counts == counts.max()].index)


def select_pseudo_labels(faces: pd.DataFrame, flt: PseudoLabelFilter | None = None,
                         fe_classes: Sequence[str] = FE_BASIC) -> tuple[pd.DataFrame, dict[str, int]]:
    """Apply ``flt`` to annotated faces; returns the kept faces and how many each step dropped.

    Dedupe keeps, per (video, track), the ``max_per_track`` most confident faces (earliest frame
    on ties), so consecutive near-identical frames do not flood training. Untracked faces
    (``track_id`` null) are deduped per frame position, i.e. kept.
    """
    flt = flt or PseudoLabelFilter()
    problems = flt.validate()
    if problems:
        raise ValueError("invalid PseudoLabelFilter: " + "; ".join(problems))
    dropped: Counter[str] = Counter()
    df = faces.reset_index(drop=True).copy()
    df["_pos"] = range(len(df))

    def keep(mask: pd.Series, reason: str) -> None:
        nonlocal df
        dropped[reason] += int((~mask).sum())
        df = df[mask]

    if "det_score" in df:
        keep(df["det_score"].fillna(0.0) >= flt.min_det_score, "det_score")
    keep(df["fe_confidence"].fillna(0.0) >= flt.min_fe_confidence, "fe_confidence")
    keep(df["fe_label"].isin(list(fe_classes)), "fe_label")
    if flt.require_crop:
        crop_col = next((c for c in CROP_COLUMNS if c in df), None)
        has_crop = df[crop_col].map(_has_bytes) if crop_col else df["_pos"] < 0
        keep(has_crop.astype(bool), "no_crop")
    track = df["track_id"].where(df["track_id"].notna(), "#" + df["_pos"].astype(str))
    df = df.assign(_track=df["video_id"].astype(str) + "/" + track.astype(str))
    if flt.min_track_agreement > 0 and len(df):
        majority = df.groupby("_track")["fe_label"].agg(_majority)
        share = df.groupby("_track")["fe_label"].agg(lambda s: s.value_counts().max() / len(s))
        agrees = (df["_track"].map(share) >= flt.min_track_agreement) & (
            df["fe_label"] == df["_track"].map(majority))
        keep(agrees, "track_agreement")
    sort_cols = ["_track", "fe_confidence", "frame_index", "_pos"]
    df = df.sort_values(sort_cols, ascending=[True, False, True, True], kind="stable")
    keep(df.groupby("_track").cumcount() < flt.max_per_track, "dedupe_track")
    if flt.max_per_class is not None:
        df = df.sort_values(["fe_confidence", "_pos"], ascending=[False, True], kind="stable")
        keep(df.groupby("fe_label").cumcount() < flt.max_per_class, "class_cap")
    df = df.sort_values("_pos").drop(columns=["_pos", "_track"])
    return df.reset_index(drop=True), dict(dropped)


def _labeled_aus(au_probs: Mapping[str, float] | None, au_active: Sequence[str] | None,
                 margin: float) -> tuple[list[str] | None, list[str] | None]:
    if au_probs:
        labeled = [a for a in AU_NAMES if a in au_probs and abs(au_probs[a] - 0.5) >= margin]
    elif au_active is not None:
        labeled = list(AU_NAMES)
    else:
        return None, None
    active = [a for a in labeled if a in set(au_active or ())]
    return active, labeled


def _media_of(uri: str | None) -> str:
    return "image" if uri and uri.lower().endswith(IMAGE_SUFFIXES) else "frame"


def instructions_from_annotations(output_uri: str, *, flt: PseudoLabelFilter | None = None,
                                  tasks: Sequence[str] = DEFAULT_TASKS,
                                  faces: pd.DataFrame | None = None) -> BuiltInstructions:
    """Instruction rows from a ``mien annotate`` output directory (the faces of its committed videos,
    :meth:`workflows.corpus.reader.AnnotationOutput.faces_of`).

    ``faces`` may be passed instead of reading ``output_uri`` (already-loaded or pre-filtered
    faces). The ``crop_jpeg`` (or ``crop``) JPEG bytes, if present, become ``image``; otherwise the row
    points at the source (``image_uri`` = video URI, located by ``frame_index`` /
    ``timestamp_s`` / ``bbox``; ``media`` = ``frame``, or ``image`` for still-image inputs).
    """
    _check_tasks(tasks)
    flt = flt or PseudoLabelFilter()
    if faces is None:
        faces = AnnotationOutput(output_uri).faces_of()
    report: dict[str, Any] = {"source": output_uri, "n_faces": len(faces)}
    if faces.empty:
        report.update(n_kept_faces=0, dropped={}, n_rows=0, tasks={})
        return BuiltInstructions(_to_table([]), report)
    required = ("video_id", "frame_index", "track_id", "fe_label", "fe_confidence")
    missing = [c for c in required if c not in faces]
    if missing:
        raise ValueError(f"{output_uri}: faces lack required columns {missing}; "
                         "is this a mien annotate output?")
    faces = faces.assign(track_id=pd.Series([_track_str(v) for v in faces["track_id"]], index=faces.index,
                                            dtype=object))
    kept, dropped = select_pseudo_labels(faces, flt)
    options = fe_options_for(FE_BASIC)
    rows: list[dict[str, Any]] = []
    per_task: Counter[str] = Counter()
    not_built: Counter[str] = Counter()
    for face in kept.to_dict("records"):
        face = {k: (None if _is_missing(v) else v) for k, v in face.items()}
        au_probs = _as_dict(face.get("au_probs"))
        au_active, au_labeled = _labeled_aus(au_probs, _as_list(face.get("au_active")), flt.min_au_margin)
        crop = next((face[c] for c in CROP_COLUMNS if _has_bytes(face.get(c))), None)
        video_uri = face.get("video_uri")
        track = face.get("track_id")
        key = f"{face['video_id']}/{face['frame_index']}/{track if track is not None else 'untracked'}"
        base = {
            "source": "pseudo", "group_id": _group_key(face, flt.group_by), "dataset_split": None,
            "media": "image" if crop else _media_of(video_uri),
            "image": bytes(crop) if crop else None, "image_uri": video_uri,
            "video_id": str(face["video_id"]), "track_id": track,
            "frame_index": face.get("frame_index"), "timestamp_s": face.get("timestamp_s"),
            "bbox": _as_list(face.get("bbox")), "fe_label": face["fe_label"],
            "fe_confidence": face.get("fe_confidence"), "fe_probs": _as_dict(face.get("fe_probs")),
            "au_active": au_active, "au_labeled": au_labeled, "au_probs": au_probs,
            "au_evidence": _as_dict(face.get("au_evidence")), "fe_prior": _as_dict(face.get("fe_prior")),
            "landmarks_5": _as_list(face.get("landmarks_5")), "pose": _as_list(face.get("pose")),
            "blendshapes": _as_list(face.get("blendshapes")), "age": face.get("age"),
            "gender": face.get("gender"), "model_id": face.get("model_id"), "run_id": face.get("run_id"),
        }
        for task in tasks:
            turns = build_conversations(task, fe_label=face["fe_label"], au_active=au_active,
                                        au_labeled=au_labeled, fe_options=options)
            if turns is None:  # labels missing, or FE and AUs disagree (reasoning)
                not_built[task] += 1
                continue
            per_task[task] += 1
            rows.append({**base, "id": f"pseudo/{key}/{task}", "task": task, "conversations": turns})
    report.update(n_kept_faces=len(kept), dropped=dropped, n_rows=len(rows), tasks=dict(per_task),
                  tasks_not_built=dict(not_built))
    return BuiltInstructions(_to_table(rows), report)


def _is_missing(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, float):
        return value != value  # NaN
    return value is pd.NA or value is pd.NaT


# ---------------------------------------------------------------------------------------------
# labeled datasets


def _dataset_options(dataset: str, labels: Iterable[str]) -> tuple[str, ...]:
    classes = DATASET_CLASSES.get("affectnet8" if dataset == "affectnet" else dataset, ())
    extra = [c for c in classes if c not in FE_BASIC and c in set(labels)]
    return fe_options_for(extra)


def _to_jpeg(data: bytes, quality: int = 95) -> bytes:
    if data[:3] == b"\xff\xd8\xff":
        return data
    from PIL import Image  # lazy: only needed when embedding non-JPEG images

    with Image.open(io.BytesIO(data)) as img:
        buf = io.BytesIO()
        img.convert("RGB").save(buf, format="JPEG", quality=quality)
        return buf.getvalue()


def instructions_from_records(records: ParsedDataset | pd.DataFrame, *,
                              tasks: Sequence[str] = DEFAULT_TASKS,
                              embed_images: bool = False) -> BuiltInstructions:
    """Instruction rows from parsed labeled-dataset records (:mod:`workflows.training.datasets`).

    ``group_id`` is the clip for video datasets, the subject for AU datasets (subject-independent
    splits, as in the BP4D / DISFA protocols) and the sample otherwise. With ``embed_images``
    still images are read and stored as JPEG (non-JPEG re-encoded); unreadable ones are
    dropped and listed in the report. Clips are always referenced by uri.
    """
    _check_tasks(tasks)
    frame = records.records if isinstance(records, ParsedDataset) else records
    options_by_dataset = {ds: _dataset_options(ds, g["fe_label"].dropna())
                          for ds, g in frame.groupby("dataset")} if len(frame) else {}
    rows: list[dict[str, Any]] = []
    per_task: Counter[str] = Counter()
    image_errors: list[str] = []
    no_task = 0
    for rec in frame.to_dict("records"):
        rec = {k: (None if _is_missing(v) else v) for k, v in rec.items()}
        dataset = rec["dataset"]
        au_active, au_labeled = _as_list(rec.get("au_active")), _as_list(rec.get("au_labeled"))
        if au_active is not None and au_labeled is None:
            au_labeled = list(AU_NAMES)
        turns_by_task = {t: build_conversations(t, fe_label=rec.get("fe_label"), au_active=au_active,
                                                au_labeled=au_labeled,
                                                fe_options=options_by_dataset.get(dataset, FERID_OPTIONS))
                         for t in tasks}
        turns_by_task = {t: v for t, v in turns_by_task.items() if v is not None}
        if not turns_by_task:
            no_task += 1
            continue
        image = None
        if embed_images and rec.get("media") == "image" and rec.get("uri"):
            try:
                image = _to_jpeg(storage.read_bytes(rec["uri"]))
            except Exception as e:  # noqa: BLE001 - a missing/corrupt image is a row problem
                image_errors.append(f"{rec['uri']}: {type(e).__name__}: {e}")
                continue
        if rec.get("subject") is not None:
            group = f"{dataset}:{rec['subject']}"
        elif rec.get("video_id") is not None:
            group = str(rec["video_id"])
        else:
            group = str(rec["id"])
        base = {
            "source": dataset, "group_id": group, "dataset_split": rec.get("split"),
            "media": rec.get("media"), "image": image, "image_uri": rec.get("uri"),
            "video_id": rec.get("video_id"), "track_id": None, "frame_index": rec.get("frame_index"),
            "timestamp_s": None, "bbox": _as_list(rec.get("bbox")), "fe_label": rec.get("fe_label"),
            "fe_confidence": None, "fe_probs": _as_dict(rec.get("fe_probs")),
            "au_active": au_active, "au_labeled": au_labeled, "au_probs": None,
            "age": None, "gender": None, "model_id": None, "run_id": None,
        }
        for task, turns in turns_by_task.items():
            per_task[task] += 1
            rows.append({**base, "id": f"{rec['id']}/{task}", "task": task, "conversations": turns})
    report = {"source": "records", "n_records": len(frame), "n_without_task": no_task,
              "n_image_errors": len(image_errors), "image_errors": image_errors[:100],
              "n_rows": len(rows), "tasks": dict(per_task)}
    return BuiltInstructions(_to_table(rows), report)


def _to_table(rows: list[dict[str, Any]]) -> pa.Table:
    data = {}
    for field in INSTRUCTION_SCHEMA:
        values = [r.get(field.name) for r in rows]
        if pa.types.is_map(field.type):
            values = [None if v is None else list(v.items()) for v in values]
        data[field.name] = pa.array(values, type=field.type)
    return pa.table(data, schema=INSTRUCTION_SCHEMA)


# ---------------------------------------------------------------------------------------------
# splitting and storage


def split_of(group_id: str, fractions: Mapping[str, float] = DEFAULT_SPLITS, salt: str = SPLIT_SALT) -> str:
    """Deterministic split for a group: SHA-256 of ``salt/group_id`` → a point in [0, 1) → bucket."""
    digest = hashlib.sha256(f"{salt}/{group_id}".encode()).digest()
    point = int.from_bytes(digest[:8], "big") / 2.0**64
    cumulative = 0.0
    names = list(fractions)
    for name in names:
        cumulative += fractions[name]
        if point < cumulative:
            return name
    return names[-1]  # float rounding at the top end


def _check_fractions(fractions: Mapping[str, float]) -> None:
    if not fractions or any(v < 0 for v in fractions.values()) or abs(sum(fractions.values()) - 1.0) > 1e-6:
        raise ValueError(f"split fractions must be non-negative and sum to 1, got {dict(fractions)}")


def _splits_for(groups: Iterable[Any], fractions: Mapping[str, float], salt: str) -> list[str]:
    cache: dict[str, str] = {}
    out = []
    for g in groups:
        key = str(g)
        if key not in cache:
            cache[key] = split_of(key, fractions, salt)
        out.append(cache[key])
    return out


def assign_splits(data: pa.Table | pd.DataFrame, fractions: Mapping[str, float] = DEFAULT_SPLITS, *,
                  salt: str = SPLIT_SALT, group_column: str = "group_id") -> pa.Table | pd.DataFrame:
    """Set the ``split`` column by hashing ``group_column``: every row of a group lands in one split.

    Same input type out. The assignment of a group never depends on the other rows, so adding
    data later leaves existing groups (and the holdout) where they were.
    """
    _check_fractions(fractions)
    if isinstance(data, pd.DataFrame):
        if group_column not in data:
            raise KeyError(f"no column {group_column!r} to split by")
        return data.assign(split=_splits_for(data[group_column].tolist(), fractions, salt))
    if group_column not in data.column_names:
        raise KeyError(f"no column {group_column!r} to split by")
    splits = _splits_for(data.column(group_column).to_pylist(), fractions, salt)
    column = pa.array(splits, type=pa.string())
    if "split" in data.column_names:
        return data.set_column(data.column_names.index("split"), "split", column)
    return data.append_column("split", column)


def write_instructions(table: pa.Table, output_uri: str, rows_per_file: int = 20_000) -> list[str]:
    """Write ``table`` as ``OUTPUT/part-00000.parquet`` ... (zstd); returns the file URIs."""
    if rows_per_file < 1:
        raise ValueError(f"rows_per_file must be >= 1, got {rows_per_file}")
    uris = []
    for i, start in enumerate(range(0, max(table.num_rows, 1), rows_per_file)):
        buf = io.BytesIO()
        pq.write_table(table.slice(start, rows_per_file), buf, compression="zstd")
        uri = storage.join(output_uri, f"part-{i:05d}.parquet")
        storage.write_bytes(uri, buf.getvalue())
        uris.append(uri)
    return uris


def read_instructions(uri: str) -> pa.Table:
    """Read instruction Parquet (a file or a folder of parts), cast to :data:`INSTRUCTION_SCHEMA`."""
    files = storage.list_files(uri, suffixes=(".parquet",))
    if not files:
        raise FileNotFoundError(f"no instruction Parquet under {uri}")
    tables = [pq.read_table(io.BytesIO(storage.read_bytes(f))) for f in files]
    table = pa.concat_tables(tables, promote_options="permissive")
    for name in ADDED_COLUMNS:
        if name not in table.column_names:
            field = INSTRUCTION_SCHEMA.field(name)
            table = table.append_column(field, pa.nulls(table.num_rows, field.type))
    missing = [n for n in INSTRUCTION_COLUMNS if n not in table.column_names]
    if missing:
        raise ValueError(f"{uri}: not instruction Parquet, lacks columns {missing}")
    return table.select(list(INSTRUCTION_COLUMNS)).cast(INSTRUCTION_SCHEMA)


def split_counts(table: pa.Table) -> dict[str, dict[str, int]]:
    """``{split: {"rows": n, "groups": n}}`` for a quick look at a split table."""
    df = table.select(["split", "group_id"]).to_pandas()
    return {str(s): {"rows": len(g), "groups": int(g["group_id"].nunique())}
            for s, g in df.groupby("split", dropna=False)}

