"""The VLM benchmark: both scoring modes measured and agreeing, and the 7B FLOPs accounting."""

from __future__ import annotations

import json

import pytest

from bench import bench_vlm, run


def test_bench_vlm_measures_both_modes_and_counts_7b_flops(tmp_path, capsys):
    out = tmp_path / "vlm.json"
    assert bench_vlm.main(["--families", "llava", "--rows", "2", "--reps", "1", "--json", str(out)]) == 0
    r = json.loads(out.read_text())
    m = r["measured"]["tiny_llava"]
    assert m["reuse_faces_per_s"] > 0 and m["no_reuse_faces_per_s"] > 0 and m["reuse_speedup"] > 0
    assert m["scores_agree"] is True and m["max_abs_diff"] <= 1e-4
    qwen, llava = r["flops"]["qwen2_5_vl_7b"], r["flops"]["llava_1_5_7b"]
    assert (qwen["image_tokens"], llava["image_tokens"]) == (64, 576)
    for f in (qwen, llava):
        assert f["questions"] == 24 and f["prefix_text_tokens"] > 40  # system text + context, measured
        assert 1e12 < f["reuse_flops"] < 1e14 and 1e13 < f["no_reuse_flops"] < 1e15
        assert f["no_reuse_flops"] > 4 * f["reuse_flops"]  # 24 full passes vs one prefill
        assert f["reuse_executed_flops"] >= f["reuse_flops"]  # padding and full logits only add
        assert f["reuse_h100_peak_faces_per_s"] == pytest.approx(989e12 / f["reuse_flops"])
        assert f["reuse_h100_at_mfu_faces_per_s"] == pytest.approx(0.4 * f["reuse_h100_peak_faces_per_s"])
    assert llava["reuse_flops"] > qwen["reuse_flops"]  # 576 image tokens vs 64
    assert "TFLOP/face" in capsys.readouterr().out
    rows = dict(run.summary_rows({"vlm": r}))
    assert rows["VLM tiny_llava, prefix reuse vs none"].endswith(f"({m['reuse_speedup']:.2f}x)")
    assert "H100 ceiling" in rows["Qwen2.5-VL-7B scoring, analytic"]


def test_7b_shapes_match_the_published_parameter_counts():
    qwen, llava = bench_vlm.qwen2_5_vl_7b(), bench_vlm.llava_1_5_7b()
    # 2 FLOPs per parameter per token: Qwen2.5-7B has 6.53 B non-embedding parameters, LLaMA-7B 6.48 B
    assert qwen.llm.linear_flops_per_token() / 2 == pytest.approx(6.53e9, rel=0.01)
    assert llava.llm.linear_flops_per_token() / 2 == pytest.approx(6.48e9, rel=0.01)
    # Qwen2.5-VL's ViT: 256 patches of a 224 px face, merged 2x2 into 64 LM tokens
    assert qwen.image_tokens == 64 and qwen.vision[0][1] == 256


def test_one_question_costs_the_same_with_and_without_reuse():
    """The reuse accounting splits one pass in two: with a single question nothing is saved."""
    shape = bench_vlm.qwen2_5_vl_7b()
    one = bench_vlm.PromptTokens(prefix_text=80, questions=(30,), reads=((1,),), passes=((0,),))
    reuse = bench_vlm.scoring_flops(shape, one, reuse_prefix=True)
    full = bench_vlm.scoring_flops(shape, one, reuse_prefix=False)
    assert reuse["total"] == pytest.approx(full["total"])
    # FE (40 tokens) and two AU questions (20) as the scorer runs them: two passes, each padded to its
    # own longest, logits only where read: exactly the useful FLOPs
    many = bench_vlm.PromptTokens(prefix_text=80, questions=(40, 20, 20), reads=((1,), (1,), (1,)),
                                  passes=((0,), (1, 2)))
    useful = bench_vlm.scoring_flops(shape, many, reuse_prefix=True)["llm"]
    assert bench_vlm.scoring_flops(shape, many, reuse_prefix=True, executed=True)["llm"] == pytest.approx(useful)
    # as one pass: every row padded to 40, and logits at both read positions
    one_pass = bench_vlm.scoring_flops(shape, many.one_pass(), reuse_prefix=True, executed=True)["llm"]
    padded = bench_vlm.PromptTokens(prefix_text=80, questions=(40, 40, 40), reads=((1,), (1,), (1,)),
                                    passes=((0, 1, 2),))
    assert one_pass > bench_vlm.scoring_flops(shape, padded, reuse_prefix=True)["llm"] > useful
