"""Pretrained-VLM benchmark: faces/s with and without prefix reuse, and analytic FLOPs per face at 7B.

    .venv/bin/python -m bench.bench_vlm                                # every tiny family on CPU (~1 min)
    .venv/bin/python -m bench.bench_vlm --families llava --reps 1      # one family, smoke run
    .venv/bin/python -m bench.bench_vlm --device cuda --checkpoint DIR # + a real checkpoint directory

Measured: each tiny family of ``model/vlm/tiny.py`` (and any ``--checkpoint``) scores the same B faces
(FE class question + 23 AU yes/no questions, ``VLMFacialModel.score``) with prefix reuse (one batched
prefill of image + context, the questions against the cached keys/values) and without (every
(face, question) pair a full pass, image included); the two modes alternate within each repeat and
the medians are compared, and both must give the same scores.

Analytic (``model/flops.py`` conventions): FLOPs to score one 224x224 face with Qwen2.5-VL-7B (64
image tokens) and LLaVA-1.5-7B (576), vision tower + projector + LM, with and without reuse. Two
counts: ``useful`` (each question at its own length, logits only where an answer is read: the MFU
numerator) and ``executed`` (what ``VLMFacialModel.score`` runs: the FE question's continuation and the
23 AU questions' as two passes, each padded to its own longest; no logits in the cached prefill, and in a
pass logits only at the positions some continuation of it reads). Text token counts come from the real prompts rendered by the
family's chat template and tokenized by the tiny family tokenizer (every prompt word one token: a
lower bound) or by ``--tokenizer`` (a real ``tokenizer.json``; the template's special tokens are
added to it so each counts once). The H100 ceiling is the bf16 dense peak over the useful FLOPs; a
GPU run divides its measured faces/s by it for the MFU.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.bench_model import face_batch  # noqa: E402
from model.flops import CLIP_VIT_L14_336, LLAMA_7B, TransformerShape, _causal_sum  # noqa: E402

# ----------------------------------------------------------------------------- 7B shapes


@dataclasses.dataclass(frozen=True)
class VLMShape:
    """What one face costs a VLM outside its text: the vision tower's layer groups as
    (shape, tokens, attention context sum), the patch embedding and projector FLOPs, and how many
    image tokens reach the LM. ``tiny_family`` renders its prompts (chat template, BOS)."""

    name: str
    tiny_family: str
    vision: tuple[tuple[TransformerShape, int, float], ...]
    patch_embed_flops: float
    projector_flops: float
    image_tokens: int
    llm: TransformerShape

    def vision_flops(self) -> float:
        tower = sum(shape.forward_flops(tokens, ctx) for shape, tokens, ctx in self.vision)
        return self.patch_embed_flops + tower + self.projector_flops


def qwen2_5_vl_7b(face_px: int = 224) -> VLMShape:
    """Qwen2.5-VL-7B-Instruct's config.json (transformers' class defaults are not the 7B: its text
    defaults are 72B-sized and its vision ``hidden_size`` default is the output width 3584).
    Vision: 32 SwiGLU blocks, hidden 1280, ffn 3420, 14 px patches over 2 frames (Conv3d 3x2x14x14),
    window attention over 112 px (8x8 patches) except full attention in blocks 7, 15, 23, 31; merger
    RMSNorm + MLP 4*1280 -> 5120 -> 3584 over each 2x2 group. LM: Qwen2.5-7B, 28 layers, hidden 3584,
    ffn 18944, GQA 28 query / 4 kv heads, vocab 152064 (untied)."""
    side = face_px // 14  # the processor keeps multiples of 28 px: 224 -> 16x16 patches
    patches, merged, window = side * side, side * side // 4, min(side, 8) ** 2
    full_layers = 4
    block = TransformerShape(layers=32 - full_layers, hidden=1280, ffn=3420)
    return VLMShape(
        name="Qwen2.5-VL-7B", tiny_family="qwen2_5_vl",
        vision=((block, patches, patches * window),
                (dataclasses.replace(block, layers=full_layers), patches, patches * patches)),
        patch_embed_flops=2.0 * patches * (3 * 2 * 14 * 14) * 1280,
        projector_flops=2.0 * merged * (5120 * 5120 + 5120 * 3584),
        image_tokens=merged,
        llm=TransformerShape(layers=28, hidden=3584, ffn=18944, vocab=152064, kv_heads_ratio=4 / 28))


def llava_1_5_7b() -> VLMShape:
    """LLaVA-1.5-7B: CLIP ViT-L/14-336 (any face is resized to 336 px: 576 patches + CLS; every layer
    runs although the penultimate one is read), the mlp2x_gelu projector 1024 -> 4096 -> 4096, and
    Vicuna-7B (LLaMA-7B: 32 layers, hidden 4096, ffn 11008, vocab 32000)."""
    patches = (336 // 14) ** 2
    return VLMShape(
        name="LLaVA-1.5-7B", tiny_family="llava",
        vision=((CLIP_VIT_L14_336, patches + 1, (patches + 1) ** 2),),
        patch_embed_flops=2.0 * patches * (3 * 14 * 14) * 1024,
        projector_flops=2.0 * patches * (1024 * 4096 + 4096 * 4096),
        image_tokens=patches, llm=LLAMA_7B)


@dataclasses.dataclass(frozen=True)
class PromptTokens:
    """Token counts of one face's scoring prompt, image tokens excluded: ``prefix_text`` (BOS,
    template, system text, context; mean over faces), per scored continuation its length (question +
    template tail) and the positions whose logits it reads, counted back from its end (1: its last
    token), and ``passes``: which continuations the scorer runs together, padded to the longest."""

    prefix_text: float
    questions: tuple[int, ...]
    reads: tuple[tuple[int, ...], ...]
    passes: tuple[tuple[int, ...], ...]

    def one_pass(self) -> PromptTokens:
        """The same prompt scored as one pass of every continuation (what the scorer ran before the
        FE and AU questions were split)."""
        return dataclasses.replace(self, passes=(tuple(range(len(self.questions))),))


def scoring_flops(shape: VLMShape, prompt: PromptTokens, reuse_prefix: bool, executed: bool = False) -> dict[str, float]:
    """FLOPs to score one face: ``vision`` (tower + projector, once per image pass) and ``llm``.

    With ``reuse_prefix`` the prefix (image + text) is prefilled once and each question runs
    against its cache; without it each question is a full pass that re-encodes the image.
    ``executed``: as the scorer runs it: the continuations of each of ``prompt.passes`` padded to the
    pass's longest, logits at every position some continuation of the pass reads (none in the prefill)."""
    llm = shape.llm
    p = shape.image_tokens + prompt.prefix_text
    rows: list[tuple[int, int]] = []  # per continuation: (tokens run, positions with logits)
    if executed:
        for group in prompt.passes:
            longest = max(prompt.questions[j] for j in group)
            read = {prompt.questions[j] - d for j in group for d in prompt.reads[j]}
            rows += [(longest, len(read))] * len(group)
    else:
        rows = [(q, len(r)) for q, r in zip(prompt.questions, prompt.reads, strict=True)]
    vision = shape.vision_flops()
    if reuse_prefix:
        out = {"vision": vision,
               "llm": llm.forward_flops(p, _causal_sum(0, p), logits=0)
               + sum(llm.forward_flops(q, _causal_sum(p, q), logits=r) for q, r in rows)}
    else:
        out = {"vision": vision * len(rows),
               "llm": sum(llm.forward_flops(p + q, _causal_sum(0, p + q), logits=r) for q, r in rows)}
    out["total"] = out["vision"] + out["llm"]
    return out


