"""Instruction rows → what the MLLM trains on (one example per question/answer turn) and what it
is evaluated on (one face with its ground truth).

Instruction rows (:mod:`workflows.training.instructions`) carry FERID / LLaVA turns and the face either as
embedded JPEG bytes (``image``) or as a reference (``image_uri``). Here they become

- **examples**: one per human→gpt turn pair, with the question in the model's own prompt format
  (``"\\n<question>\\nASSISTANT:"``, :mod:`model.prompts`), the answer text, the face crop bytes
  and the face-prior inputs (``au_evidence`` (23,), ``fe_prior`` (7,), ``blendshapes`` (52,),
  ``pose`` (3,), age, gender). :class:`ExampleDataset` decodes them into the per-face dicts that
  ``FacialMLLM.collate`` takes;
- **faces**: one per face (rows sharing an id before their ``/<task>`` suffix), with ``fe_label``
  and ``au_active`` / ``au_labeled`` as ground truth; :func:`face_dict` turns each into one face of
  the batch (``model.face_batch.build_face_batch``) that ``FacialAnnotator.annotate`` scores.

Crops: embedded bytes are used as they are, except that rows from labeled datasets (source not
``pseudo``) hold the whole image and are cut to their ``bbox`` when one is given. Rows that only
reference a still image are read once (:func:`embed_images`); rows that reference a video frame
(``media = frame``) cannot be cropped without decoding the video and are dropped where the model
needs pixels (counted in the report).
"""

from __future__ import annotations

import io
import logging
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pyarrow as pa

from model import prompts
from model.face_batch import FIELDS as FACE_FIELDS
from model.face_batch import VECTOR_WIDTHS
from model.taxonomy import AU_NAMES, FE_BASIC
from workflows.core import storage
from workflows.training.instructions import IMAGE_TOKEN

log = logging.getLogger(__name__)

EXAMPLE_SCHEMA = pa.schema([
    pa.field("example_id", pa.string()),
    pa.field("face_id", pa.string()),
    pa.field("task", pa.string()),
    pa.field("question", pa.string()),  # model prompt segment, ends with "ASSISTANT:"
    pa.field("answer", pa.string()),
    pa.field("image", pa.binary()),  # face crop (JPEG/PNG bytes) or null
    pa.field("au_evidence", pa.list_(pa.float32())),  # (23,) AU_NAMES order, NaN = unknown
    pa.field("fe_prior", pa.list_(pa.float32())),  # (7,) FE_BASIC order, NaN = unknown
    pa.field("pose", pa.list_(pa.float32())),  # (3,) degrees, NaN = unknown
    pa.field("blendshapes", pa.list_(pa.float32())),  # (52,) corpus schema's order, null = unknown
    pa.field("age", pa.float32()),
    pa.field("gender", pa.string()),
])

FACE_SCHEMA = pa.schema([
    pa.field("face_id", pa.string()),
    pa.field("source", pa.string()),
    pa.field("split", pa.string()),
    pa.field("image", pa.binary()),
    pa.field("fe_label", pa.string()),
    pa.field("au_active", pa.list_(pa.string())),
    pa.field("au_labeled", pa.list_(pa.string())),
    pa.field("au_evidence", pa.list_(pa.float32())),
    pa.field("fe_prior", pa.list_(pa.float32())),
    pa.field("pose", pa.list_(pa.float32())),
    pa.field("blendshapes", pa.list_(pa.float32())),
    pa.field("age", pa.float32()),
    pa.field("gender", pa.string()),
])

_FE_TASKS = ("fe_category", "fe_au_reasoning")
_AU_TASKS = ("au_detection", "au_yes_no", "fe_au_reasoning")


# ---------------------------------------------------------------------------------------------
# small conversions


def face_id_of(instruction_id: str) -> str:
    """``"rafdb/train_00001/fe_category"`` → ``"rafdb/train_00001"`` (the face the row is about)."""
    return instruction_id.rsplit("/", 1)[0] if "/" in instruction_id else instruction_id


def named_vector(values: Mapping[str, float] | Iterable[tuple[str, float]] | None,
                 names: Sequence[str]) -> list[float] | None:
    """A name→value map (dict or Arrow map pairs) as a list in ``names`` order, NaN where absent."""
    if values is None:
        return None
    pairs = values.items() if isinstance(values, Mapping) else values
    index = {n: i for i, n in enumerate(names)}
    out = [float("nan")] * len(names)
    seen = False
    for k, v in pairs:
        if k in index and v is not None:
            out[index[k]] = float(v)
            seen = True
    return out if seen else None


