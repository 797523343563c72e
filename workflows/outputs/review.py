"""``mien review export | import``: a human review loop through Label Studio.

``export_tasks`` picks the faces most worth a human look from an annotate output and writes
them as a Label Studio project; ``import_annotations`` reads Label Studio's JSON export back as
labeled faces that ``mien train``, ``mien evaluate`` (a labeled holdout) and ``mien retrain``
(``holdout.uri``) read::

    DIR/                            mien review export --output DIR
      images/<face_key>.jpg         the aligned face crops Label Studio shows
      tasks.json                    Label Studio tasks: data.image, data.meta (the face), predictions
      labeling_config.xml           the project's labeling interface (Settings > Labeling Interface)
      faces.parquet                 the selected faces' annotate rows (crop, face-stage measurements);
                                    the import takes the faces from here
    DEST/                           mien review import --output DEST
      part-00000.parquet            instruction Parquet (workflows.training.instructions), source
                                    "review", plus provenance columns review_task_id,
                                    review_annotation_id, review_annotator, review_annotated_at
      review_import.json            what the import read, kept and left out

Selection (``strategy``), over committed faces that have a crop, at most one face per track
segment (``video_id, track_id, segment_id``: one person is not asked about twice):

- ``uncertainty``: lowest top expression probability first, ties broken by highest entropy;
- ``disagreement``: faces whose face-prior expression (``fe_prior``) differs from the model's
  ``fe_label``, the most confident disagreements first (the higher of the two smaller top
  probabilities); faces without a prior are not candidates;
- ``random``: a seeded shuffle.

Each task carries one prediction (``model_version`` = the annotate model id, ``score`` = the top
expression probability) that pre-fills the expression (single choice, its probability as score)
and the active AUs (multiple choice; ``none`` when the model found none). An annotator who
submits confirms what is checked. The AU control lists every AU of ``model.taxonomy.AU_NAMES``
plus ``none`` ("no AU is active"); an annotation without any AU choice leaves the face's AUs
unlabeled (``au_labeled`` null: FE-only), never all-negative.

The JSON export read back is Label Studio's "JSON" format
(https://labelstud.io/guide/export.html#Label-Studio-JSON-format-of-annotated-tasks): a list of
tasks, each with ``data`` and ``annotations`` (``result``, ``was_cancelled``, ``completed_by``,
``id``, ``created_at`` / ``updated_at``). Per task the latest annotation that was not cancelled
counts; tasks with only cancelled (skipped) annotations are left out and counted.
"""

from __future__ import annotations

import dataclasses
import io
import json
import math
import xml.etree.ElementTree as ET
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Literal

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from model.taxonomy import AU_DESCRIPTIONS, AU_NAMES, FE_BASIC
from workflows.core import storage
from workflows.corpus import schema
from workflows.corpus.privacy import crops_withheld
from workflows.corpus.reader import AnnotationOutput
from workflows.training.instructions import (
    DEFAULT_TASKS,
    INSTRUCTION_SCHEMA,
    build_conversations,
    write_instructions,
)

Strategy = Literal["uncertainty", "disagreement", "random"]
STRATEGIES: tuple[str, ...] = ("uncertainty", "disagreement", "random")
IMAGE_NAME = "image"  # the Image object tag, and the task data key it shows ($image)
FE_CONTROL = "expression"
AU_CONTROL = "aus"
NO_AU = "none"  # the AU choice that says "reviewed: no AU is active"
SOURCE = "review"  # the instruction rows' source: not "pseudo", so never read as self-graded
FACES_FILE = "faces.parquet"
TASKS_FILE = "tasks.json"
CONFIG_FILE = "labeling_config.xml"
REPORT_FILE = "review_import.json"
LOCAL_FILES_PREFIX = "/data/local-files/?d="  # Label Studio's local files storage URL
PROVENANCE = pa.schema([
    pa.field("review_task_id", pa.int64()),  # Label Studio's task id
    pa.field("review_annotation_id", pa.int64()),
    pa.field("review_annotator", pa.string()),  # Label Studio user id (completed_by)
    pa.field("review_annotated_at", pa.string()),  # the annotation's updated_at (ISO 8601)
])
_SELECT_COLUMNS = ["frame_index", "track_id", "segment_id", "fe_label", "fe_probs", "fe_prior", "crop_jpeg"]
CANDIDATE_COLUMNS = ["face_key", "video_id", "frame_index", "track_id", "track", "segment_id", "fe_label", "top_p",
                     "entropy", "prior_label", "prior_p", "has_crop"]


