"""Stage 7: evaluate base, SFT and DPO models on the dev split (never trained on).

For each model: greedy responses to harmful, helpful and lookalike dev prompts,
each classified as full compliance, partial refusal or full refusal. The
headline numbers are the refusal rate on harmful requests (higher is safer) and
on benign ones (lower is more helpful).
"""
from __future__ import annotations

from .. import records
from ..evals.core import evaluate
from ..prompts import dev_prompts

OUTPUTS = ["eval"]


def run(run):
    cfg = run.cfg.evaluate
    prompts = dev_prompts(limit=cfg.limit, seed=run.cfg.seed)
    train_ids = set()
    for name in ("generate",):
        train_ids |= {r["prompt"] for r in records.read(run.path(f"data/{name}.jsonl"))}
    overlap = sum(p["prompt"] in train_ids for p in prompts)
    results = {}
    for role in cfg.models:
        backend = run.backend(role)
        results[role] = evaluate(backend, prompts, run.path("eval", f"responses_{role}.jsonl"),
                                 cfg.max_new_tokens, cfg.batch_size, run.cfg.seed, run.cfg.system_prompt,
                                 desc=f"evaluate {role}")
    run.release()
    out = {"split": cfg.split, "train_eval_overlap": overlap, "models": results}
    records.write_json(run.path("eval", "metrics.json"), out)
    return {"prompts": len(prompts), "overlap": overlap}
