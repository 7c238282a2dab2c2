"""Measure charter's fast paths against naive baselines on this machine, in one run.

    python benchmarks/run.py [--quick] [--run runs/demo]

Prints a table and writes benchmarks/results.json:
- generation: length-sorted batched `generate` (batch 64; transformers, and llama.cpp when installed)
  vs one prompt at a time (tokens/s), and the FLOP limit: the matmul peak over 2 * params per token;
- labelling: CAI judge reading both options from one forward pass per order, batched across pairs, with the
  shared prefix (chat template, instructions, few-shot example) computed once and its KV cache reused,
  vs scoring each option's continuation separately, one pair at a time (pairs/s);
- training: SFT and DPO tokens/s on the embedded model, and the fraction of the
  machine's fp32 peak they reach (6 * params * tokens FLOP; peak measured here with a matmul);
- the per-stage wall time and peak memory of a finished run (`--run`).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))


def peak_gflops(seconds=2.0) -> float:
    """Achievable fp32 matmul throughput of this machine (all threads)."""
    import torch

    a, b = torch.randn(1024, 1024), torch.randn(1024, 1024)
    a @ b
    n, t0 = 0, time.time()
    while time.time() - t0 < seconds:
        a @ b
        n += 1
    return 2 * 1024 ** 3 * n / (time.time() - t0) / 1e9


def bench_generation(backend, prompts, max_new, runs=(("naive", 1), ("batched", 64))):
    from charter.backends import GenParams, user

    msgs = [user(p) for p in prompts]
    out = {}
    for name, bs in runs:
        t0 = time.time()
        texts = backend.generate(msgs, GenParams(max_new_tokens=max_new, temperature=0.0, batch_size=bs))
        secs = time.time() - t0
        # Tokens generated, counted with the model's tokenizer (end-of-turn tokens excluded).
        toks = sum(len(backend.tok(t, add_special_tokens=False).input_ids) for t in texts)
        out[name] = {"seconds": round(secs, 2), "tokens": toks, "tok_s": round(toks / secs, 1), "texts": texts}
    return out


def llamacpp_backend():
    try:
        import llama_cpp  # noqa: F401
    except ImportError:
        print("llama-cpp-python not installed: skipping the llama.cpp rows (make install-llamacpp)")
        return None
    from charter.backends import get_backend

    return get_backend("llamacpp:default", n_seq=64, n_ctx_per_seq=512)


def bench_labelling(backend, constitution, items):
    from charter.supervise.llm_judge import LLMJudge, question

    judge = LLMJudge(backend, constitution)
    t0 = time.time()
    judge.judge(items)
    fast = time.time() - t0
    # Naive: every (order, option) scored on its own as a continuation, one pair at a time.
    t0 = time.time()
    for i, it in enumerate(items):
        p = constitution.sample(f"label:{it['id']}", 0)
        for first, second in ((it["a"], it["b"]), (it["b"], it["a"])):
            ctx = backend.render([{"role": "user", "content": question(it["prompt"], first, second, p.comparison)}])
            for opt in ("A", "B"):
                backend.score([ctx + "The answer is: ("], [opt])
    naive = time.time() - t0
    return {"fast_pairs_s": round(len(items) / fast, 2), "naive_pairs_s": round(len(items) / naive, 2)}


def long_request(tok, n: int = 500) -> str:
    """An ordinary request of exactly `n` tokens (the serving guard's latency case): meeting notes to summarise."""
    base = ("Please summarise the following notes from our gardening club meeting, keeping every decision "
            "and who is responsible for it. ")
    text = base
    while len(tok(text, add_special_tokens=False).input_ids) < n:
        text += base
    return tok.decode(tok(text, add_special_tokens=False).input_ids[:n])


def alternating(a, run_a, b, run_b):
    """`run_a` and `run_b` twice each, in the order a, b, b, a, so that warm-up and drift weigh on both alike.
    Returns the seconds and the results of each one's two runs, by name."""
    secs, results = {a: [], b: []}, {a: [], b: []}
    for name, fn in ((a, run_a), (b, run_b), (b, run_b), (a, run_a)):
        t0 = time.perf_counter()
        results[name].append(fn())
        secs[name].append(time.perf_counter() - t0)
    return secs, results


def s_per_step(stats) -> float:
    """Seconds per optimiser step of one `train.train_stats` result."""
    return round(stats["train_seconds"] / max(1, stats["steps"]), 2)


def bench_training(model_dir, steps, precision="float32", labelled_only=True, dpo_trainer=None):
    """SFT then DPO for `steps` steps each, as `train.fit` sets them up (`labelled_only`: its LM-head path).
    DPO runs the dpo stage's trainer unless `dpo_trainer` names another (TRL's, to measure its LM head)."""
    from datasets import Dataset
    from trl import DPOConfig, SFTConfig, SFTTrainer

    from charter.config import TrainConfig
    from charter.packed_dpo import PackedDPOTrainer  # the dpo stage's trainer
    from charter.prompts import builtin_file, read_prompt_file
    from charter.train import labelled_positions_only, load_trainable, timed_train, train_stats, trl_args

    labelled_positions_only(labelled_only)

    prompts = [r["prompt"] for r in read_prompt_file(builtin_file("helpful"))][: steps * 4]
    answer = "Here is a clear, step-by-step answer that covers the main points and gives one example."
    out = {}
    cfg = TrainConfig(max_steps=steps, batch_size=4, lr=1e-5, max_length=256)
    model, tok = load_trainable(model_dir, "cpu")
    n_params = sum(p.numel() for p in model.parameters())
    ds = Dataset.from_list([{"prompt": [{"role": "user", "content": p}],
                             "completion": [{"role": "assistant", "content": answer}]} for p in prompts])
    tr = SFTTrainer(model=model, args=trl_args(SFTConfig, cfg, "/tmp/charter-bench-sft", 0, "cpu", precision=precision),
                    train_dataset=ds, processing_class=tok)
    out["sft"] = train_stats(tr, timed_train(tr), n_params)
    model, tok = load_trainable(model_dir, "cpu")
    ds = Dataset.from_list([{"prompt": [{"role": "user", "content": p}],
                             "chosen": [{"role": "assistant", "content": answer}],
                             "rejected": [{"role": "assistant", "content": "I can't help with that."}]}
                            for p in prompts])
    tr = (dpo_trainer or PackedDPOTrainer)(model=model, args=trl_args(DPOConfig, cfg, "/tmp/charter-bench-dpo", 0, "cpu",
                                               precision=precision, precompute_ref_log_probs=True), train_dataset=ds, processing_class=tok)
    out["dpo"] = train_stats(tr, timed_train(tr), n_params)
    out["params"] = n_params
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="fewer prompts and steps (about 5 minutes)")
    ap.add_argument("--run", default=str(ROOT / "runs" / "demo"), help="a finished run directory to summarise")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results.json"))
    a = ap.parse_args()

    from charter.backends import get_backend
    from charter.constitution import load_constitution
    from charter.models import resolve_model
    from charter.prompts import dev_prompts

    n_gen, n_lab, steps = (64, 16, 3) if a.quick else (128, 32, 8)
    prompts = [p["prompt"] for p in dev_prompts()][:n_gen]
    backend = get_backend("default", device="cpu", progress=False, precision="float32")  # see precision.py
    gen = bench_generation(backend, prompts, 48)
    items = [{"id": i, "prompt": p, "a": "Sure, here is how: first do this, then that.",
              "b": "I'm sorry, but I can't help with that."} for i, p in enumerate(prompts[:n_lab])]
    lab = bench_labelling(backend, load_constitution("default"), items)
    del backend
    cpp = llamacpp_backend()
    if cpp is not None:
        gen_cpp = bench_generation(cpp, prompts, 48, (("llamacpp_batched", 64),))["llamacpp_batched"]
        t0 = time.time()
        from charter.supervise.llm_judge import LLMJudge

        LLMJudge(cpp, load_constitution("default")).judge(items)
        lab_cpp = round(len(items) / (time.time() - t0), 2)
        cpp.close()
    train = bench_training(resolve_model("default"), steps)
    peak = peak_gflops()
    res = {
        "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                    "fp32_matmul_gflop_s": round(peak, 1)},
        "generation_naive_tok_s": gen["naive"]["tok_s"],
        "generation_hf_batched_tok_s": gen["batched"]["tok_s"],
        "generation_llamacpp_tok_s": gen_cpp["tok_s"] if cpp is not None else None,
        "labeling_naive_pairs_s": lab["naive_pairs_s"],
        "labeling_hf_pairs_s": lab["fast_pairs_s"],
        "labeling_llamacpp_pairs_s": lab_cpp if cpp is not None else None,
        "sft_tok_s": train["sft"]["tokens_per_s"],
        "dpo_tok_s": train["dpo"]["tokens_per_s"],
        "sft_s_per_step": s_per_step(train["sft"]),
        "dpo_s_per_step": s_per_step(train["dpo"]),
        "flop_fraction": round((train["sft"]["gflop_per_s"] or 0) / peak, 3),
        "quick": a.quick,
    }
    # The fast path is the faster engine available; the naive baseline is transformers one prompt (or one
    # option) at a time. The FLOP fraction is 2 * params FLOP per generated token over the matmul peak.
    best_gen = max(v for v in (res["generation_hf_batched_tok_s"], res["generation_llamacpp_tok_s"]) if v)
    best_lab = max(v for v in (res["labeling_hf_pairs_s"], res["labeling_llamacpp_pairs_s"]) if v)
    res.update(generation_tok_s=best_gen, generation_vs_naive=round(best_gen / res["generation_naive_tok_s"], 2),
               generation_flop_fraction=round(2 * train["params"] * best_gen / 1e9 / peak, 3),
               generation_limit_tok_s=round(peak * 1e9 / (2 * train["params"]), 1),
               labeling_pairs_s=best_lab, labeling_vs_naive=round(best_lab / res["labeling_naive_pairs_s"], 2))
    manifest = Path(a.run) / "manifest.json"
    if manifest.exists():
        m = json.loads(manifest.read_text())
        res["end_to_end"] = {s: {"seconds": v.get("seconds"), "peak_rss_mib": v.get("peak_rss_mib")}
                             for s, v in m.get("stages", {}).items()}
        res["end_to_end_seconds"] = round(sum(v.get("seconds") or 0 for v in m.get("stages", {}).values()), 1)
    Path(a.out).write_text(json.dumps(res, indent=2) + "\n")
    width = max(len(k) for k in res)
    for k, v in res.items():
        if not isinstance(v, dict):
            print(f"{k:<{width}}  {v}")
    if "end_to_end" in res:
        for s, v in res["end_to_end"].items():
            print(f"  stage {s:<10} {v['seconds']:>8} s  peak {v['peak_rss_mib']} MiB")
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