class ReviewError(ValueError):
    """A review export or import the user can fix; the message names the fix."""


# ---------------------------------------------------------------------------------------------
# the labeling config and validation against it


def labeling_config() -> str:
    """The Label Studio labeling config (XML) of a review project: the crop, one expression
    (single choice) and the active AUs (multiple choice, with ``none``)."""
    fe = "\n".join(f'    <Choice value="{c}"/>' for c in FE_BASIC)
    aus = "\n".join(f'    <Choice value="{a}" hint="{AU_DESCRIPTIONS[a]}"/>' for a in AU_NAMES)
    return f"""<View>
  <Image name="{IMAGE_NAME}" value="${IMAGE_NAME}" zoom="true"/>
  <Header value="Facial expression"/>
  <Choices name="{FE_CONTROL}" toName="{IMAGE_NAME}" choice="single" showInline="true">
{fe}
  </Choices>
  <Header value="Active action units (check every active one; none: no AU is active)"/>
  <Choices name="{AU_CONTROL}" toName="{IMAGE_NAME}" choice="multiple" showInline="true">
{aus}
    <Choice value="{NO_AU}" hint="reviewed: no action unit is active"/>
  </Choices>
</View>
"""


@dataclasses.dataclass(frozen=True)
class Control:
    """A control tag of a labeling config (``<Choices>``): what a result item must match."""

    tag: str  # result "type" is its lower-case name
    to_names: tuple[str, ...]
    choice: str  # single | multiple
    values: tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class LabelingConfig:
    """The parts of a labeling config that tasks and results are checked against."""

    objects: dict[str, str]  # object tag name -> the task data key it reads ($image -> image)
    controls: dict[str, Control]


def parse_labeling_config(xml: str) -> LabelingConfig:
    """Object tags (a ``value="$key"`` and no ``toName``) and ``Choices`` controls of ``xml``."""
    root = ET.fromstring(xml)
    objects, controls = {}, {}
    for el in root.iter():
        name, value = el.get("name"), el.get("value", "")
        if name and el.get("toName") is None and value.startswith("$"):
            objects[name] = value[1:]
        elif name and el.get("toName") is not None:
            values = tuple(c.get("value", "") for c in el.iter("Choice"))
            controls[name] = Control(el.tag, tuple(t.strip() for t in el.get("toName", "").split(",")),
                                     el.get("choice", "single"), values)
    return LabelingConfig(objects, controls)


def result_problems(result: Any, config: LabelingConfig, where: str) -> list[str]:
    """Why the result items of a prediction or annotation do not fit ``config`` (empty: they do):
    each names a control of the config and the object it labels, has its type, and chooses among
    its values (one for a single-choice control)."""
    if not isinstance(result, list):
        return [f"{where}: result is not a list"]
    problems = []
    for i, item in enumerate(result):
        at = f"{where} result[{i}]"
        if not isinstance(item, Mapping):
            problems.append(f"{at}: not an object")
            continue
        control = config.controls.get(str(item.get("from_name")))
        if control is None:
            problems.append(f"{at}: from_name {item.get('from_name')!r} is no control of the labeling config "
                            f"({', '.join(config.controls)})")
            continue
        if item.get("to_name") not in control.to_names:
            problems.append(f"{at}: to_name {item.get('to_name')!r} is not {control.to_names}")
        kind = control.tag.lower()
        if item.get("type") != kind:
            problems.append(f"{at}: type {item.get('type')!r} is not {kind!r}")
            continue
        chosen = (item.get("value") or {}).get(kind)
        if not isinstance(chosen, list) or not chosen:
            problems.append(f"{at}: value.{kind} is not a non-empty list")
            continue
        unknown = [c for c in chosen if c not in control.values]
        if unknown:
            problems.append(f"{at}: {unknown} are not choices of {item['from_name']!r}")
        if control.choice == "single" and len(chosen) > 1:
            problems.append(f"{at}: {item['from_name']!r} is single-choice, got {len(chosen)} choices")
        score = item.get("score")
        if score is not None and not (isinstance(score, int | float) and 0.0 <= score <= 1.0):
            problems.append(f"{at}: score {score!r} is not a number in [0, 1]")
    return problems


