"""Family adapters: the few things that differ between image-text-to-text families, behind one interface.

Everything else — loading (``AutoModelForImageTextToText``), the processor that expands image
placeholders, the chat template that renders a turn — is the checkpoint's own, so a family the
adapters below do not name runs through :class:`FamilyAdapter` (the generic adapter) untouched,
as long as its processor expands the image tokens itself and it uses 1-D rotary positions.

What an adapter decides:

* **positions** of a prefill (``prefill_positions``) and of a continuation after a cached prefix
  (``continuation_positions``). Scoring encodes each face's image + context once and then runs
  every question against the cached keys/values; the continuation must get exactly the position
  ids a full forward pass would give it, or cached and uncached scores differ. Plain RoPE
  families count real (unpadded) tokens; Qwen2-VL / Qwen2.5-VL use 3-D M-RoPE, whose image tokens
  advance the position by the image grid's side, not its area (``rope_deltas``).
* **extra per-token inputs** that must be extended when text is appended to a prefill in a full
  (uncached) pass, or inserted into it (``vlm.prior_tokens``' placeholders): Qwen's
  ``mm_token_type_ids`` (0 for text).
* **the projector** (``vlm.train_projector``): the module between vision tower and language model,
  found by the names the families give it (:data:`PROJECTOR_NAMES`).

Families by ``config.json`` ``model_type``: see :data:`ADAPTERS`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

# What families call the vision-to-language projector: LLaVA / LLaVA-NeXT ``multi_modal_projector``,
# Idefics3 / SmolVLM ``connector``, Qwen2-VL / Qwen2.5-VL ``visual.merger``.
PROJECTOR_NAMES = ("multi_modal_projector", "connector", "merger", "mm_projector")


class FamilyAdapter:
    """The generic adapter: 1-D positions counted over real tokens, no extra per-token inputs."""

    name = "generic"
    model_types: tuple[str, ...] = ()
    # Per-token inputs besides input_ids / attention_mask, 0 for a text token.
    text_token_inputs: tuple[str, ...] = ()

    def projector(self, model: Any) -> Any:
        """The vision-to-language projector of ``model`` (the one module named in :data:`PROJECTOR_NAMES`)."""
        found = [(n, m) for n, m in model.named_modules() if n.rsplit(".", 1)[-1] in PROJECTOR_NAMES]
        if len(found) != 1:
            raise ValueError(f"vlm.train_projector: cannot tell the projector of {type(model).__name__} "
                             f"(modules named {', '.join(PROJECTOR_NAMES)}: {[n for n, _ in found] or 'none'}); "
                             "set vlm.train_projector: false")
        return found[0][1]

    def prefill_positions(self, model: Any, inputs: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """(position_ids for the prefill, next position per row (B,)) for processor ``inputs``
        (left-padded rows: pads get position 0 and are masked)."""
        mask = inputs["attention_mask"].long()
        pos = (mask.cumsum(-1) - 1).clamp(min=0) * mask
        return pos, mask.sum(-1)

    def continuation_positions(self, next_pos: torch.Tensor, length: int) -> torch.Tensor:
        """Position ids of ``length`` tokens appended after a prefill whose next position is ``next_pos``."""
        return next_pos[:, None] + torch.arange(length, device=next_pos.device)[None, :]

    def concat_positions(self, prefill: torch.Tensor, continuation: torch.Tensor) -> torch.Tensor:
        return torch.cat([prefill, continuation], dim=-1)

    def extend_token_inputs(self, inputs: dict[str, Any], length: int) -> dict[str, Any]:
        """Per-token inputs other than ids/mask, extended by ``length`` text tokens (full passes)."""
        return {k: torch.cat([inputs[k], inputs[k].new_zeros(inputs[k].shape[0], length)], dim=1)
                for k in self.text_token_inputs if k in inputs}

    def insert_text_tokens(self, inputs: dict[str, Any], at: Sequence[int], n: int, token_id: int) -> dict[str, Any]:
        """Processor ``inputs`` with ``n`` text tokens ``token_id`` inserted into row i before column
        ``at[i]``: attended to, and text in every other per-token input. Image inputs are unchanged."""
        out = dict(inputs)
        fill = {"input_ids": token_id, "attention_mask": 1}
        for key in ("input_ids", "attention_mask", *self.text_token_inputs):
            if key in inputs:
                v = inputs[key]
                gap = v.new_full((n,), fill.get(key, 0))
                out[key] = torch.stack([torch.cat([row[:a], gap, row[a:]]) for row, a in zip(v, at, strict=True)])
        return out

    def repeat_image_inputs(self, inputs: dict[str, Any], repeats: int) -> dict[str, Any]:
        """Image inputs of B prefills, each repeated ``repeats`` times in row order (full passes)."""
        out = {}
        for k, v in inputs.items():
            if k in ("input_ids", "attention_mask") or not torch.is_tensor(v):
                continue
            out[k] = v.repeat_interleave(repeats, dim=0)
        return out


class QwenVLAdapter(FamilyAdapter):
    """Qwen2-VL / Qwen2.5-VL: 3-D M-RoPE positions computed from ``mm_token_type_ids`` and
    ``image_grid_thw``; image patches are flattened across images (``pixel_values`` (sum t*h*w, D)),
    so repeating a face repeats its own patch rows and grid row."""

    name = "qwen2_vl"
    model_types = ("qwen2_vl", "qwen2_5_vl")
    text_token_inputs = ("mm_token_type_ids",)

    def prefill_positions(self, model: Any, inputs: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        inner = model.model if hasattr(model, "model") else model
        pos, _ = inner.get_rope_index(inputs["input_ids"], mm_token_type_ids=inputs["mm_token_type_ids"],
                                      image_grid_thw=inputs.get("image_grid_thw"),
                                      attention_mask=inputs["attention_mask"])
        return pos, pos.amax(dim=(0, 2)) + 1

    def continuation_positions(self, next_pos: torch.Tensor, length: int) -> torch.Tensor:
        flat = super().continuation_positions(next_pos, length)
        return flat[None].expand(3, -1, -1)

    def concat_positions(self, prefill: torch.Tensor, continuation: torch.Tensor) -> torch.Tensor:
        return torch.cat([prefill, continuation], dim=-1)

    def repeat_image_inputs(self, inputs: dict[str, Any], repeats: int) -> dict[str, Any]:
        grid = inputs["image_grid_thw"]  # (B, 3): one image per face
        sizes = (grid[:, 0] * grid[:, 1] * grid[:, 2]).tolist()
        chunks = torch.split(inputs["pixel_values"], sizes, dim=0)
        pixels = torch.cat([c for c in chunks for _ in range(repeats)], dim=0)
        return {"pixel_values": pixels, "image_grid_thw": grid.repeat_interleave(repeats, dim=0)}


ADAPTERS: dict[str, FamilyAdapter] = {}
for _adapter in (QwenVLAdapter(),):
    for _t in _adapter.model_types:
        ADAPTERS[_t] = _adapter
GENERIC = FamilyAdapter()
# Families tested end to end with the generic adapter (their processors expand image tokens,
# positions are 1-D): named so that `family: llava` in a config is checked, not guessed.
TESTED_GENERIC = ("llava", "llava_next", "idefics3", "smolvlm")


def adapter_for(model_type: str, family: str = "auto") -> FamilyAdapter:
    """The adapter for a checkpoint's ``model_type`` (``family`` = ``auto``) or the named family."""
    key = model_type if family == "auto" else family
    if key in ADAPTERS:
        return ADAPTERS[key]
    if family not in ("auto", "generic", *TESTED_GENERIC):
        raise ValueError(f"vlm.family: unknown family {family!r}; use auto, generic, "
                         f"{', '.join(sorted({*ADAPTERS, *TESTED_GENERIC}))}")
    return GENERIC


def known_families() -> tuple[str, ...]:
    """Values ``vlm.family`` accepts."""
    return ("auto", "generic", *sorted({*ADAPTERS, *TESTED_GENERIC}))
