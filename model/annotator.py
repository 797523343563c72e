"""``FacialAnnotator``: what ``load_model`` returns and what the annotate pipeline calls.

``annotate(batch)`` always computes the calibrated face prior (cheap, numpy). The MLLM is
built only when it is needed - when ``prior_weight < 1`` (its likelihood scores are mixed
in) or when generation is on for some face - so the offline default scores thousands of
faces per second on CPU without loading an LLM.

Input: a face batch of B faces (fields, shapes and units in ``model/face_batch.py``, built by
its ``build_face_batch``). Returns ``fe_probs`` (B, 7) rows summing to 1, ``au_probs`` (B, 23)
in [0, 1] with NaN where the AU is unavailable, ``description`` list[str | None], and the
description parsed back: ``description_fe`` list[str | None] and ``description_aus``
list[list[str] | None].
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from model.config import GenerationConfig, ModelConfig
from model.face_batch import batch_rows, slice_batch
from model.model_dir import described_model_id
from model.prior import CalibratedFacePrior, PriorScores
from model.prompts import (
    anchored_opening,
    consistent_description,
    parse_description,
    prior_sentence,
    supporting_aus,
)
from model.taxonomy import FE_BASIC

if TYPE_CHECKING:
    from model.mllm import FacialMLLM


def _track_groups(keys: np.ndarray) -> list[np.ndarray]:
    """Row indices per track key, in order of first appearance."""
    _, first, inverse = np.unique(keys, return_index=True, return_inverse=True)
    order = np.argsort(first, kind="stable")
    return [np.flatnonzero(inverse == g) for g in order]


def segment_picks(group: np.ndarray, k: int) -> np.ndarray:
    """The rows of one track segment the LLM scores under ``scoring.faces_per_segment = k``:
    all of them for k <= 0, else k evenly spaced ones (first and last included)."""
    if k <= 0 or k >= len(group):
        return group
    return group[np.unique(np.linspace(0, len(group) - 1, k).round().astype(int))]


def _unit_hash(seed: int, key: int) -> float:
    h = hashlib.sha256(f"{seed}:{int(key)}".encode()).digest()
    return int.from_bytes(h[:8], "big") / 2.0 ** 64


def describe_cost(generation: GenerationConfig, batch_size: int) -> str:
    """What ``generation`` costs, in LLM decodes (which rows :meth:`FacialAnnotator.generation_rows`
    picks), to state before a run: a decode runs token by token and dwarfs scoring on CPU."""
    decodes = f"one LLM decode of up to {generation.max_new_tokens} new tokens"
    if generation.mode == "all":
        return f"{decodes} for every face"
    share = f" of about {generation.fraction:.0%} of the tracks" if generation.mode == "fraction" else ""
    return (f"{decodes} for each track{share} in every batch of {batch_size} faces (model.batch_size; a track "
            "spread over k batches gets k)")


class FacialAnnotator:
    """A loaded model: ``model_id``, ``config`` (a :class:`ModelConfig`; ``config.generation``
    switches descriptions on), ``annotate(batch)``, and the MLLM underneath (``mllm``)."""

    def __init__(self, config: ModelConfig, model_id: str, device: str = "cpu",
                 build: Callable[[], FacialMLLM] | None = None, mllm: FacialMLLM | None = None,
                 manifest: Mapping[str, Any] | None = None):
        self.config = config
        self.base_model_id = model_id
        self.device = device
        self.manifest = dict(manifest or {})
        self._build = build
        self._mllm = mllm
        self._lock = threading.Lock()

    @classmethod
    def from_mllm(cls, mllm: FacialMLLM, model_id: str | None = None) -> FacialAnnotator:
        """Wrap a model built (or trained) in this process."""
        cfg = mllm.cfg
        return cls(cfg, model_id or f"{cfg.name}-{cfg.version}+unsaved", str(mllm.device), mllm=mllm)

    @property
    def model_id(self) -> str:
        """The id written with every output row: the model's own id (``base_model_id``, from its
        architecture and weights), plus the description settings while generation is on
        (``+describe:per_track/32tok``), so outputs with and without descriptions differ."""
        return described_model_id(self.base_model_id, self.config.generation)

    # ------------------------------------------------------------------ the MLLM
    @property
    def llm_loaded(self) -> bool:
        return self._mllm is not None

    @property
    def mllm(self) -> FacialMLLM:
        """The MLLM, built (and its trained parts loaded) on first access."""
        if self._mllm is None:
            with self._lock:
                if self._mllm is None:
                    if self._build is None:
                        raise RuntimeError("this annotator has no MLLM and no way to build one")
                    self._mllm = self._build()
        return self._mllm

    def component_sha(self, name: str) -> str:
        """sha256 of base component ``name`` (from the manifest, or computed from its source)."""
        meta = self.manifest.get("components", {}).get(name)
        if meta and meta.get("sha256"):
            return meta["sha256"]
        from model.model_dir import materialize, tree_sha256

        source = getattr(self.config, name).source
        return tree_sha256(materialize(source)) if source else ""

    # ------------------------------------------------------------------ annotate
    def score_prior(self, batch: Mapping[str, Any]) -> PriorScores:
        """The calibrated face prior alone: (B, 7) FE and (B, 23) AU probabilities."""
        rows = batch_rows(batch)
        return CalibratedFacePrior(self.config.prior)(batch.get("fe_prior"), batch.get("au_evidence"), rows)

    def generation_rows(self, batch: Mapping[str, Any]) -> list[int]:
        """Rows that get a description under ``config.generation`` (empty when it is off)."""
        g = self.config.generation
        if not g.enabled:
            return []
        rows = batch_rows(batch)
        if g.mode == "all":
            return list(range(rows))
        keys = batch.get("track_key")
        keys = np.arange(rows) if keys is None else np.asarray(keys).reshape(-1)
        chosen = []
        for group in _track_groups(keys):
            if g.mode == "fraction" and _unit_hash(g.seed, keys[group[0]]) >= g.fraction:
                continue
            chosen.append(int(group[len(group) // 2]))
        return sorted(chosen)

    def annotate(self, batch: Mapping[str, Any], au_threshold: float = 0.5) -> dict[str, Any]:
        """FE/AU probabilities (and opt-in descriptions) for the B faces of ``batch``.

        ``au_threshold``: the probability from which the caller counts an AU active (a run's
        ``model.au_threshold``, what its ``au_active`` uses); a description states an AU as active
        only from there, so it never contradicts the ``au_active`` written beside it."""
        cfg = self.config
        rows = batch_rows(batch)
        prior = self.score_prior(batch)
        fe = prior.fe_probs.astype(np.float64)
        au = prior.au_probs.astype(np.float64)
        if cfg.uses_llm_for_scores and rows:
            fe_llm, au_llm = self._llm_scores(batch, prior)
            w = cfg.prior_weight
            fe = w * fe + (1 - w) * fe_llm
            if au_llm is not None:
                au = np.where(np.isnan(au), au_llm, w * au + (1 - w) * au_llm)
        fe = fe / fe.sum(axis=1, keepdims=True)
        descriptions: list[str | None] = [None] * rows
        gen = self.generation_rows(batch)
        if gen:
            # The description states the final scores: the question gives them, an anchored answer
            # starts with them, and what the LLM adds that contradicts them is dropped.
            labels = [FE_BASIC[int(np.argmax(fe[i]))] for i in gen]
            readings = [prior_sentence(fe[i], au[i]) for i in gen]
            openings = None
            if cfg.generation.anchor_label:
                openings = [anchored_opening(lb, supporting_aus(lb, au[i], au_threshold))
                            for lb, i in zip(labels, gen, strict=True)]
            texts = self._describe(batch, prior, gen, openings, readings)
            for j, (i, text) in enumerate(zip(gen, texts, strict=True)):
                descriptions[i] = consistent_description(text, labels[j], au[i], au_threshold,
                                                         opening=openings[j] if openings else "")
        parsed = [parse_description(d) if d else None for d in descriptions]
        return {
            "fe_probs": fe.astype(np.float32),
            "au_probs": np.clip(au, 0.0, 1.0).astype(np.float32),
            "description": descriptions,
            "description_fe": [p.fe_label if p else None for p in parsed],
            "description_aus": [list(p.aus) if p else None for p in parsed],
        }

    def _llm_scores(self, batch: Mapping[str, Any], prior: PriorScores) -> tuple[np.ndarray, np.ndarray | None]:
        mllm = self.mllm
        rows = batch_rows(batch)
        keys = batch.get("track_key")
        keys = np.arange(rows) if keys is None else np.asarray(keys).reshape(-1)
        groups = _track_groups(keys)
        k = mllm.cfg.scoring.faces_per_segment
        # The faces the LLM sees: all, or k evenly spaced ones per track segment.
        picks = [segment_picks(g, k) for g in groups]
        chunks: list[list[int]] = [[]]
        for group in picks:  # micro-batches of whole track segments where possible
            for r in group.tolist():
                if len(chunks[-1]) >= mllm.cfg.scoring.micro_batch:
                    chunks.append([])
                chunks[-1].append(r)
        fe = np.zeros((rows, len(FE_BASIC)))
        au: np.ndarray | None = None
        classes = mllm.cfg.prompt.fe_classes
        cols = [FE_BASIC.index(c) if c in FE_BASIC else -1 for c in classes]
        for chunk in chunks:
            idx = np.asarray(chunk)
            sub_prior = PriorScores(prior.fe_probs[idx], prior.au_probs[idx])
            scores = mllm.score(mllm.face_inputs(slice_batch(batch, idx), sub_prior))
            p = np.exp(scores.fe_logprobs.double().cpu().numpy())
            p = p / p.sum(axis=1, keepdims=True)
            block = np.zeros((len(idx), len(FE_BASIC)))
            for j, c in enumerate(cols):
                if c >= 0:
                    block[:, c] = p[:, j]
            fe[idx] = block / np.clip(block.sum(axis=1, keepdims=True), 1e-12, None)
            if scores.au_yes is not None:
                if au is None:
                    au = np.full((rows, prior.au_probs.shape[1]), np.nan)
                au[idx] = scores.au_yes.double().cpu().numpy()
        if k > 0:  # share each segment's LLM scores with its unscored faces
            for group, pick in zip(groups, picks, strict=True):
                if len(pick) == len(group):
                    continue
                m = fe[pick].mean(axis=0)
                fe[group] = m / max(float(m.sum()), 1e-12)
                if au is not None:
                    au[group] = au[pick].mean(axis=0)
        return fe, au

    def _describe(self, batch: Mapping[str, Any], prior: PriorScores, rows: list[int],
                  openings: list[str] | None, readings: list[str]) -> list[str]:
        mllm = self.mllm
        needed = set(rows)
        if mllm.cfg.clip.frames and batch.get("track_key") is not None:
            keys = np.asarray(batch["track_key"]).reshape(-1)
            from model.video import clip_indices

            clip = clip_indices(keys, mllm.cfg.clip.frames)
            for r in rows:
                needed.update(int(x) for x in clip[r])
        idx = np.asarray(sorted(needed))
        where = {int(r): i for i, r in enumerate(idx)}
        sub_prior = PriorScores(prior.fe_probs[idx], prior.au_probs[idx])
        faces = mllm.face_inputs(slice_batch(batch, idx), sub_prior)
        out: list[str] = []
        step = mllm.cfg.scoring.micro_batch
        targets = [where[r] for r in rows]
        for s in range(0, len(targets), step):
            out.extend(mllm.generate(faces, rows=targets[s:s + step],
                                     openings=None if openings is None else openings[s:s + step],
                                     readings=readings[s:s + step]))
        return out