def validate_tasks(tasks: Sequence[Mapping[str, Any]], config_xml: str) -> list[str]:
    """Problems of Label Studio tasks against a labeling config (empty: Label Studio accepts
    them): every object's data key is present, every prediction and annotation result fits
    (:func:`result_problems`). Checked with ``xml.etree`` (``label-studio-sdk`` is not a
    dependency of mien)."""
    config = parse_labeling_config(config_xml)
    problems = []
    for n, task in enumerate(tasks):
        data = task.get("data")
        if not isinstance(data, Mapping):
            problems.append(f"task {n}: no data object")
            continue
        for obj, key in config.objects.items():
            if not isinstance(data.get(key), str) or not data[key]:
                problems.append(f"task {n}: data.{key} (for <{obj}>) is missing or not a string")
        for kind in ("predictions", "annotations"):
            for j, entry in enumerate(task.get(kind) or []):
                problems += result_problems(entry.get("result"), config, f"task {n} {kind}[{j}]")
    return problems


# ---------------------------------------------------------------------------------------------
# selecting faces


def _as_dict(pairs: Any) -> dict[str, float]:
    if not pairs:
        return {}
    items = pairs.items() if isinstance(pairs, Mapping) else pairs
    return {str(k): float(v) for k, v in items if v is not None and v == v}


def _top(probs: Mapping[str, float]) -> tuple[str | None, float]:
    if not probs:
        return None, float("nan")
    label = max(probs, key=lambda k: probs[k])
    return label, probs[label]


def _entropy(probs: Mapping[str, float]) -> float:
    p = np.asarray([v for v in probs.values() if v > 0], np.float64)
    if not p.size:
        return float("nan")
    p = p / p.sum()
    return float(-(p * np.log(p)).sum())


def face_key(video_id: str, frame_index: int, track: str) -> str:
    """A face's name in the review set (file name of its crop): ``<video_id>-<frame:06d>-<track>``."""
    return f"{video_id}-{int(frame_index):06d}-{track}"


