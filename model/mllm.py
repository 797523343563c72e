"""The facial MLLM: face tokens + prompt -> an HF causal LM; scoring, generation, training loss.

Sequence layout (see ``model/prompts.py``)::

    [BOS system USER: <face>] [face tokens | </face> attributes + prior text] [question ASSISTANT:] [answer]
     shared by the batch       one per face                                   one per query

Scoring runs the shared prefix once, each face once, then all of a face's questions (the
FE category question and one yes/no question per AU) against that face's cached keys and
values. FE probabilities come from the likelihood of every class answer, AU probabilities
from P(yes) / (P(yes) + P(no)). Nothing is parsed from free text, so scores always exist.

Training (``collate`` -> ``forward``) uses the same layout with the answer tokens as the
only labels.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from model import prompts
from model.config import ModelConfig
from model.face_batch import batch_rows, build_face_batch
from model.face_prior import FacePriorEncoder, prior_arrays
from model.fim import FaceInfoMining
from model.prior import CalibratedFacePrior, PriorScores
from model.taxonomy import AU_NAMES
from model.video import FrameCompressor, clip_indices
from model.vision import VisionTower


@dataclasses.dataclass
class FaceInputs:
    """Model inputs for B faces. ``crops``: (B, S, S, 3) uint8 or None; ``prior``: group ->
    (B, D) float with NaN; ``clip_index``: (B, K) rows of each face's clip frames or None;
    ``context_ids``: per face, the token ids that follow its visual tokens."""

    crops: torch.Tensor | None
    prior: dict[str, torch.Tensor]
    clip_index: torch.Tensor | None
    context_ids: list[list[int]]

    @property
    def rows(self) -> int:
        return len(self.context_ids)

    def to(self, device: str | torch.device) -> FaceInputs:
        return FaceInputs(
            crops=None if self.crops is None else self.crops.to(device),
            prior={k: v.to(device) for k, v in self.prior.items()},
            clip_index=None if self.clip_index is None else self.clip_index.to(device),
            context_ids=self.context_ids)


@dataclasses.dataclass
class TrainBatch:
    """A collated training batch: faces plus question and answer token ids per row."""

    faces: FaceInputs
    question_ids: list[list[int]]
    answer_ids: list[list[int]]

    def to(self, device: str | torch.device) -> TrainBatch:
        return TrainBatch(self.faces.to(device), self.question_ids, self.answer_ids)


@dataclasses.dataclass
class LLMScores:
    """``fe_logprobs`` (B, C): log-likelihood of each class answer, C = ``prompt.fe_classes``;
    ``au_yes`` (B, 23): P(yes) among {yes, no} per AU, or None when AU scoring is off."""

    fe_logprobs: torch.Tensor
    au_yes: torch.Tensor | None


def _left_pad(seqs: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """List of (L_i, d) -> (B, L, d) left-padded with zeros, and a (B, L) long mask."""
    length = max(s.shape[0] for s in seqs)
    ref = seqs[0]
    out = ref.new_zeros(len(seqs), length, ref.shape[-1])
    mask = torch.zeros(len(seqs), length, dtype=torch.long, device=ref.device)
    for i, s in enumerate(seqs):
        if s.shape[0]:
            out[i, length - s.shape[0]:] = s
            mask[i, length - s.shape[0]:] = 1
    return out, mask


def _positions(mask: torch.Tensor, start: torch.Tensor | int = 0) -> torch.Tensor:
    """Position ids that count only real tokens, continuing from ``start`` (B,) or int."""
    pos = (mask.cumsum(dim=1) - 1).clamp(min=0)
    if isinstance(start, torch.Tensor):
        return pos + start.view(-1, 1)
    return pos + start


class FacialMLLM(nn.Module):
    """Vision tower + face-prior encoder + Face Info Mining + frame compressor + causal LM."""

    def __init__(self, cfg: ModelConfig, llm: nn.Module, tokenizer: Any, vision: VisionTower | None = None,
                 face_prior: FacePriorEncoder | None = None, fim: FaceInfoMining | None = None,
                 frames: FrameCompressor | None = None):
        super().__init__()
        self.cfg = cfg
        self.llm = llm
        self.tokenizer = tokenizer
        self.vision = vision
        self.face_prior = face_prior
        self.fim = fim
        self.frames = frames
        self.prior = CalibratedFacePrior(cfg.prior)
        self.llm_dim: int = llm.get_input_embeddings().embedding_dim
        self._candidates = [self.ids(prompts.answer_text(c)) for c in cfg.prompt.fe_classes]
        self._yes = self.ids(prompts.answer_text(prompts.YES))[0]
        self._no = self.ids(prompts.answer_text(prompts.NO))[0]
        self._newline_token = bool(self.ids("\n"))
        if self._yes == self._no:
            raise ValueError("the tokenizer maps ' yes' and ' no' to the same first token; AU scoring needs them apart")

    # ------------------------------------------------------------------ basics
    @property
    def device(self) -> torch.device:
        return self.llm.get_input_embeddings().weight.device

    @property
    def llm_dtype(self) -> torch.dtype:
        return self.llm.get_input_embeddings().weight.dtype

    def train(self, mode: bool = True) -> FacialMLLM:
        """Like ``nn.Module.train``, but a frozen vision tower stays in eval mode (no dropout)."""
        super().train(mode)
        if self.vision is not None and not self.cfg.vision.trainable:
            self.vision.eval()
        return self

    def trainable_parameters(self) -> Iterator[tuple[str, nn.Parameter]]:
        """``(name, parameter)`` of every parameter an optimizer should update."""
        return ((n, p) for n, p in self.named_parameters() if p.requires_grad)

    @functools.lru_cache(maxsize=4096)  # noqa: B019 - the model lives as long as its cache should
    def _ids_cached(self, text: str) -> tuple[int, ...]:
        return tuple(self.tokenizer(text, add_special_tokens=False).input_ids)

    def ids(self, text: str) -> list[int]:
        """Token ids of ``text`` without special tokens."""
        return list(self._ids_cached(text))

    def embed(self, ids: Sequence[int] | torch.Tensor) -> torch.Tensor:
        """(L,) ids -> (L, d_llm) input embeddings (including any model-specific scaling)."""
        t = torch.as_tensor(ids, dtype=torch.long, device=self.device)
        return self.llm.get_input_embeddings()(t)

    def prefix_ids(self, generation: bool = False) -> list[int]:
        """The shared prefix: BOS, system text, (few-shot examples,) ``USER: <face>``."""
        bos = [self.tokenizer.bos_token_id] if self.tokenizer.bos_token_id is not None else []
        text = f"{self.cfg.prompt.system}\n"
        if generation and self.cfg.generation.few_shot:
            text += prompts.few_shot_block()
        return bos + self.ids(text + f"{prompts.USER} ") + self.ids(prompts.FACE_OPEN)

    # ------------------------------------------------------------------ inputs
    def face_inputs(self, batch: Mapping[str, Any], prior: PriorScores | None = None) -> FaceInputs:
        """Tensors for the faces of a face ``batch`` (fields in ``model/face_batch.py``)."""
        rows = batch_rows(batch)
        if prior is None:
            prior = self.prior(batch.get("fe_prior"), batch.get("au_evidence"), rows)
        ages = np.asarray(batch["age"], dtype=np.float32).reshape(-1) if batch.get("age") is not None else None
        genders = batch.get("gender")
        races = batch.get("race")
        p = self.cfg.prompt
        contexts = []
        for i in range(rows):
            face = prompts.FaceText(
                age=None if ages is None else float(ages[i]),
                gender=None if genders is None else genders[i],
                race=None if races is None else races[i],
                fe_prior=prior.fe_probs[i], au_prior=prior.au_probs[i])
            text = prompts.FACE_CLOSE + prompts.face_context(face, p.attributes, p.prior_as_text, p.race,
                                                             p.prior_top_aus)
            contexts.append(self.ids(text))
        crops = None
        if batch.get("crop") is not None and (self.vision is not None or
                                              (self.fim is not None and self.fim.local_clue is not None)):
            crops = torch.as_tensor(np.ascontiguousarray(batch["crop"]), dtype=torch.uint8)
        feats = {}
        if self.face_prior is not None:
            feats = {k: torch.from_numpy(v) for k, v in prior_arrays(batch, self.face_prior.names, rows).items()}
        clip = None
        if self.cfg.clip.frames and self.frames is not None:
            keys = batch.get("track_key")
            keys = np.arange(rows) if keys is None else np.asarray(keys)
            clip = torch.from_numpy(clip_indices(keys, self.cfg.clip.frames))
        return FaceInputs(crops=crops, prior=feats, clip_index=clip, context_ids=contexts).to(self.device)

    def _pixels_for_local_clue(self, crops: torch.Tensor) -> torch.Tensor:
        x = crops.permute(0, 3, 1, 2).float().div(255.0)
        return (x - 0.5) / 0.5

    def encode_faces(self, faces: FaceInputs) -> torch.Tensor:
        """(B, T, d_llm) face tokens in the LLM's dtype: [clip tokens][patches][local][prior]."""
        b = faces.rows
        vis = pixels = None
        if faces.crops is not None:
            if self.vision is not None:
                pixels = self.vision.preprocess(faces.crops)
                vis = self.vision(pixels)
            elif self.fim is not None and self.fim.local_clue is not None:
                pixels = self._pixels_for_local_clue(faces.crops)
        elif self.vision is not None:
            raise ValueError("this model has a vision tower: the batch needs 'crop' (B, S, S, 3) uint8")
        prior_tokens = present = None
        if self.face_prior is not None:
            prior_tokens, present = self.face_prior(faces.prior)
        if self.fim is None:
            return self.embed([]).new_zeros(b, 0, self.llm_dim)
        tokens = self.fim(vis, pixels, prior_tokens, present, b)
        out = tokens.all()
        if self.frames is not None and faces.clip_index is not None and tokens.patches is not None:
            per_frame = self.frames(tokens.patches)  # (B, 2, d)
            clip = per_frame[faces.clip_index]  # (B, K, 2, d)
            out = torch.cat([clip.flatten(1, 2), out], dim=1)
        return out.to(self.llm_dtype)

    def _face_segments(self, faces: FaceInputs, rows: Sequence[int] | None = None) -> list[torch.Tensor]:
        """Per face (or per face in ``rows``): (T + L_i, d) = face tokens, then the context text."""
        vis = self.encode_faces(faces)
        rows = range(faces.rows) if rows is None else rows
        return [torch.cat([vis[i], self.embed(faces.context_ids[i])], dim=0) for i in rows]

    # ------------------------------------------------------------------ LLM calls
    def _run(self, embeds: torch.Tensor, mask: torch.Tensor, pos: torch.Tensor, cache: Any = None,
             keep: int | torch.Tensor = 1) -> tuple[torch.Tensor, Any]:
        out = self.llm(inputs_embeds=embeds, attention_mask=mask, position_ids=pos, past_key_values=cache,
                       use_cache=True, logits_to_keep=keep)
        return out.logits.float(), out.past_key_values

    def _cache(self, kv: list[tuple[torch.Tensor, torch.Tensor]], repeat: int = 1, expand: int = 0) -> Any:
        from transformers import DynamicCache

        data = []
        for k, v in kv:
            if expand:
                k, v = k.expand(expand, -1, -1, -1), v.expand(expand, -1, -1, -1)
            elif repeat > 1:
                k, v = k.repeat_interleave(repeat, dim=0), v.repeat_interleave(repeat, dim=0)
            data.append((k, v))
        return DynamicCache(ddp_cache_data=data, config=self.llm.config)

    @staticmethod
    def _kv(cache: Any) -> list[tuple[torch.Tensor, torch.Tensor]]:
        return [(layer.keys, layer.values) for layer in cache.layers]

    def _queries(self) -> list[list[int]]:
        qs = [self.ids(prompts.fe_question(self.cfg.prompt.fe_classes))]
        if self.cfg.scoring.au:
            qs += [self.ids(prompts.au_question(a)) for a in AU_NAMES]
        return qs

    def _shortcut_ok(self) -> bool:
        firsts = [c[0] for c in self._candidates]
        return (self.cfg.scoring.first_token_shortcut and all(len(c) == 1 for c in self._candidates)
                and len(set(firsts)) == len(firsts))

    # ------------------------------------------------------------------ scoring
    @torch.no_grad()
    def score(self, faces: FaceInputs, reuse_prefix: bool | None = None) -> LLMScores:
        """Likelihood scores for B faces; ``reuse_prefix`` defaults to ``scoring.reuse_prefix``.

        With reuse: prefix once (batch 1), each face once (batch B), then the questions
        against the cached keys/values. Without: every (face, question) pair is a full
        forward pass. Both give the same numbers up to float rounding."""
        reuse = self.cfg.scoring.reuse_prefix if reuse_prefix is None else reuse_prefix
        segments = self._face_segments(faces)
        prefix = self.embed(self.prefix_ids())
        queries = self._queries()
        if reuse:
            return self._score_cached(prefix, segments, queries)
        return self._score_full(prefix, segments, queries)

    def _fe_scores(self, last_logits: torch.Tensor, extra: torch.Tensor | None) -> torch.Tensor:
        logp = torch.log_softmax(last_logits, dim=-1)
        first = torch.tensor([c[0] for c in self._candidates], device=logp.device)
        out = logp[:, first]
        return out if extra is None else out + extra

    def _au_scores(self, logits: torch.Tensor) -> torch.Tensor:
        """P(yes) / (P(yes) + P(no)) from (..., V) next-token logits."""
        pair = logits[..., [self._yes, self._no]]
        return torch.softmax(pair, dim=-1)[..., 0]

    def _kv_bytes_per_token(self, kv: list[tuple[torch.Tensor, torch.Tensor]]) -> int:
        k, _ = kv[0]
        per_layer = 2 * k.shape[1] * k.shape[3] * k.element_size()
        return per_layer * len(kv)

    def _score_cached(self, prefix: torch.Tensor, segments: list[torch.Tensor],
                      queries: list[list[int]]) -> LLMScores:
        b = len(segments)
        dev = prefix.device
        la = prefix.shape[0]
        _, cache = self._run(prefix[None], torch.ones(1, la, dtype=torch.long, device=dev),
                             torch.arange(la, device=dev)[None])
        kv_prefix = self._kv(cache)
        face, fmask = _left_pad(segments)
        n_face = fmask.sum(1)
        mask_ab = torch.cat([torch.ones(b, la, dtype=torch.long, device=dev), fmask], dim=1)
        last, cache = self._run(face, mask_ab, _positions(fmask, la), self._cache(kv_prefix, expand=b))
        kv_face = self._kv(cache)
        ctx_len = mask_ab.shape[1]
        n_ctx = n_face + la

        if self._tree_ok():
            # Every question in one forward: each attends to the cached face and to itself.
            shortcut = self._shortcut_ok()
            logits = self._tree_questions(kv_face, mask_ab, n_ctx, queries if shortcut else queries[1:])
            if shortcut:
                fe, au_logits = self._fe_scores(logits[:, 0], None), logits[:, 1:]
            else:
                fe, au_logits = self._fe_question(kv_face, mask_ab, n_ctx, queries[0]), logits
            au = self._au_scores(au_logits) if au_logits.shape[1] else None
            return LLMScores(fe_logprobs=fe, au_yes=au)

        fe = self._fe_question(kv_face, mask_ab, n_ctx, queries[0])
        if len(queries) == 1:
            return LLMScores(fe_logprobs=fe, au_yes=None)
        # AU questions: chunks of questions side by side, the face cache repeated per question.
        au_q = queries[1:]
        per_tok = self._kv_bytes_per_token(kv_face)
        longest = ctx_len + max(len(q) for q in au_q)
        chunk = max(1, min(len(au_q), (self.cfg.scoring.kv_budget_mb << 20) // max(1, b * longest * per_tok)))
        yes = []
        for s in range(0, len(au_q), chunk):
            group = au_q[s:s + chunk]
            qc = len(group)
            g_emb, g_mask = _left_pad([self.embed(q) for q in group])
            emb = g_emb.repeat(b, 1, 1)
            qm = g_mask.repeat(b, 1)
            mask = torch.cat([mask_ab.repeat_interleave(qc, dim=0), qm], dim=1)
            pos = _positions(qm, n_ctx.repeat_interleave(qc))
            last, _ = self._run(emb, mask, pos, self._cache(kv_face, repeat=qc))
            yes.append(self._au_scores(last[:, -1]).view(b, qc))
        return LLMScores(fe_logprobs=fe, au_yes=torch.cat(yes, dim=1))

    def _fe_question(self, kv_face: list[tuple[torch.Tensor, torch.Tensor]], mask_ab: torch.Tensor,
                     n_ctx: torch.Tensor, q_fe: list[int]) -> torch.Tensor:
        """(B, C) class log-likelihoods after the FE question (cache reused as is: an update
        concatenates into new tensors and leaves ``kv_face`` untouched)."""
        b, dev = mask_ab.shape[0], mask_ab.device
        q_emb = self.embed(q_fe)[None].expand(b, -1, -1)
        q_mask = torch.ones(b, len(q_fe), dtype=torch.long, device=dev)
        mask_q = torch.cat([mask_ab, q_mask], dim=1)
        last, cache = self._run(q_emb, mask_q, _positions(q_mask, n_ctx), self._cache(kv_face))
        extra = None
        if not self._shortcut_ok():
            extra = self._continuations_cached(self._kv(cache), mask_q, n_ctx + len(q_fe))
        return self._fe_scores(last[:, -1], extra)

    def _tree_ok(self) -> bool:
        impl = getattr(self.llm.config, "_attn_implementation", None)
        if impl not in ("sdpa", "eager"):  # other kernels take no arbitrary 4D mask
            return False
        wanted = self.cfg.scoring.tree_attention
        return self.llm_dim >= 512 if wanted is None else wanted

    def _tree_questions(self, kv: list[tuple[torch.Tensor, torch.Tensor]], ctx_mask: torch.Tensor,
                        n_ctx: torch.Tensor, questions: list[list[int]]) -> torch.Tensor:
        """(B, Q, V) next-token logits at the end of each question, all Q questions in one
        forward pass over the cached context: a block-diagonal causal 4D mask keeps them apart
        and each question's positions restart after the face (no cache copies)."""
        b, c = ctx_mask.shape
        dev = ctx_mask.device
        total = sum(len(q) for q in questions)
        emb = self.embed([t for q in questions for t in q])[None].expand(b, -1, -1)
        allowed = torch.zeros(b, total, c + total, dtype=torch.bool, device=dev)
        allowed[:, :, :c] = ctx_mask.bool()[:, None, :]
        pos, ends, s = [], [], 0
        for q in questions:
            n = len(q)
            allowed[:, s:s + n, c + s:c + s + n] = torch.ones(n, n, dtype=torch.bool, device=dev).tril()
            pos.append(torch.arange(n, device=dev))
            s += n
            ends.append(s - 1)
        dtype = self.llm_dtype
        mask = torch.zeros(b, 1, total, c + total, dtype=dtype, device=dev)
        mask.masked_fill_(~allowed[:, None], torch.finfo(dtype).min)
        positions = torch.cat(pos)[None] + n_ctx[:, None]
        logits, _ = self._run(emb, mask, positions, self._cache(kv), keep=torch.tensor(ends, device=dev))
        return logits

    def _continuations_cached(self, kv: list[tuple[torch.Tensor, torch.Tensor]], mask: torch.Tensor,
                              n_ctx: torch.Tensor) -> torch.Tensor:
        """Log-probability of tokens 2..n of every class answer after a cached context: (B, C)."""
        b, c = mask.shape[0], len(self._candidates)
        tails = [cand[:-1] for cand in self._candidates]  # inputs that predict tokens 2..n
        if all(len(t) == 0 for t in tails):
            return torch.zeros(b, c, device=mask.device)
        lengths = [len(t) for t in tails]
        width = max(lengths)
        ids = torch.full((c, width), self.tokenizer.pad_token_id or 0, dtype=torch.long, device=mask.device)
        cmask = torch.zeros(c, width, dtype=torch.long, device=mask.device)
        for j, t in enumerate(tails):
            if t:
                ids[j, width - len(t):] = torch.tensor(t)
                cmask[j, width - len(t):] = 1
        emb = self.embed(ids.view(-1)).view(c, width, -1).repeat(b, 1, 1)
        cm = cmask.repeat(b, 1)
        full_mask = torch.cat([mask.repeat_interleave(c, dim=0), cm], dim=1)
        logits, _ = self._run(emb, full_mask, _positions(cm, n_ctx.repeat_interleave(c)),
                              self._cache(kv, repeat=c), keep=width)
        logp = torch.log_softmax(logits, dim=-1).view(b, c, width, -1)
        out = torch.zeros(b, c, device=mask.device)
        for j, cand in enumerate(self._candidates):
            for t in range(1, len(cand)):
                # the t-th answer token is predicted at the position of tail token t-1
                pos = width - len(tails[j]) + (t - 1)
                out[:, j] += logp[:, j, pos, cand[t]]
        return out

    def _score_full(self, prefix: torch.Tensor, segments: list[torch.Tensor],
                    queries: list[list[int]]) -> LLMScores:
        contexts = [torch.cat([prefix, s], dim=0) for s in segments]
        results = []
        for qi, q in enumerate(queries):
            q_emb = self.embed(q)
            seqs = [torch.cat([c, q_emb], dim=0) for c in contexts]
            if qi == 0 and not self._shortcut_ok():
                results.append(self._continuations_full(seqs))
                continue
            emb, mask = _left_pad(seqs)
            last, _ = self._run(emb, mask, _positions(mask))
            results.append(self._fe_scores(last[:, -1], None) if qi == 0 else self._au_scores(last[:, -1]))
        au = torch.stack(results[1:], dim=1) if len(results) > 1 else None
        return LLMScores(fe_logprobs=results[0], au_yes=au)

    def _continuations_full(self, contexts: list[torch.Tensor]) -> torch.Tensor:
        """(B, C) summed log-probabilities of every class answer after full contexts."""
        b, c = len(contexts), len(self._candidates)
        seqs, lengths = [], []
        for ctx in contexts:
            for cand in self._candidates:
                seqs.append(torch.cat([ctx, self.embed(cand)], dim=0))
                lengths.append(len(cand))
        emb, mask = _left_pad(seqs)
        width = max(lengths)
        logits, _ = self._run(emb, mask, _positions(mask), keep=width + 1)
        logp = torch.log_softmax(logits, dim=-1)
        out = torch.zeros(b * c, device=emb.device)
        for r in range(b * c):
            cand = self._candidates[r % c]
            n = len(cand)
            for t in range(n):
                # answer token t sits at -(n - t); it is predicted one position earlier
                out[r] += logp[r, width - n + t, cand[t]]
        return out.view(b, c)

    # ------------------------------------------------------------------ generation
    @torch.no_grad()
    def generate(self, faces: FaceInputs, rows: Sequence[int] | None = None, openings: Sequence[str] | None = None,
                 max_new_tokens: int | None = None, seed: int | None = None,
                 readings: Sequence[str] | None = None) -> list[str]:
        """A free-text description (FE<->AU reasoning) per face, or per face in ``rows`` (the
        other faces only supply clip frames); greedy unless ``generation.temperature`` > 0.

        ``openings``: per described face, text the answer is forced to start with (e.g.
        ``"The person shows happiness"``); it is part of the returned description. ``readings``:
        per described face, the scores in words, stated in the question
        (``prompts.describe_question``)."""
        g = self.cfg.generation
        prefix = self.embed(self.prefix_ids(generation=True))
        segments = self._face_segments(faces, rows)
        questions = [self.embed(self.ids(prompts.describe_question(r))) for r in (readings or [""] * len(segments))]
        opening_ids = [self.ids(prompts.answer_text(o)) if o else [] for o in (openings or [""] * len(segments))]
        seqs = [torch.cat([prefix, s, q, self.embed(o)], dim=0)
                for s, q, o in zip(segments, questions, opening_ids, strict=True)]
        emb, mask = _left_pad(seqs)
        kwargs: dict[str, Any] = dict(max_new_tokens=max_new_tokens or g.max_new_tokens,
                                      pad_token_id=self.tokenizer.pad_token_id,
                                      eos_token_id=self.tokenizer.eos_token_id)
        if g.temperature > 0:
            kwargs.update(do_sample=True, temperature=g.temperature, top_p=g.top_p)
        else:
            kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        if self._newline_token:  # stop at the end of the answer line
            kwargs.update(stop_strings=["\n"], tokenizer=self.tokenizer)
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            torch.manual_seed(g.seed if seed is None else seed)
            out = self.llm.generate(inputs_embeds=emb, attention_mask=mask, **kwargs)
        texts = self.tokenizer.batch_decode(out, skip_special_tokens=True)
        opened = [(o + t if (t[:1].isspace() or t[:1] in ",.:;") else f"{o} {t}") if o else t
                  for o, t in zip(openings or [""] * len(texts), texts, strict=True)]
        return [_clean_generation(t) for t in opened]

    # ------------------------------------------------------------------ training
    def collate(self, rows: Sequence[Mapping[str, Any]]) -> TrainBatch:
        """Rows -> :class:`TrainBatch`. A row is one face as ``model.face_batch.build_face_batch``
        takes it (``crop`` (S, S, 3) uint8, ``au_evidence`` (23,), ``fe_prior`` (7,),
        ``blendshapes`` (52,), ``pose`` (3,), ``age``, ``gender``, ...) plus ``question`` (a prompt
        from ``model.prompts``, ending with ``ASSISTANT:``) and ``answer`` (the target text)."""
        batch = build_face_batch(rows)
        faces = self.face_inputs(batch)
        eos = [self.tokenizer.eos_token_id] if self.tokenizer.eos_token_id is not None else []
        return TrainBatch(faces=faces,
                          question_ids=[self.ids(r["question"]) for r in rows],
                          answer_ids=[self.ids(prompts.answer_text(r["answer"])) + eos for r in rows])

    def forward(self, batch: TrainBatch) -> Any:
        """Causal-LM output whose ``loss`` covers the answer tokens only (mean over them)."""
        prefix = self.embed(self.prefix_ids())
        segments = self._face_segments(batch.faces)
        seqs, labels = [], []
        for seg, q, a in zip(segments, batch.question_ids, batch.answer_ids, strict=True):
            seq = torch.cat([prefix, seg, self.embed(q), self.embed(a)], dim=0)
            lab = torch.full((seq.shape[0],), -100, dtype=torch.long, device=seq.device)
            lab[seq.shape[0] - len(a):] = torch.as_tensor(a, device=seq.device)
            seqs.append(seq)
            labels.append(lab)
        length = max(s.shape[0] for s in seqs)
        emb = seqs[0].new_zeros(len(seqs), length, seqs[0].shape[-1])
        mask = torch.zeros(len(seqs), length, dtype=torch.long, device=emb.device)
        lab = torch.full((len(seqs), length), -100, dtype=torch.long, device=emb.device)
        for i, (s, lb) in enumerate(zip(seqs, labels, strict=True)):  # right padding for training
            emb[i, :s.shape[0]] = s
            mask[i, :s.shape[0]] = 1
            lab[i, :s.shape[0]] = lb
        return self.llm(inputs_embeds=emb, attention_mask=mask, labels=lab)

    # ------------------------------------------------------------------ parts
    def part_modules(self) -> dict[str, nn.Module]:
        """Trainable non-LLM parts saved as safetensors (name -> module)."""
        parts: dict[str, nn.Module] = {}
        if self.face_prior is not None:
            parts["face_prior"] = self.face_prior
        if self.fim is not None:
            parts["fim"] = self.fim
        if self.frames is not None:
            parts["frames"] = self.frames
        return parts


def _clean_generation(text: str) -> str:
    for stop in (f"\n{prompts.USER}", prompts.USER, "\n\n"):
        text = text.split(stop, 1)[0]
    return text.strip()