# ----------------------------------------------------------------------------- prompts


def prompt_tokens(mllm: Any, faces: Any, tokenizer_json: str | None = None) -> PromptTokens:
    """Token counts of ``mllm``'s real scoring prompts for ``faces``, image tokens excluded.

    ``tokenizer_json``: count with this tokenizer instead of ``mllm``'s own, with ``mllm``'s special
    tokens added (one token each) and its BOS, if it prepends one."""
    tok = mllm.tokenizer
    seqs, _ = mllm._sequences
    prefixes = [mllm._prefix_text(c) for c in faces.contexts]
    if tokenizer_json:
        from tokenizers import Tokenizer

        other = Tokenizer.from_file(tokenizer_json)
        other.add_special_tokens(list(tok.get_added_vocab()))

        def count(text: str) -> int:
            return len(other.encode(text, add_special_tokens=False).ids)

        bos = len(tok(prefixes[0])["input_ids"]) - len(tok(prefixes[0], add_special_tokens=False)["input_ids"])
        prefix = [count(t) + bos for t in prefixes]
        questions = [count(tok.decode(s.ids)) for s in seqs]
    else:
        # as the processor tokenizes a prefix: with special tokens (BOS)
        prefix = [len(tok(t)["input_ids"]) for t in prefixes]
        questions = [len(s.ids) for s in seqs]
    # each prefix holds the one image placeholder the processor expands; image tokens are counted apart
    return PromptTokens(prefix_text=statistics.fmean(prefix) - 1, questions=tuple(questions),
                        reads=tuple(tuple(len(s.ids) - pos for pos, _ in s.reads) for s in seqs),
                        passes=tuple(tuple(group) for group in mllm._passes))