def _track_names(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """``t<track_id>`` per face of one video (rows in the reader's time-then-track order);
    ``u<n>`` for the n-th untracked face of its frame, so each face of a frame has its own key."""
    untracked: Counter[int] = Counter()
    names = []
    for r in rows:
        if r["track_id"] is None:
            untracked[r["frame_index"]] += 1
            names.append(f"u{untracked[r['frame_index']]}")
        else:
            names.append(f"t{r['track_id']}")
    return names


def candidate_faces(out: AnnotationOutput) -> tuple[pd.DataFrame, int]:
    """One row per committed face with what selection needs (``face_key``, ``video_id``,
    ``frame_index``, ``track``, ``segment_id``, ``fe_label``, ``top_p``, ``entropy``,
    ``prior_label``, ``prior_p``, ``has_crop``), and how many faces were read. Streams one video
    at a time: crops are read only to see whether a face has one."""
    ok = set(out.committed_videos()["video_id"])
    rows = []
    n = 0
    for video_id, t in out.faces_by_video(_SELECT_COLUMNS):
        if video_id not in ok:
            continue
        has_crop = pc.is_valid(t.column("crop_jpeg")).to_pylist()
        t = t.drop_columns(["crop_jpeg"])
        rows_of = t.to_pylist()
        for r, track, crop in zip(rows_of, _track_names(rows_of), has_crop, strict=True):
            n += 1
            probs = _as_dict(r["fe_probs"])
            top_label, top_p = _top(probs)
            prior_label, prior_p = _top(_as_dict(r["fe_prior"]))
            rows.append({"face_key": face_key(video_id, r["frame_index"], track), "video_id": video_id,
                         "frame_index": r["frame_index"], "track_id": r["track_id"], "track": track,
                         "segment_id": r["segment_id"], "fe_label": r["fe_label"] or top_label,
                         "top_p": top_p, "entropy": _entropy(probs), "prior_label": prior_label,
                         "prior_p": prior_p, "has_crop": crop})
    return pd.DataFrame(rows, columns=CANDIDATE_COLUMNS), n


def _check_selection(budget: int, strategy: str) -> None:
    if strategy not in STRATEGIES:
        raise ReviewError(f"strategy must be one of {', '.join(STRATEGIES)}, got {strategy!r}")
    if budget < 1:
        raise ReviewError(f"budget must be at least 1, got {budget}")


def select_faces(candidates: pd.DataFrame, budget: int, strategy: Strategy = "uncertainty",
                 seed: int = 0) -> pd.DataFrame:
    """The ``budget`` faces of ``candidates`` (:func:`candidate_faces`) to review, in review order:
    ranked by ``strategy`` (module docstring), the first face of each track segment kept."""
    _check_selection(budget, strategy)
    c = candidates[candidates["has_crop"].astype(bool) & candidates["top_p"].notna()]
    c = c.sort_values("face_key", kind="stable")  # a fixed order whatever order the parts were read in
    if not len(c):
        return c
    if strategy == "uncertainty":
        c = c.assign(_neg_entropy=-c["entropy"].fillna(0.0))
        c = c.sort_values(["top_p", "_neg_entropy"], kind="stable").drop(columns="_neg_entropy")
    elif strategy == "disagreement":
        c = c[c["prior_label"].notna() & (c["prior_label"] != c["fe_label"])]
        c = c.assign(_agreement=np.minimum(c["top_p"], c["prior_p"]))
        c = c.sort_values("_agreement", ascending=False, kind="stable").drop(columns="_agreement")
    else:
        c = c.iloc[np.random.default_rng(seed).permutation(len(c))]
    segment = c["video_id"] + "/" + c["track"].where(c["track_id"].notna(), c["face_key"]) + "/" + \
        c["segment_id"].astype("string").fillna("")
    return c[~segment.duplicated()].head(budget).reset_index(drop=True)


# ---------------------------------------------------------------------------------------------
# export


@dataclasses.dataclass
class ReviewExport:
    """What ``export_tasks`` wrote."""

    directory: str
    tasks: int
    candidates: int  # faces with a crop
    faces_read: int
    strategy: str
    image_root: str

    @property
    def tasks_file(self) -> str:
        return storage.join(self.directory, TASKS_FILE)


def default_image_root(dest: str) -> str:
    """Where Label Studio finds the crops by default: its local files storage for a local
    ``dest`` (``/data/local-files/?d=<path without the leading />/images/``), the ``s3://``
    URI itself for a bucket (Label Studio resolves it through a connected S3 source storage)."""
    images = storage.join(dest, "images")
    if storage.is_remote(images):
        return images + "/"
    return LOCAL_FILES_PREFIX + storage.absolute(images).lstrip("/") + "/"


def _prediction(face: Mapping[str, Any], model_id: str | None, n: int) -> dict[str, Any]:
    """The pre-annotation of one face: its expression and active AUs, with probabilities as scores."""
    probs = {k: v for k, v in _as_dict(face["fe_probs"]).items() if k in FE_BASIC}  # the config's choices
    label, top_p = _top(probs)
    label = face["fe_label"] if face["fe_label"] in probs else label
    au_probs = _as_dict(face["au_probs"])
    active = [a for a in AU_NAMES if a in set(face["au_active"] or [])]
    if active:
        au_score = float(np.mean([au_probs.get(a, 1.0) for a in active]))
    else:  # "none": how sure the model is that each scored AU is off
        au_score = float(np.mean([1.0 - p for p in au_probs.values()])) if au_probs else 1.0
    result = [{"id": f"{n}-fe", "from_name": FE_CONTROL, "to_name": IMAGE_NAME, "type": "choices",
               "value": {"choices": [label]}, "score": round(probs[label], 6)}]
    if au_probs or active:  # a model that scores no AU makes no AU claim
        result.append({"id": f"{n}-au", "from_name": AU_CONTROL, "to_name": IMAGE_NAME, "type": "choices",
                       "value": {"choices": active or [NO_AU]}, "score": round(au_score, 6)})
    return {"model_version": model_id or "unknown", "score": round(top_p, 6), "result": result}


def _none_if_nan(v: Any) -> Any:
    return None if isinstance(v, float) and math.isnan(v) else v


def export_tasks(output_uri: str, dest: str, budget: int = 100, strategy: Strategy = "uncertainty",
                 seed: int = 0, image_root: str | None = None) -> ReviewExport:
    """Select ``budget`` faces of the annotate output ``output_uri`` and write them to ``dest`` as a
    Label Studio project (layout and strategies in the module docstring). ``image_root``: the URL
    prefix of ``images/`` as Label Studio's browser reaches it (default :func:`default_image_root`).

    Raises :class:`ReviewError` when the output has no face crops or ``dest`` already holds an
    export (its tasks may be in Label Studio, and their import needs its ``faces.parquet``)."""
    _check_selection(budget, strategy)  # before reading every face of the output
    dest = storage.absolute(dest)
    if storage.exists(storage.join(dest, TASKS_FILE)):
        raise ReviewError(f"{dest} already holds a review export ({TASKS_FILE}); its tasks may be in Label Studio "
                          "and `mien review import` needs its faces.parquet: give a new --output directory")
    out = AnnotationOutput(output_uri)
    candidates, n_read = candidate_faces(out)
    with_crop = int(candidates["has_crop"].sum())
    if n_read and not with_crop and (strict := crops_withheld(out)):
        raise ReviewError(f"{output_uri}: {strict}, and Label Studio needs an image to show; review an output "
                          "annotated without privacy mode")
    if n_read and not with_crop:
        raise ReviewError(f"{output_uri} has no face crops (annotated with output.crops=false), and Label Studio "
                          "needs an image to show: annotate again with crops, `mien annotate --input ... "
                          f"--output {output_uri} --force --set output.crops=true`")
    chosen = select_faces(candidates, budget, strategy, seed)
    root = image_root if image_root is not None else default_image_root(dest)
    if root and not root.endswith(("/", "=")):
        root += "/"
    uris = dict(zip(*(out.committed_videos()[c] for c in ("video_id", "video_uri")), strict=True))
    faces = _selected_rows(out, chosen)
    config_xml = labeling_config()
    tasks = []
    for n, face in enumerate(faces):
        storage.write_bytes(storage.join(dest, "images", f"{face['face_key']}.jpg"), bytes(face["crop_jpeg"]))
        meta = {"face_key": face["face_key"], "video_id": face["video_id"], "video_uri": uris.get(face["video_id"]),
                "frame_index": face["frame_index"], "timestamp_s": _none_if_nan(face["timestamp_s"]),
                "track_id": face["track_id"], "segment_id": face["segment_id"], "run_id": face["run_id"],
                "model_id": face["model_id"], "review_dir": dest, "strategy": strategy}
        face["video_uri"] = meta["video_uri"]
        tasks.append({"data": {IMAGE_NAME: f"{root}{face['face_key']}.jpg", "meta": meta},
                      "predictions": [_prediction(face, face["model_id"], n)]})
    problems = validate_tasks(tasks, config_xml)
    if problems:  # a bug here, not a user problem: never hand Label Studio tasks it rejects
        raise RuntimeError("exported tasks do not fit the labeling config:\n" + "\n".join(problems[:20]))
    face_schema = schema.FACES.append(pa.field("video_uri", pa.string())).append(pa.field("face_key", pa.string()))
    buf = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(faces, schema=face_schema), buf, compression="zstd")
    storage.write_bytes(storage.join(dest, FACES_FILE), buf.getvalue())
    storage.write_text(storage.join(dest, CONFIG_FILE), config_xml)
    # tasks.json last: its presence marks a complete export (what the check above refuses to overwrite)
    storage.write_text(storage.join(dest, TASKS_FILE), json.dumps(tasks, indent=1) + "\n")
    return ReviewExport(dest, len(tasks), with_crop, n_read, strategy, root)


