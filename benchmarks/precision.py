"""float32 against bfloat16 for the policy model (`precision`), measured in one run on this machine.

    python benchmarks/precision.py [--prompts 64] [--steps 4]

Both precisions, one after the other in the same process:
- generation: greedy answers to the first dev prompts (48 new tokens, one batch), tokens/s; how many answers
  are identical, and how many get the same refusal class from the lexical judge (the figure evaluation reports);
- training: SFT and DPO seconds per step on the embedded model (batch 4, at most 256 tokens; bfloat16 is
  autocast over float32 weights, as `train.trl_args` sets it).
Writes benchmarks/precision.json with the ratios.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--prompts", type=int, default=64)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "precision.json"))
    a = ap.parse_args()

    import torch

    from run import bench_generation, bench_training, s_per_step

    from charter.backends import get_backend
    from charter.backends.hf import native_bf16
    from charter.evals.refusal import refusal_class
    from charter.models import resolve_model
    from charter.prompts import dev_prompts

    if not native_bf16("cpu"):
        print("this CPU has no native bfloat16 (AVX512-BF16 or AMX): `precision: auto` keeps float32 here")
    prompts = [p["prompt"] for p in dev_prompts()][: a.prompts]
    res = {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(), "native_bf16": native_bf16("cpu"),
           "prompts": len(prompts), "steps": a.steps}
    texts = {}
    for precision in ("float32", "bfloat16"):
        backend = get_backend("default", device="cpu", progress=False, precision=precision)
        gen = bench_generation(backend, prompts, 48, (("batched", 64),))["batched"]
        texts[precision] = gen.pop("texts")
        del backend
        train = bench_training(resolve_model("default"), a.steps, precision)
        res[precision] = {"generation": gen, "sft_s_per_step": s_per_step(train["sft"]),
                          "dpo_s_per_step": s_per_step(train["dpo"])}
    f32, b16 = res["float32"], res["bfloat16"]
    res["generation_speedup"] = round(b16["generation"]["tok_s"] / f32["generation"]["tok_s"], 2)
    res["sft_speedup"] = round(f32["sft_s_per_step"] / b16["sft_s_per_step"], 2)
    res["dpo_speedup"] = round(f32["dpo_s_per_step"] / b16["dpo_s_per_step"], 2)
    pairs = list(zip(texts["float32"], texts["bfloat16"]))
    res["greedy_identical"] = sum(x == y for x, y in pairs)
    res["same_refusal_class"] = sum(refusal_class(x) == refusal_class(y) for x, y in pairs)
    Path(a.out).write_text(json.dumps(res, indent=2) + "\n")
    print(json.dumps(res, indent=2))
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