def flops_rows(shapes: dict[str, tuple[VLMShape, PromptTokens]], peak_tflops: float,
               mfu: float) -> dict[str, dict[str, Any]]:
    """Per 7B shape: its prompt's token counts, FLOPs per face (useful and as executed; with reuse also
    as one padded pass of every continuation would execute) with and without reuse, and the faces/s ceilings at ``peak_tflops`` and at ``mfu`` of it."""
    out: dict[str, dict[str, Any]] = {}
    for key, (shape, prompt) in shapes.items():
        row: dict[str, Any] = {"name": shape.name, "image_tokens": shape.image_tokens,
                               "prefix_text_tokens": prompt.prefix_text, "questions": len(prompt.questions),
                               "question_tokens": sum(prompt.questions), "longest_question": max(prompt.questions)}
        for mode, reuse in (("reuse", True), ("no_reuse", False)):
            useful = scoring_flops(shape, prompt, reuse)
            row[f"{mode}_flops"] = useful["total"]
            row[f"{mode}_vision_flops"] = useful["vision"]
            row[f"{mode}_executed_flops"] = scoring_flops(shape, prompt, reuse, executed=True)["total"]
            row[f"{mode}_h100_peak_faces_per_s"] = peak_tflops * 1e12 / useful["total"]
            row[f"{mode}_h100_at_mfu_faces_per_s"] = mfu * peak_tflops * 1e12 / useful["total"]
        row["analytic_reuse_speedup"] = row["no_reuse_flops"] / row["reuse_flops"]
        row["executed_over_useful_reuse"] = row["reuse_executed_flops"] / row["reuse_flops"]
        row["reuse_one_pass_executed_flops"] = scoring_flops(shape, prompt.one_pass(), True, executed=True)["total"]
        out[key] = row
    return out


# ----------------------------------------------------------------------------- measured


def alternating(fns: dict[str, Callable[[], Any]], reps: int) -> dict[str, float]:
    """Median seconds per function over ``reps`` rounds in which the functions take turns (the order
    flips every round, so a drift in machine load hits both); one warm-up call each first."""
    for fn in fns.values():
        fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    names = list(fns)
    for r in range(reps):
        for name in names if r % 2 == 0 else names[::-1]:
            t0 = time.perf_counter()
            fns[name]()
            times[name].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def bench_checkpoint(directory: str, device: str, rows: int, reps: int, face_px: int, atol: float) -> dict[str, Any]:
    """Scoring faces/s of the checkpoint in ``directory`` with and without prefix reuse, and the
    largest difference between the two modes' FE log-likelihoods and AU probabilities."""
    import torch

    from model import load_model

    mllm = load_model(directory, device=device).mllm
    faces = mllm.face_inputs(face_batch(rows, face_px))

    def run(reuse: bool) -> Any:
        out = mllm.score(faces, reuse_prefix=reuse)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        return out

    cached, full = run(True), run(False)
    diff = max(float((cached.fe_logprobs - full.fe_logprobs).abs().max()),
               float((cached.au_yes - full.au_yes).abs().max()))
    secs = alternating({"reuse": lambda: run(True), "no_reuse": lambda: run(False)}, reps)
    return {"rows": rows, "reuse_faces_per_s": rows / secs["reuse"], "no_reuse_faces_per_s": rows / secs["no_reuse"],
            "reuse_speedup": secs["no_reuse"] / secs["reuse"], "max_abs_diff": diff, "scores_agree": diff <= atol}