def _selected_rows(out: AnnotationOutput, chosen: pd.DataFrame) -> list[dict[str, Any]]:
    """The full annotate rows of the chosen faces, in ``chosen`` order, each with its ``face_key``."""
    wanted = {(r.video_id, r.frame_index, r.track): r.face_key for r in chosen.itertuples()}
    found: dict[str, dict[str, Any]] = {}
    for video_id in dict.fromkeys(chosen["video_id"]):
        rows = out.rows_of_video(video_id, "faces").to_pylist()
        for r, track in zip(rows, _track_names(rows), strict=True):
            key = wanted.get((video_id, r["frame_index"], track))
            if key is not None:
                found[key] = {**r, "face_key": key}
    return [found[k] for k in chosen["face_key"] if k in found]


# ---------------------------------------------------------------------------------------------
# import


@dataclasses.dataclass
class ReviewImport:
    """What ``import_annotations`` read and wrote (``report`` is ``review_import.json``)."""

    directory: str
    files: list[str]
    report: dict[str, Any]


def _latest_annotation(annotations: Iterable[Mapping[str, Any]]) -> tuple[Mapping[str, Any] | None, bool]:
    """The newest annotation that was not cancelled, and whether any annotation was cancelled."""
    done = [a for a in annotations if not a.get("was_cancelled")]
    cancelled = any(a.get("was_cancelled") for a in annotations)
    if not done:
        return None, cancelled

    def when(a: Mapping[str, Any]) -> tuple[str, int]:
        ident = a.get("id")
        return str(a.get("updated_at") or a.get("created_at") or ""), int(ident) if str(ident).isdigit() else -1

    return max(done, key=when), cancelled