def turn_pairs(conversations: Sequence[Mapping[str, str]]) -> list[tuple[str, str]]:
    """(question, answer) per human→gpt pair; the question in the model's prompt format.

    ``[{"from": "human", "value": "<image>\\nWhat ...?"}, {"from": "gpt", "value": "happiness"}]``
    → ``[("\\nWhat ...?\\nASSISTANT:", "happiness")]``: exactly the segment the scorer appends
    after the face (``prompts.fe_question``), so training and scoring read the same tokens.
    """
    pairs = []
    pending: str | None = None
    for turn in conversations:
        role, value = turn.get("from"), turn.get("value") or ""
        if role == "human":
            pending = value.replace(IMAGE_TOKEN, "").strip()
        elif role == "gpt" and pending is not None:
            pairs.append((f"\n{pending}\n{prompts.ASSISTANT}", value.strip()))
            pending = None
    return pairs


def decode_crop(data: bytes, size: int, bbox: Sequence[float] | None = None) -> np.ndarray:
    """Image bytes → (size, size, 3) uint8 RGB, cut to ``bbox`` (x0, y0, x1, y1 pixels, grown to a
    square around its centre) when given, then resized."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as img:
        img = img.convert("RGB")
        if bbox is not None and len(bbox) == 4:
            x0, y0, x1, y1 = (float(v) for v in bbox)
            side = max(x1 - x0, y1 - y0, 1.0)
            cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
            half = side / 2
            img = img.crop((round(cx - half), round(cy - half), round(cx + half), round(cy + half)))
        if img.size != (size, size):
            img = img.resize((size, size), Image.BILINEAR)
        return np.asarray(img, dtype=np.uint8)


def _crop_bytes(image: bytes, bbox: Sequence[float]) -> bytes:
    """Whole-image bytes cut to ``bbox`` at its own resolution, re-encoded as JPEG (quality 95)."""
    from PIL import Image

    side = max(float(bbox[2]) - float(bbox[0]), float(bbox[3]) - float(bbox[1]), 1.0)
    arr = decode_crop(image, max(1, round(side)), bbox)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=95)
    return buf.getvalue()


# ---------------------------------------------------------------------------------------------
# crops


def embed_images(table: pa.Table, threads: int = 8) -> tuple[pa.Table, dict[str, int]]:
    """Every row's ``image`` as a face crop: referenced still images are read, labeled-dataset
    images are cut to their ``bbox``. Returns the table and counts (``read``, ``cropped``,
    ``unreadable``, ``frame_only``); rows that stay without a crop keep ``image`` null."""
    images = table.column("image").to_pylist()
    uris = table.column("image_uri").to_pylist()
    media = table.column("media").to_pylist()
    sources = table.column("source").to_pylist()
    bboxes = table.column("bbox").to_pylist()
    counts: Counter[str] = Counter()
    todo = [i for i, img in enumerate(images) if not img and uris[i] and media[i] == "image"]
    unique = sorted({uris[i] for i in todo})

    def read(uri: str) -> bytes | None:
        try:
            return storage.read_bytes(uri)
        except Exception as e:  # noqa: BLE001 - an unreadable image is a row problem
            log.warning("cannot read %s (%s: %s); its rows get no crop", uri, type(e).__name__, e)
            return None

    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        loaded = dict(zip(unique, pool.map(read, unique), strict=True))
    for i in todo:
        data = loaded.get(uris[i])
        counts["read" if data else "unreadable"] += 1
        images[i] = data
    out = []
    for i, img in enumerate(images):
        if img and sources[i] != "pseudo" and bboxes[i]:
            try:
                img = _crop_bytes(bytes(img), bboxes[i])
                counts["cropped"] += 1
            except Exception as e:  # noqa: BLE001 - a corrupt image is a row problem
                log.warning("cannot crop row %d (%s: %s)", i, type(e).__name__, e)
                img = None
                counts["unreadable"] += 1
        if not img and media[i] == "frame":
            counts["frame_only"] += 1
        out.append(img)
    table = table.set_column(table.column_names.index("image"), "image", pa.array(out, type=pa.binary()))
    # crops are final now: a second pass must not cut them again
    table = table.set_column(table.column_names.index("bbox"), "bbox",
                             pa.nulls(table.num_rows, type=table.schema.field("bbox").type))
    return table, dict(counts)


# ---------------------------------------------------------------------------------------------
# examples and faces


def _fixed_vector(value: Sequence[float] | None, width: int) -> list[float] | None:
    return [float(v) for v in value] if value is not None and len(value) == width else None


def _prior_columns(row: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "au_evidence": named_vector(row.get("au_evidence"), AU_NAMES),
        "fe_prior": named_vector(row.get("fe_prior"), FE_BASIC),
        "pose": _fixed_vector(row.get("pose"), VECTOR_WIDTHS["pose"]),
        "blendshapes": _fixed_vector(row.get("blendshapes"), VECTOR_WIDTHS["blendshapes"]),
        "age": None if row.get("age") is None or row["age"] != row["age"] else float(row["age"]),
        "gender": row.get("gender"),
    }


def examples_from_instructions(table: pa.Table, *, needs_crops: bool) -> tuple[pa.Table, dict[str, Any]]:
    """One example per turn pair (:data:`EXAMPLE_SCHEMA`). ``needs_crops``: the model reads pixels,
    so rows without a crop are dropped (and counted). Call :func:`embed_images` first."""
    rows: list[dict[str, Any]] = []
    dropped: Counter[str] = Counter()
    tasks: Counter[str] = Counter()
    for r in table.to_pylist():
        image = r.get("image")
        if needs_crops and not image:
            dropped["no_crop"] += 1
            continue
        pairs = turn_pairs(r["conversations"] or [])
        if not pairs:
            dropped["no_turns"] += 1
            continue
        base = {"face_id": face_id_of(r["id"]), "task": r["task"], "image": image, **_prior_columns(r)}
        for j, (question, answer) in enumerate(pairs):
            rows.append({**base, "example_id": f"{r['id']}/{j}", "question": question, "answer": answer})
            tasks[r["task"]] += 1
    out = pa.Table.from_pylist(rows, schema=EXAMPLE_SCHEMA) if rows else EXAMPLE_SCHEMA.empty_table()
    report = {"rows": table.num_rows, "examples": len(rows), "dropped": dict(dropped), "tasks": dict(tasks)}
    return out, report


def faces_from_instructions(table: pa.Table) -> pa.Table:
    """One row per face (:data:`FACE_SCHEMA`) with its ground truth, for evaluation.

    FE truth comes from rows whose task states the class (``fe_category``, ``fe_au_reasoning``)
    or, failing those, from ``fe_label``; AU truth from rows with ``au_labeled``."""
    faces: dict[str, dict[str, Any]] = {}
    for r in table.to_pylist():
        fid = face_id_of(r["id"])
        face = faces.get(fid)
        if face is None:
            face = faces[fid] = {"face_id": fid, "source": r.get("source"), "split": r.get("split"),
                                 "image": r.get("image"), "fe_label": None, "au_active": None,
                                 "au_labeled": None, **_prior_columns(r)}
        if not face["image"] and r.get("image"):
            face["image"] = r["image"]
        if r.get("fe_label") and (face["fe_label"] is None or r["task"] in _FE_TASKS):
            face["fe_label"] = r["fe_label"]
        if r.get("au_labeled") and face["au_labeled"] is None:
            face["au_labeled"] = list(r["au_labeled"])
            face["au_active"] = list(r.get("au_active") or [])
    rows = list(faces.values())
    return pa.Table.from_pylist(rows, schema=FACE_SCHEMA) if rows else FACE_SCHEMA.empty_table()


def face_dict(row: Mapping[str, Any], crop_size: int, with_crop: bool) -> dict[str, Any]:
    """One example/face row → one face as ``model.face_batch.build_face_batch`` takes it (what
    ``FacialMLLM.collate`` stacks): the row's face-batch fields, and with ``with_crop`` its crop
    decoded to (crop_size, crop_size, 3) uint8 (black when the row has none). Each face is its
    own track segment."""
    out: dict[str, Any] = {k: row[k] for k in FACE_FIELDS if k in row}
    if with_crop:
        image = row.get("image")
        out["crop"] = (decode_crop(image, crop_size) if image
                       else np.zeros((crop_size, crop_size, 3), np.uint8))
    return out


class ExampleDataset:
    """Map-style dataset over an example table (a ``torch.utils.data.Dataset`` by protocol):
    item ``i`` is the dict ``FacialMLLM.collate`` takes (crop decoded and resized here)."""

    def __init__(self, table: pa.Table, crop_size: int, with_crop: bool):
        self.table = table.combine_chunks()
        self.crop_size = crop_size
        self.with_crop = with_crop

    def __len__(self) -> int:
        return self.table.num_rows

    def __getitem__(self, i: int) -> dict[str, Any]:
        row = {name: self.table.column(name)[i].as_py() for name in self.table.column_names}
        return {**face_dict(row, self.crop_size, self.with_crop), "question": row["question"],
                "answer": row["answer"]}


# ---------------------------------------------------------------------------------------------
# loading any supported data source as instruction rows

DATA_FORMATS = ("auto", "instructions", "annotations", "records", "labeled")


def data_format(uri: str) -> str:
    """What ``uri`` holds: ``labeled`` (``rafdb:/path/list.txt``, a dataset format and its label
    file), ``annotations`` (a ``mien annotate`` output with ``faces/``), ``instructions``
    (instruction Parquet) or ``records`` (parsed labeled-dataset records as Parquet)."""
    import pyarrow.parquet as pq

    from workflows.training.datasets import PARSERS

    head = uri.split(":", 1)[0]
    if ":" in uri and head in PARSERS:
        return "labeled"
    if storage.isdir(uri) and storage.exists(storage.join(uri, "faces")):
        return "annotations"
    files = storage.list_files(uri, suffixes=(".parquet",))
    if not files:
        raise FileNotFoundError(f"{uri}: no Parquet files and no faces/ folder; expected instruction "
                                "Parquet, a mien annotate output, labeled records, or FORMAT:LABEL_FILE "
                                f"(FORMAT one of {', '.join(sorted(PARSERS))})")
    with storage.open_input(files[0]) as f:
        names = set(pq.read_schema(f).names)
    if "conversations" in names:
        return "instructions"
    if {"dataset", "fe_label", "au_labeled"} <= names:
        return "records"
    raise ValueError(f"{files[0]}: neither instruction Parquet (no 'conversations' column) nor labeled "
                     f"records (no 'dataset'/'fe_label'/'au_labeled'); columns: {sorted(names)}")


def load_instructions(uri: str, fmt: str = "auto", *, tasks: Sequence[str] | None = None,
                      flt: Any = None) -> tuple[pa.Table, dict[str, Any]]:
    """Instruction rows (:data:`workflows.training.instructions.INSTRUCTION_SCHEMA`) from any data source.

    ``tasks`` applies where rows are built here (annotations, records, labeled); ``flt`` is the
    :class:`~workflows.training.instructions.PseudoLabelFilter` for annotate outputs."""
    import pandas as pd
    import pyarrow.parquet as pq

    from workflows.training import instructions as ins
    from workflows.training.datasets import load_labeled

    fmt = data_format(uri) if fmt == "auto" else fmt
    tasks = tuple(tasks or ins.DEFAULT_TASKS)
    if fmt == "instructions":
        table = ins.read_instructions(uri)
        return table, {"format": fmt, "source": uri, "n_rows": table.num_rows}
    if fmt == "annotations":
        built = ins.instructions_from_annotations(uri, flt=flt, tasks=tasks)
        return built.table, {"format": fmt, **built.report}
    if fmt == "records":
        files = storage.list_files(uri, suffixes=(".parquet",))
        frame = pd.concat([pq.read_table(io.BytesIO(storage.read_bytes(f))).to_pandas() for f in files],
                          ignore_index=True)
        built = ins.instructions_from_records(frame, tasks=tasks)
        return built.table, {"format": fmt, **built.report}
    if fmt == "labeled":
        name, path = uri.split(":", 1)
        parsed = load_labeled(name, path)
        built = ins.instructions_from_records(parsed, tasks=tasks)
        return built.table, {"format": fmt, "parse": parsed.report.to_dict(), **built.report}
    raise ValueError(f"unknown data format {fmt!r}; known: {', '.join(DATA_FORMATS)}")
