"""Analytic FLOPs per face (nanoGPT's ``estimate_mfu`` spirit: count the matmuls that matter).

A multiply-add is 2 FLOPs. A transformer layer over ``n`` new tokens that attend to ``ctx``
tokens each costs ``2 n (4 d^2 + 3 d f)`` for the projections and gated MLP (``4 d^2 + 2 d f``
for a plain MLP) and ``4 d * sum(ctx)`` for scores and weighted values. Embedding lookups,
norms and softmax are ignored; the LM head is counted only where logits are computed.
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class TransformerShape:
    layers: int
    hidden: int
    ffn: int
    vocab: int = 0
    kv_heads_ratio: float = 1.0  # kv heads / attention heads (GQA shrinks the K/V projections)
    gated_mlp: bool = True

    def linear_flops_per_token(self) -> float:
        d, f = self.hidden, self.ffn
        attn = 2 * d * d + 2 * d * d * self.kv_heads_ratio  # q, o + k, v
        mlp = (3 if self.gated_mlp else 2) * d * f
        return 2.0 * self.layers * (attn + mlp)

    def forward_flops(self, new_tokens: int, context_sum: float, logits: int = 0) -> float:
        """FLOPs for ``new_tokens`` whose attention spans sum to ``context_sum``; ``logits``
        positions get the LM head."""
        return (self.linear_flops_per_token() * new_tokens + 4.0 * self.layers * self.hidden * context_sum
                + 2.0 * self.hidden * self.vocab * logits)


LLAMA_7B = TransformerShape(layers=32, hidden=4096, ffn=11008, vocab=32000)
CLIP_VIT_L14_336 = TransformerShape(layers=24, hidden=1024, ffn=4096, gated_mlp=False)


def _causal_sum(start: int, n: int) -> float:
    """Sum of context lengths for ``n`` tokens appended after ``start`` cached tokens."""
    return n * start + n * (n + 1) / 2


@dataclasses.dataclass(frozen=True)
class PromptShape:
    """Token counts of one face's prompt (see ``model/mllm.py``)."""

    prefix: int = 40  # BOS, system text, "USER: <face>"
    visual: int = 576 + 1 + 4  # patch tokens + local-clue token + prior queries
    context: int = 45  # </face>, attribute and prior sentences
    fe_question: int = 40
    au_questions: int = 23
    au_question: int = 22
    fe_answers: int = 7


def flops_per_face(llm: TransformerShape = LLAMA_7B, vision: TransformerShape | None = CLIP_VIT_L14_336,
                   vision_tokens: int = 577, prompt: PromptShape = PromptShape(), batch: int = 32,
                   fim_dim: int = 1024, intermediate_layers: int = 3, reuse_prefix: bool = True) -> dict[str, float]:
    """FLOPs to score one face: vision tower, Face Info Mining projector, LLM.

    With ``reuse_prefix`` the shared prefix is computed once per ``batch`` and every question
    reuses the face's cached keys/values; without it every (face, question) pair runs its
    whole prompt."""
    out: dict[str, float] = {}
    if vision is not None:
        out["vision"] = vision.forward_flops(vision_tokens, vision_tokens * vision_tokens)
        n, d, dv = prompt.visual, fim_dim, vision.hidden
        # q/kv input projections, two cross-attentions + self-attention (+ their projections),
        # FFN, and the 2-layer MLP into the LLM width
        proj = 2 * n * (dv * d + dv * intermediate_layers * d)
        attn = 3 * (2 * n * 4 * d * d + 4 * d * n * n)
        ffn = 2 * n * 8 * d * d
        head = 2 * n * (d * llm.hidden + llm.hidden * llm.hidden)
        out["fim"] = float(proj + attn + ffn + head)
    p, f = prompt.prefix, prompt.visual + prompt.context
    ctx = p + f
    questions = [prompt.fe_question] + [prompt.au_question] * prompt.au_questions
    if reuse_prefix:
        llm_flops = llm.forward_flops(p, _causal_sum(0, p)) / batch
        llm_flops += llm.forward_flops(f, _causal_sum(p, f))
        for q in questions:
            llm_flops += llm.forward_flops(q, _causal_sum(ctx, q), logits=1)
    else:
        llm_flops = 0.0
        for q in questions:
            llm_flops += llm.forward_flops(ctx + q, _causal_sum(0, ctx + q), logits=1)
    out["llm"] = llm_flops
    out["total"] = sum(out.values())
    return out
