"""A pretrained Hugging Face VLM as mien's facial MLLM: the same scoring and generation interface as
:class:`model.mllm.FacialMLLM` (``face_inputs``, ``score``, ``generate``), so
:class:`model.annotator.FacialAnnotator` and the annotate pipeline run it unchanged.

Per face the prompt is one user turn of the checkpoint's own chat template: the face crop as the
image, then mien's system text, the EMO-LLaMA attribute sentence and the face prior as text
(``model.prompts.face_context``), then a question; the assistant's answer is scored.

Scoring (``scoring.reuse_prefix``, default on): the B faces' prefixes (image + context, everything
before the question) are encoded once in one batched prefill; the FE question of every face, then the
AU questions, run against those cached keys/values in one batched forward each (the cache repeated
per question; two passes so that the short AU questions are not padded to the long FE question).
Without reuse, every (face, question) pair is a full forward pass over image + context + question
(the same two passes); both give the same numbers up to float rounding (tests hold them within 1e-4
for every family). Logits are computed only at the positions an answer is read (``logits_to_keep``):
none in the prefill.
FE probabilities come from the likelihood of each class answer, AU probabilities from the yes/no
likelihood of one question per AU. When every answer of a question is a single token with a
distinct id, the question needs one sequence (the answers are read off its last position);
otherwise each answer is its own sequence and its token log-probabilities are summed.

Face-prior tokens (``vlm.prior_tokens`` = N > 0, EMO-LLaMA's prior tokens for a VLM): N placeholder
tokens (ordinary text tokens, so Qwen's M-RoPE positions stay right) are inserted into every prefill
right after the image, and a forward hook on the VLM's input embedding replaces their embeddings by
:class:`FacePriorTokens` of the face's measurements (the face-prior encoder and the prior Q-Former of
``model.fim``); the VLM merges the image features as usual. Cached and uncached scores still agree.

Training (``collate`` -> ``forward`` -> ``.loss``, what ``workflows.training.recipe`` runs): the same
prompt as scoring - prefix (image + context) as the processor encodes it, then the question and the
template's assistant prefix, then the answer and the template's end of turn - with the answer and
end-of-turn tokens as the only labels. ``vlm.lora`` puts LoRA adapters on the language model
(:attr:`VLMFacialModel.llm`, the checkpoint's decoder), ``vlm.train_projector`` trains the projector;
the vision tower and all other base weights stay frozen (and the vision tower in eval mode);
:class:`FacePriorTokens` trains with them when ``vlm.prior_tokens`` is on.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import inspect
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
from model.vlm.adapters import FamilyAdapter

_SENTINEL = "\u2063MIENQ\u2063"  # never produced by a prompt; marks where the question goes
_ANSWER_SENTINEL = "\u2063MIENA\u2063"  # marks where an assistant answer goes


@dataclasses.dataclass
class VLMFaces:
    """B faces ready for the VLM: RGB crops (B, S, S, 3) uint8, each face's context text and, with
    ``vlm.prior_tokens``, the face-prior groups (``model.face_prior.prior_arrays``: (B, D), NaN = unmeasured)."""

    crops: np.ndarray
    contexts: list[str]
    prior: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)

    @property
    def rows(self) -> int:
        return len(self.contexts)


@dataclasses.dataclass
class PriorSlots:
    """Where the face-prior tokens of B prefill rows go - ``mask`` (B, Lp), True at each row's N
    placeholders - and what they are made from: ``features``, the face-prior groups (B, D)."""

    mask: torch.Tensor
    features: dict[str, torch.Tensor]


@dataclasses.dataclass
class VLMTrainBatch:
    """A collated training batch of B examples: the processor's prefill ``inputs`` (image + context,
    left-padded), the continuation ``suffix_ids`` / ``suffix_mask`` (B, Ls) (question, assistant
    prefix, answer, end of turn; right-padded), ``labels`` (B, Lp + Ls) with -100 everywhere but the
    answer and end-of-turn tokens, those tokens per row (``answer_ids``: the loss's tokens), and the
    prefill's face-prior tokens (``prior``, with ``vlm.prior_tokens``)."""

    inputs: dict[str, Any]
    suffix_ids: torch.Tensor
    suffix_mask: torch.Tensor
    labels: torch.Tensor
    answer_ids: list[list[int]]
    prior: PriorSlots | None = None


@dataclasses.dataclass
class _Sequence:
    """One scored continuation: token ids after the prefix, and where to read which tokens."""

    ids: list[int]
    reads: list[tuple[int, list[int]]]  # (position in ids whose next-token logits are read, token ids)


class FacePriorTokens(nn.Module):
    """The face's measurements -> ``vlm.prior_tokens`` embeddings in the VLM's input space: the face-prior
    encoder (one token per ``face_prior.inputs`` group, availability-masked) and the prior Q-Former of
    Face Info Mining (``fim.dim`` / ``heads`` / ``qformer_layers``, N learned queries)."""

    def __init__(self, cfg: ModelConfig, llm_dim: int):
        super().__init__()
        self.encoder = FacePriorEncoder(cfg.face_prior)
        fim = dataclasses.replace(cfg.fim, local_clue=False, prior_queries=cfg.vlm.prior_tokens)
        self.fim = FaceInfoMining(fim, llm_dim, vision_dim=None, intermediate_dim=None, prior_dim=cfg.face_prior.dim)

    def forward(self, features: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """``{group: (B, D)}`` with NaN where unmeasured -> (B, N, d_llm)."""
        tokens, present = self.encoder(features)
        return self.fim(None, None, tokens, present, tokens.shape[0]).extra


class VLMFacialModel(nn.Module):
    """``model``: an ``AutoModelForImageTextToText``; ``processor``: its processor; ``adapter``:
    the family's :class:`~model.vlm.adapters.FamilyAdapter`; ``base_dir``: the local directory the
    checkpoint was loaded from (what a saved model references)."""

    def __init__(self, cfg: ModelConfig, model: nn.Module, processor: Any, adapter: FamilyAdapter,
                 base_dir: str | None = None):
        super().__init__()
        self.cfg = cfg
        self.vlm = model
        self.base_dir = base_dir
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.adapter = adapter
        self.prior = CalibratedFacePrior(cfg.prior)
        self.llm_dim: int = self.llm.get_input_embeddings().embedding_dim
        self._prefix_tail = self._template()
        self._sequences = self._build_sequences()
        self.prior_tokens: FacePriorTokens | None = None
        if cfg.vlm.prior_tokens > 0:
            with torch.random.fork_rng(devices=[]):  # an untrained part starts the same at every load
                torch.manual_seed(cfg.seed + 2)
                self.prior_tokens = FacePriorTokens(cfg, self.llm_dim).to(self.device)
            self._pending_prior: tuple[torch.Tensor, torch.Tensor] | None = None
            self._head_ids: dict[tuple[int, ...], list[int]] = {}
            self.vlm.get_input_embeddings().register_forward_hook(self._write_prior)

    # ------------------------------------------------------------------ basics
    @property
    def device(self) -> torch.device:
        return next(self.vlm.parameters()).device

    @property
    def llm(self) -> nn.Module:
        """The checkpoint's language model (its decoder, carrying the LoRA adapters): the module the
        VLM calls with the merged image + text embeddings."""
        return self.vlm.get_decoder()

    @property
    def projector(self) -> nn.Module:
        """The vision-to-language projector (:meth:`FamilyAdapter.projector`)."""
        return self.adapter.projector(self.vlm)

    def train(self, mode: bool = True) -> VLMFacialModel:
        """Like ``nn.Module.train``, but only the language model (and a trained projector) leave
        eval mode: the frozen vision tower never runs dropout."""
        super().train(mode)
        if mode:
            self.vlm.eval()
            self.llm.train()
            for module in self.part_modules().values():
                module.train()
        return self

    def trainable_parameters(self) -> Iterator[tuple[str, nn.Parameter]]:
        """``(name, parameter)`` of every parameter an optimizer should update: the language model's
        adapters as ``llm.*`` (the recipe's adapter group) and trained parts as ``<part>.*``."""
        seen: set[int] = set()
        for prefix, module in {"llm": self.llm, **self.part_modules()}.items():
            for n, p in module.named_parameters():
                if p.requires_grad and id(p) not in seen:
                    seen.add(id(p))
                    yield f"{prefix}.{n}", p
        for n, p in self.named_parameters():
            if p.requires_grad and id(p) not in seen:
                yield n, p

    def part_modules(self) -> dict[str, nn.Module]:
        """Trained non-adapter parts saved as safetensors: the projector when ``vlm.train_projector``,
        the face-prior tokens' encoder and Q-Former when ``vlm.prior_tokens``."""
        parts: dict[str, nn.Module] = {"projector": self.projector} if self.cfg.vlm.train_projector else {}
        if self.prior_tokens is not None:
            parts["prior_tokens"] = self.prior_tokens
        return parts

    def ids(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def _template(self) -> tuple[str, str]:
        """The rendered user turn split at the question: (text before it after the context
        placeholder, text after it up to where the assistant's answer starts)."""
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": _SENTINEL}]}]
        rendered = self.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        if rendered.count(_SENTINEL) != 1:
            raise ValueError("the checkpoint's chat template does not render a user text turn once; "
                             "set vlm.family or fix its chat_template")
        head, tail = rendered.split(_SENTINEL)
        return head, tail

    def _prefix_text(self, context: str) -> str:
        head, _ = self._prefix_tail
        return f"{head}{self.cfg.prompt.system}\n{context}\n"

    @staticmethod
    def _turn(question: str) -> str:
        """A ``model.prompts`` question as the user's text: without the composed model's own
        ``ASSISTANT:`` marker (the checkpoint's chat template adds its assistant turn)."""
        return question.strip().removesuffix(prompts.ASSISTANT).strip()

    def _answer(self, word: str) -> str:
        _, tail = self._prefix_tail
        return word if tail[-1:].isspace() else " " + word

    @functools.cached_property
    def _end_of_turn(self) -> list[int]:
        """Token ids the template writes after an assistant answer (``<|im_end|>``, ``</s>``...);
        the tokenizer's EOS where the template writes nothing."""
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": _SENTINEL}]},
                    {"role": "assistant", "content": [{"type": "text", "text": _ANSWER_SENTINEL}]}]
        rendered = self.processor.apply_chat_template(messages, tokenize=False)
        end = rendered.split(_ANSWER_SENTINEL, 1)[1].strip() if rendered.count(_ANSWER_SENTINEL) == 1 else ""
        ids = self.ids(end) if end else []
        eos = self.tokenizer.eos_token_id
        return ids or ([eos] if eos is not None else [])

    # ------------------------------------------------------------------ inputs
    def face_inputs(self, batch: Mapping[str, Any], prior: PriorScores | None = None) -> VLMFaces:
        """The VLM's view of a face batch (fields in ``model/face_batch.py``; ``crop`` required)."""
        rows = batch_rows(batch)
        if batch.get("crop") is None:
            raise ValueError("a VLM reads pixels: the face batch needs 'crop' (B, S, S, 3) uint8")
        if prior is None:
            prior = self.prior(batch.get("fe_prior"), batch.get("au_evidence"), rows)
        ages = np.asarray(batch["age"], dtype=np.float32).reshape(-1) if batch.get("age") is not None else None
        genders, races = batch.get("gender"), batch.get("race")
        p = self.cfg.prompt
        contexts = []
        for i in range(rows):
            face = prompts.FaceText(age=None if ages is None else float(ages[i]),
                                    gender=None if genders is None else genders[i],
                                    race=None if races is None else races[i],
                                    fe_prior=prior.fe_probs[i], au_prior=prior.au_probs[i])
            contexts.append(prompts.face_context(face, p.attributes, p.prior_as_text, p.race,
                                                 p.prior_top_aus).strip())
        prior = {} if self.prior_tokens is None else prior_arrays(batch, self.prior_tokens.encoder.names, rows)
        return VLMFaces(crops=np.ascontiguousarray(batch["crop"]), contexts=contexts, prior=prior)

    def _prefill_inputs(self, faces: VLMFaces, rows: Sequence[int] | None = None,
                        suffixes: Sequence[str] | None = None) -> tuple[dict[str, Any], PriorSlots | None]:
        """The processor's inputs for the faces in ``rows`` (each prefix followed by its suffix text),
        with the face-prior placeholders inserted after the image when ``vlm.prior_tokens`` is on."""
        from PIL import Image

        rows = list(range(faces.rows)) if rows is None else list(rows)
        texts = [self._prefix_text(faces.contexts[r]) + (suffixes[j] if suffixes else "")
                 for j, r in enumerate(rows)]
        images = [Image.fromarray(faces.crops[r]) for r in rows]
        inputs = self.processor(images=images, text=texts, padding=True, return_tensors="pt")
        slots = None
        if self.prior_tokens is not None:
            inputs, mask = self._insert_prior_placeholders(inputs, faces.crops.shape[1:])
            slots = PriorSlots(mask=mask.to(self.device),
                               features={k: torch.from_numpy(v[rows]).to(self.device) for k, v in faces.prior.items()})
        return {k: v.to(self.device) if torch.is_tensor(v) else v for k, v in inputs.items()}, slots

    def _insert_prior_placeholders(self, inputs: Mapping[str, Any],
                                   crop_shape: tuple[int, ...]) -> tuple[dict[str, Any], torch.Tensor]:
        """``inputs`` with ``vlm.prior_tokens`` placeholder tokens right after each row's image (the
        chat template's text up to and including the image, as the processor expands it), and their
        (B, L) mask. The placeholders are the pad token, attended to: any text token would do, as
        their embeddings are replaced."""
        from PIL import Image

        if crop_shape not in self._head_ids:  # the image's token count depends on its size only
            blank = Image.fromarray(np.zeros(crop_shape, dtype=np.uint8))
            head, _ = self._prefix_tail
            self._head_ids[crop_shape] = self.processor(images=[blank], text=[head])["input_ids"][0]
        head_ids = list(self._head_ids[crop_shape])
        ids, mask = inputs["input_ids"], inputs["attention_mask"]
        at = []
        for row, row_mask in zip(ids, mask, strict=True):
            start = int((row_mask == 0).sum())  # left padding
            if row[start:start + len(head_ids)].tolist() != head_ids:
                raise ValueError("vlm.prior_tokens: the chat template's text up to the image tokenises differently "
                                 "alone and inside the prompt, so the prior tokens have no fixed place in it; "
                                 "set vlm.prior_tokens: 0 for this checkpoint")
            at.append(start + len(head_ids))
        n = self.cfg.vlm.prior_tokens
        out = self.adapter.insert_text_tokens(dict(inputs), at, n, self.tokenizer.pad_token_id)
        slots = torch.zeros(out["input_ids"].shape, dtype=torch.bool)
        for i, a in enumerate(at):
            slots[i, a:a + n] = True
        return out, slots

    @contextlib.contextmanager
    def _prior_written(self, prior: PriorSlots | None, repeats: int = 1, extra: int = 0) -> Iterator[None]:
        """While open, the VLM's next input embedding puts the faces' prior tokens at ``prior.mask``:
        each row repeated ``repeats`` times and ``extra`` text columns appended, as in a continued
        pass. Computed here, so training gradients reach :class:`FacePriorTokens`. No-op without."""
        if prior is None:
            yield
            return
        tokens = self.prior_tokens(prior.features).repeat_interleave(repeats, dim=0)
        mask = prior.mask.repeat_interleave(repeats, dim=0)
        mask = torch.cat([mask, mask.new_zeros(mask.shape[0], extra)], dim=1)
        self._pending_prior = (mask, tokens)
        try:
            yield
        finally:
            unused, self._pending_prior = self._pending_prior, None
        if unused is not None:
            raise ValueError(f"vlm.prior_tokens: {type(self.vlm).__name__} ({self.vlm.config.model_type}) did not "
                             "embed its input ids through get_input_embeddings(), so the prior tokens cannot "
                             "replace their placeholders; set vlm.prior_tokens: 0 for this family")

    def _write_prior(self, module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor | None:
        """Forward hook on the input embedding: the pending prior tokens replace their placeholders' embeddings
        (once: a generation's later steps and a cached continuation embed only new tokens)."""
        if self._pending_prior is None:
            return None
        mask, tokens = self._pending_prior
        self._pending_prior = None
        if tuple(output.shape[:2]) != tuple(mask.shape):
            raise RuntimeError(f"prior tokens placed for inputs of shape {tuple(mask.shape)} met an embedding "
                               f"of {tuple(output.shape[:2])}")
        return output.masked_scatter(mask[..., None], tokens.to(output.dtype))

    # ------------------------------------------------------------------ questions
    def _build_sequences(self) -> tuple[list[_Sequence], list[tuple[str, int, int]]]:
        """Every continuation scored per face, and what each question's results are: a list of
        (kind, first sequence, number of sequences) for the FE question and each AU question."""
        _, tail = self._prefix_tail
        questions = [("fe", prompts.fe_question(self.cfg.prompt.fe_classes), list(self.cfg.prompt.fe_classes))]
        if self.cfg.scoring.au:
            questions += [("au", prompts.au_question(a), [prompts.YES, prompts.NO]) for a in AU_NAMES]
        seqs: list[_Sequence] = []
        layout: list[tuple[str, int, int]] = []
        for kind, question, answers in questions:
            q = self.ids(self._turn(question) + tail)
            cands = [self.ids(self._answer(a)) for a in answers]
            firsts = [c[0] for c in cands]
            start = len(seqs)
            if (self.cfg.scoring.first_token_shortcut and all(len(c) == 1 for c in cands)
                    and len(set(firsts)) == len(firsts)):
                seqs.append(_Sequence(q, [(len(q) - 1, firsts)]))
            else:
                for c in cands:
                    seqs.append(_Sequence(q + c, [(len(q) - 1 + k, [t]) for k, t in enumerate(c)]))
            layout.append((kind, start, len(seqs) - start))
        return seqs, layout

    # ------------------------------------------------------------------ scoring
    @functools.cached_property
    def _passes(self) -> list[range]:
        """The continuation passes of a scoring call, as ranges of :attr:`_sequences`: the FE question's
        sequences, then the AU questions'. Each pass is padded to its own longest sequence only: the FE
        question (every class named) is far longer than an AU question, and one pass over all would pad
        every AU row to it (measurements in docs/PERFORMANCE.md)."""
        _, layout = self._sequences
        kinds: dict[str, list[int]] = {}
        for kind, start, n in layout:
            kinds.setdefault(kind, []).extend(range(start, start + n))
        return [range(idx[0], idx[-1] + 1) for idx in kinds.values()]

    @functools.cached_property
    def _takes_logits_to_keep(self) -> bool:
        """Whether the VLM's forward computes logits only at the positions it is given (``logits_to_keep``:
        transformers' image-text-to-text models do); without it :meth:`_forward_at` slices full logits."""
        return "logits_to_keep" in inspect.signature(self.vlm.forward).parameters

    def _forward_at(self, keep: Sequence[int], **kwargs: Any) -> Any:
        """The VLM's forward with logits (R, len(keep), V) only at the positions ``keep`` (the same for
        every row; none for a prefill that only fills the cache): the LM head over a 152k vocabulary
        costs as much per position as ~8% of a 7B layer stack."""
        at = torch.tensor(list(keep), dtype=torch.long, device=self.device)
        if self._takes_logits_to_keep:
            return self.vlm(**kwargs, logits_to_keep=at)
        out = self.vlm(**kwargs)
        out.logits = out.logits[:, at]
        return out

    @torch.no_grad()
    def score(self, faces: VLMFaces, reuse_prefix: bool | None = None) -> Any:
        """FE class log-likelihoods (B, C) and AU yes-probabilities (B, 23) for B faces."""
        from model.mllm import LLMScores

        reuse = self.cfg.scoring.reuse_prefix if reuse_prefix is None else reuse_prefix
        _, layout = self._sequences
        inputs, prior = self._prefill_inputs(faces)
        logp = self._score_cached(inputs, prior) if reuse else self._score_full(inputs, prior)
        # logp: per sequence, (B, n_reads_tokens) log-probabilities
        fe = au = None
        au_cols = []
        for kind, start, n in layout:
            if n == 1:  # shortcut: one row holds every answer
                scores = logp[start]
            else:
                scores = torch.stack([logp[start + j].sum(dim=1) for j in range(n)], dim=1)
            if kind == "fe":
                fe = scores
            else:
                au_cols.append(torch.softmax(scores, dim=1)[:, 0])
        if au_cols:
            au = torch.stack(au_cols, dim=1)
        return LLMScores(fe_logprobs=fe, au_yes=au)

    def _suffix_batch(self, seqs: list[_Sequence], b: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(B*S, Lmax) right-padded suffix ids and mask, face-major (face i's S rows together)."""
        lmax = max(len(s.ids) for s in seqs)
        pad = self.tokenizer.pad_token_id
        ids = torch.full((len(seqs), lmax), pad, dtype=torch.long)
        mask = torch.zeros((len(seqs), lmax), dtype=torch.long)
        for j, s in enumerate(seqs):
            ids[j, :len(s.ids)] = torch.tensor(s.ids)
            mask[j, :len(s.ids)] = 1
        return ids.repeat(b, 1).to(self.device), mask.repeat(b, 1).to(self.device)

    @staticmethod
    def _read_positions(seqs: list[_Sequence], offset: int) -> list[int]:
        """Every position (``offset`` + its place in the continuation) at which some sequence of a pass is
        read: one 1-D ``logits_to_keep`` for all rows, which every family takes (a row's extra positions
        are one or two of an AU pass's question lengths)."""
        return sorted({offset + pos for s in seqs for pos, _ in s.reads})

    @staticmethod
    def _gather(logits: torch.Tensor, seqs: list[_Sequence], b: int, keep: list[int],
                offset: int) -> list[torch.Tensor]:
        """Per sequence: (B, k) log-probs of its read tokens; ``logits`` (B*S, len(keep), V) at the
        positions ``keep``, face-major."""
        logp = torch.log_softmax(logits.float(), dim=-1)
        column = {p: i for i, p in enumerate(keep)}
        s_n = len(seqs)
        out = []
        for j, s in enumerate(seqs):
            rows = torch.arange(b, device=logp.device) * s_n + j
            out.append(torch.cat([logp[rows, column[offset + pos]][:, tokens] for pos, tokens in s.reads], dim=1))
        return out

    def _score_cached(self, inputs: dict[str, Any], prior: PriorSlots | None) -> list[torch.Tensor]:
        """One prefill (no logits: only its cache), then each of :attr:`_passes` against the cache,
        repeated per sequence of the pass; a pass's own tokens are cropped off the cache after it."""
        seqs, _ = self._sequences
        b = inputs["input_ids"].shape[0]
        pos, next_pos = self.adapter.prefill_positions(self.vlm, inputs)
        with self._prior_written(prior):
            cache = self._forward_at([], **inputs, position_ids=pos, use_cache=True).cache
        logp: list[torch.Tensor] = []
        repeats = 1  # the cache's rows per face
        for group in self._passes:
            sub = [seqs[j] for j in group]
            s_n = len(sub)
            if (repeats, s_n) != (1, 1):
                cache.batch_select_indices((torch.arange(b, device=self.device) * repeats).repeat_interleave(s_n))
            repeats = s_n
            ids, mask = self._suffix_batch(sub, b)
            prefill_mask = inputs["attention_mask"].repeat_interleave(s_n, dim=0)
            cont = self.adapter.continuation_positions(next_pos.repeat_interleave(s_n, dim=0), ids.shape[1])
            keep = self._read_positions(sub, 0)
            res = self._forward_at(keep, input_ids=ids, attention_mask=torch.cat([prefill_mask, mask], dim=1),
                                   position_ids=cont, cache=cache, use_cache=True)
            cache.crop(-ids.shape[1])
            logp += self._gather(res.logits, sub, b, keep, 0)
        return logp

    def _score_full(self, inputs: dict[str, Any], prior: PriorSlots | None) -> list[torch.Tensor]:
        """Each of :attr:`_passes` as one uncached forward over every (face, sequence) pair, image included."""
        seqs, _ = self._sequences
        b, lp = inputs["input_ids"].shape
        logp: list[torch.Tensor] = []
        for group in self._passes:
            sub = [seqs[j] for j in group]
            ids, mask = self._suffix_batch(sub, b)
            keep = self._read_positions(sub, lp)
            with self._prior_written(prior, repeats=len(sub), extra=ids.shape[1]):
                res = self._forward_at(keep, **self._continued(inputs, ids, mask, len(sub)), use_cache=False)
            logp += self._gather(res.logits, sub, b, keep, lp)
        return logp

    def _continued(self, inputs: dict[str, Any], ids: torch.Tensor, mask: torch.Tensor,
                   repeats: int = 1) -> dict[str, Any]:
        """Forward inputs of one uncached pass over B prefills (processor ``inputs``), each repeated
        ``repeats`` times in row order and continued by ``ids`` / ``mask`` (B * repeats, Ls): ids,
        mask, the family's positions (continuing each prefill's), image and per-token inputs."""
        pos, next_pos = self.adapter.prefill_positions(self.vlm, inputs)
        rep = {k: inputs[k].repeat_interleave(repeats, dim=0) for k in ("input_ids", "attention_mask")}
        cont = self.adapter.continuation_positions(next_pos.repeat_interleave(repeats, dim=0), ids.shape[1])
        dim = 1 if pos.ndim == 3 else 0
        positions = self.adapter.concat_positions(pos.repeat_interleave(repeats, dim=dim), cont)
        extra = self.adapter.extend_token_inputs({k: v.repeat_interleave(repeats, dim=0) for k, v in inputs.items()
                                                  if k in self.adapter.text_token_inputs}, ids.shape[1])
        return {"input_ids": torch.cat([rep["input_ids"], ids], dim=1),
                "attention_mask": torch.cat([rep["attention_mask"], mask], dim=1),
                **self.adapter.repeat_image_inputs(inputs, repeats), **extra, "position_ids": positions}

    # ------------------------------------------------------------------ generation
    @torch.no_grad()
    def generate(self, faces: VLMFaces, rows: Sequence[int] | None = None,
                 openings: Sequence[str] | None = None, readings: Sequence[str] | None = None) -> list[str]:
        """A description with FE<->AU reasoning for each face in ``rows`` (``openings``: text the
        answer must start with, e.g. an anchored label; ``readings``: the scores in words, stated
        in the question)."""
        g = self.cfg.generation
        rows = list(range(faces.rows)) if rows is None else list(rows)
        if not rows:
            return []
        _, tail = self._prefix_tail
        opens = list(openings) if openings is not None else [""] * len(rows)
        reads = list(readings) if readings is not None else [""] * len(rows)
        suffixes = [self._turn(prompts.describe_question(r)) + tail + o for r, o in zip(reads, opens, strict=True)]
        inputs, prior = self._prefill_inputs(faces, rows, suffixes)
        kwargs: dict[str, Any] = {"max_new_tokens": g.max_new_tokens, "do_sample": g.temperature > 0,
                                  "pad_token_id": self.tokenizer.pad_token_id}
        if g.temperature > 0:
            torch.manual_seed(g.seed)
            kwargs.update(temperature=g.temperature, top_p=g.top_p)
        with self._prior_written(prior):
            out = self.vlm.generate(**inputs, **kwargs)
        new = out[:, inputs["input_ids"].shape[1]:]
        texts = self.tokenizer.batch_decode(new, skip_special_tokens=True)
        return [(o + t).strip() for o, t in zip(opens, texts, strict=True)]

    # ------------------------------------------------------------------ training
    def collate(self, rows: Sequence[Mapping[str, Any]]) -> VLMTrainBatch:
        """Example rows -> :class:`VLMTrainBatch` on the model's device. A row is one face as
        ``model.face_batch.build_face_batch`` takes it (``crop`` (S, S, 3) uint8 required, ``au_evidence``,
        ``fe_prior``, ``age``, ``gender``, ...) plus ``question`` (a ``model.prompts`` question; its
        ``ASSISTANT:`` marker is replaced by the chat template's assistant turn, as in scoring) and ``answer`` (the target text)."""
        faces = self.face_inputs(build_face_batch(rows))
        inputs, prior = self._prefill_inputs(faces)
        _, tail = self._prefix_tail
        questions = [self.ids(self._turn(r["question"]) + tail) for r in rows]
        answers = [self.ids(self._answer(r["answer"])) + self._end_of_turn for r in rows]
        width = max(len(q) + len(a) for q, a in zip(questions, answers, strict=True))
        b, lp = inputs["input_ids"].shape
        ids = torch.full((b, width), self.tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros((b, width), dtype=torch.long)
        labels = torch.full((b, lp + width), -100, dtype=torch.long)
        for i, (q, a) in enumerate(zip(questions, answers, strict=True)):
            ids[i, :len(q) + len(a)] = torch.tensor(q + a)
            mask[i, :len(q) + len(a)] = 1
            labels[i, lp + len(q):lp + len(q) + len(a)] = torch.tensor(a)
        dev = self.device
        return VLMTrainBatch(inputs=inputs, suffix_ids=ids.to(dev), suffix_mask=mask.to(dev),
                             labels=labels.to(dev), answer_ids=answers, prior=prior)

    def forward(self, batch: VLMTrainBatch) -> Any:
        """The VLM's output for a training batch; ``loss``: mean cross-entropy over the answer and
        end-of-turn tokens (one uncached pass with the positions scoring uses)."""
        with self._prior_written(batch.prior, extra=batch.suffix_ids.shape[1]):
            return self.vlm(**self._continued(batch.inputs, batch.suffix_ids, batch.suffix_mask),
                            labels=batch.labels, use_cache=False)


def build_vlm_model(cfg: ModelConfig, directory: str, device: str = "cpu") -> VLMFacialModel:
    """Load the checkpoint in ``directory`` (a local ``save_pretrained`` VLM) as a facial model:
    every base weight frozen, then LoRA adapters on the language model (``vlm.lora``, initialised
    from ``seed``: B = 0, so the untrained model scores as the base does) and the projector
    trainable (``vlm.train_projector``)."""
    import json
    from pathlib import Path

    from transformers import AutoModelForImageTextToText

    from model.llm import resolve_dtype
    from model.vlm.adapters import adapter_for
    from model.vlm.processors import load_processor

    model_type = json.loads((Path(directory) / "config.json").read_text()).get("model_type", "")
    adapter = adapter_for(model_type, cfg.vlm.family)
    dtype = resolve_dtype(cfg.vlm.dtype, device)
    model = AutoModelForImageTextToText.from_pretrained(directory, dtype=dtype, local_files_only=True,
                                                        attn_implementation=cfg.vlm.attn_implementation,
                                                        use_safetensors=True)
    model.to(device).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    if cfg.vlm.lora.enabled:
        from peft import LoraConfig, inject_adapter_in_model

        lora = cfg.vlm.lora
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed + 1)
            inject_adapter_in_model(LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                                               target_modules=list(lora.target_modules)), model.get_decoder())
        model.to(device)
    if cfg.vlm.train_projector:
        adapter.projector(model).requires_grad_(True)
    return VLMFacialModel(cfg, model, load_processor(directory), adapter, base_dir=str(directory))