def _annotator(completed_by: Any) -> str | None:
    """``completed_by`` as Label Studio exports it: a user id, or a user object with ``id``."""
    if isinstance(completed_by, Mapping):
        completed_by = completed_by.get("id", completed_by.get("email"))
    return None if completed_by is None else str(completed_by)


def _labels(result: Sequence[Mapping[str, Any]]) -> tuple[str | None, list[str] | None, list[str] | None]:
    """(fe_label, au_active, au_labeled) of a fitting annotation result; None where not labeled.
    ``none`` with AUs checked beside it contradicts itself: the AUs stay unlabeled."""
    fe, aus = None, None
    for item in result:
        chosen = item["value"]["choices"]
        if item["from_name"] == FE_CONTROL:
            fe = chosen[0]
        elif item["from_name"] == AU_CONTROL:
            aus = list(chosen)
    if aus is None or (NO_AU in aus and len(aus) > 1):
        return fe, None, None
    return fe, [a for a in AU_NAMES if a in aus], list(AU_NAMES)


def read_export(export_json: str) -> list[dict[str, Any]]:
    """The tasks of a Label Studio JSON export; :class:`ReviewError` when it is not one."""
    try:
        tasks = json.loads(storage.read_text(export_json))
    except json.JSONDecodeError as e:
        raise ReviewError(f"{export_json} is not JSON ({e}); export the project with Export > JSON") from e
    if not isinstance(tasks, list) or not all(isinstance(t, dict) and "data" in t for t in tasks):
        raise ReviewError(f"{export_json} is not a Label Studio JSON export (a list of tasks with data and "
                          "annotations); export the project with Export > JSON, not JSON_MIN or CSV")
    return tasks


def _review_faces(review_dir: str) -> dict[str, dict[str, Any]]:
    uri = storage.join(review_dir, FACES_FILE)
    if not storage.exists(uri):
        raise ReviewError(f"{uri} not found: the import takes each face's crop and measurements from the "
                          "review export; pass --review-dir with the --output directory of `mien review export`")
    rows = pq.read_table(io.BytesIO(storage.read_bytes(uri))).to_pylist()
    return {r["face_key"]: r for r in rows}