# ----------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    from model import load_model
    from model.vlm.tiny import TINY_FAMILIES, build_tiny_vlm

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--families", default=",".join(TINY_FAMILIES), help="tiny families to measure (comma list)")
    ap.add_argument("--checkpoint", action="append", default=[], help="also measure this VLM directory")
    ap.add_argument("--rows", type=int, default=8, help="faces per scoring batch")
    ap.add_argument("--reps", type=int, default=5, help="rounds; each times both modes")
    ap.add_argument("--face-px", type=int, default=112, help="crop side of the measured faces")
    ap.add_argument("--atol", type=float, default=1e-4, help="largest reuse/no-reuse difference that agrees")
    ap.add_argument("--tokenizer", help="tokenizer.json to count the 7B prompts with (default: the tiny one)")
    ap.add_argument("--peak-tflops", type=float, default=989.0, help="bf16 dense peak (H100 SXM)")
    ap.add_argument("--mfu", type=float, default=0.4, help="MFU of the second ceiling")
    ap.add_argument("--json", help="also write the numbers to this file")
    args = ap.parse_args(argv)
    families = [f for f in args.families.split(",") if f]

    import torch

    results: dict[str, Any] = {"device": args.device, "torch_threads": torch.get_num_threads(),
                               "reps": args.reps, "face_px": args.face_px,
                               "tokenizer": args.tokenizer or "tiny family tokenizer (lower bound)",
                               "peak_tflops": args.peak_tflops, "mfu": args.mfu, "measured": {}}
    shapes = {"qwen2_5_vl_7b": qwen2_5_vl_7b(), "llava_1_5_7b": llava_1_5_7b()}
    with tempfile.TemporaryDirectory(prefix="mien-bench-vlm-") as tmp:
        dirs = {f: str(build_tiny_vlm(f, Path(tmp) / f)) for f in {*families, *(s.tiny_family for s in shapes.values())}}
        for f in families:
            results["measured"][f"tiny_{f}"] = bench_checkpoint(dirs[f], args.device, args.rows, args.reps,
                                                                args.face_px, args.atol)
        for d in args.checkpoint:
            results["measured"][Path(d.rstrip("/")).name] = bench_checkpoint(d, args.device, args.rows, args.reps,
                                                                             args.face_px, args.atol)
        prompts = {}
        for key, shape in shapes.items():
            mllm = load_model(dirs[shape.tiny_family]).mllm
            prompts[key] = (shape, prompt_tokens(mllm, mllm.face_inputs(face_batch(16, 112, seed=1)), args.tokenizer))
    results["flops"] = flops_rows(prompts, args.peak_tflops, args.mfu)
    print_report(results)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


def print_report(r: dict[str, Any]) -> None:
    print(f"scoring FE + 23 AU questions, {r['device']}, {r['torch_threads']} threads, median of {r['reps']} "
          f"alternating rounds, {r['face_px']} px faces")
    print(f"{'model':<22} {'rows':>4} {'reuse f/s':>10} {'no-reuse f/s':>13} {'speed-up':>9} {'max |diff|':>11}  agree")
    for name, m in r["measured"].items():
        print(f"{name:<22} {m['rows']:>4} {m['reuse_faces_per_s']:>10.1f} {m['no_reuse_faces_per_s']:>13.1f} "
              f"{m['reuse_speedup']:>8.2f}x {m['max_abs_diff']:>11.1e}  {m['scores_agree']}")
    print(f"\nanalytic, one 224 px face, prompt tokens by {r['tokenizer']}; H100 ceiling at "
          f"{r['peak_tflops']:g} TFLOP/s bf16 dense (and at {r['mfu']:.0%} MFU)")
    for f in r["flops"].values():
        print(f"{f['name']}: {f['image_tokens']} image + {f['prefix_text_tokens']:.0f} text tokens of prefix, "
              f"{f['questions']} questions of {f['question_tokens']} tokens (longest {f['longest_question']})")
        for mode, label in (("reuse", "prefix reuse"), ("no_reuse", "no reuse")):
            print(f"  {label:<13} {f[f'{mode}_flops'] / 1e12:7.2f} TFLOP/face (vision "
                  f"{f[f'{mode}_vision_flops'] / 1e12:.2f}; as executed {f[f'{mode}_executed_flops'] / 1e12:.2f})"
                  f"  ceiling {f[f'{mode}_h100_peak_faces_per_s']:7.1f} faces/s, "
                  f"{f[f'{mode}_h100_at_mfu_faces_per_s']:6.1f} at {r['mfu']:.0%} MFU")
        print(f"  analytic reuse speed-up {f['analytic_reuse_speedup']:.2f}x; executed/useful with reuse "
              f"{f['executed_over_useful_reuse']:.2f}x (as one padded pass of every question: "
              f"{f['reuse_one_pass_executed_flops'] / 1e12:.2f} TFLOP/face, "
              f"{f['reuse_one_pass_executed_flops'] / f['reuse_flops']:.2f}x)")


if __name__ == "__main__":
    raise SystemExit(main())