def import_annotations(export_json: str, dest: str, review_dir: str | None = None) -> ReviewImport:
    """Read Label Studio's JSON export of a review project and write its labeled faces to ``dest``
    as instruction Parquet (layout in the module docstring), every row with the face's crop and
    face-stage measurements from the review export (``review_dir``; default: the one each task
    names in ``data.meta.review_dir``)."""
    tasks = read_export(export_json)
    dest = storage.absolute(dest)
    config = parse_labeling_config(labeling_config())
    ours = set(config.controls)
    counts: Counter[str] = Counter()
    problems: list[str] = []
    annotators: Counter[str] = Counter()
    loaded: dict[str, dict[str, dict[str, Any]]] = {}
    labeled: dict[str, dict[str, Any]] = {}  # face_key -> its newest labels
    for n, task in enumerate(tasks):
        meta = task["data"].get("meta") or {}
        key, where = meta.get("face_key"), f"task {task.get('id', n)}"
        if not key:
            problems.append(f"{where}: no data.meta.face_key (not a task of `mien review export`)")
            continue
        annotation, cancelled = _latest_annotation(task.get("annotations") or [])
        if annotation is None:
            counts["skipped" if cancelled else "unannotated"] += 1
            continue
        result = [r for r in annotation.get("result") or [] if isinstance(r, Mapping) and r.get("from_name") in ours]
        bad = result_problems(result, config, where)
        if bad:
            problems += bad
            continue
        fe, au_active, au_labeled = _labels(result)
        if fe is None and au_labeled is None:
            counts["empty"] += 1
            continue
        source_dir = review_dir or meta.get("review_dir")
        if not source_dir:
            problems.append(f"{where}: no data.meta.review_dir; pass --review-dir")
            continue
        if source_dir not in loaded:
            loaded[source_dir] = _review_faces(source_dir)
        face = loaded[source_dir].get(key)
        if face is None:
            problems.append(f"{where}: face {key} is not in {storage.join(source_dir, FACES_FILE)}")
            continue
        stamp = str(annotation.get("updated_at") or annotation.get("created_at") or "")
        if key in labeled:
            counts["duplicates"] += 1
            if stamp < labeled[key]["review_annotated_at"]:
                continue
        labeled[key] = {"face": face, "fe_label": fe, "au_active": au_active, "au_labeled": au_labeled,
                        "review_task_id": _int_or_none(task.get("id")),
                        "review_annotation_id": _int_or_none(annotation.get("id")),
                        "review_annotator": _annotator(annotation.get("completed_by")),
                        "review_annotated_at": stamp}
    rows: list[dict[str, Any]] = []
    agree = 0
    for key, lab in labeled.items():
        f = lab.pop("face")
        annotators[lab["review_annotator"] or "unknown"] += 1
        counts["au_only" if not lab["fe_label"] else "fe_and_au" if lab["au_labeled"] else "fe_only"] += 1
        agree += lab["fe_label"] is not None and lab["fe_label"] == f["fe_label"]
        track = None if f["track_id"] is None else str(f["track_id"])
        base = {"source": SOURCE, "group_id": str(f["video_id"]), "split": None, "dataset_split": None,
                "media": "image", "image": f["crop_jpeg"], "image_uri": f["video_uri"], "video_id": f["video_id"],
                "track_id": track, "frame_index": f["frame_index"], "timestamp_s": f["timestamp_s"],
                "bbox": f["bbox"], "fe_label": lab["fe_label"], "au_active": lab["au_active"],
                "au_labeled": lab["au_labeled"], "au_evidence": f["au_evidence"], "fe_prior": f["fe_prior"],
                "landmarks_5": f["landmarks_5"], "pose": f["pose"], "blendshapes": f["blendshapes"],
                "age": f["age"], "gender": f["gender"], "model_id": f["model_id"], "run_id": f["run_id"],
                **{k: v for k, v in lab.items() if k.startswith("review_")}}
        for task_name in DEFAULT_TASKS:
            turns = build_conversations(task_name, fe_label=lab["fe_label"], au_active=lab["au_active"],
                                        au_labeled=lab["au_labeled"])
            if turns is not None:
                rows.append({**base, "id": f"{SOURCE}/{key}/{task_name}", "task": task_name, "conversations": turns})
    table = pa.Table.from_pylist(rows, schema=pa.unify_schemas([INSTRUCTION_SCHEMA, PROVENANCE]))
    files = write_instructions(table, dest) if rows else []
    fe_labeled = sum(1 for lab in labeled.values() if lab["fe_label"])
    report = {"source": export_json, "review_dirs": sorted(loaded), "tasks": len(tasks), "faces": len(labeled),
              "rows": len(rows), "skipped": counts["skipped"], "unannotated": counts["unannotated"],
              "empty": counts["empty"], "duplicates": counts["duplicates"], "fe_and_au": counts["fe_and_au"],
              "fe_only": counts["fe_only"], "au_only": counts["au_only"], "annotators": dict(annotators),
              "fe_agreement_with_model": agree / fe_labeled if fe_labeled else None,
              "n_problems": len(problems), "problems": problems[:200]}
    storage.write_text(storage.join(dest, REPORT_FILE), json.dumps(report, indent=2) + "\n")
    return ReviewImport(dest, files, report)


def _int_or_none(v: Any) -> int | None:
    try:
        return None if v is None else int(v)
    except (TypeError, ValueError):
        return None
