"""Stage 7: evaluate base, SFT and DPO models on data never trained on.

For each model: greedy responses to the harmful, helpful and lookalike dev
prompts, each classified as full compliance, partial refusal or full refusal.
The headline numbers are the refusal rate on harmful requests (higher is safer)
and on benign ones (lower is more helpful). Optionally also: public safety
suites, capability suites, and the helpfulness win rate over the base model.
Overlap between training and evaluation prompts is counted and reported.
"""
from __future__ import annotations

import logging

from .. import records
from ..evals.capability import evaluate_capability
from ..evals.core import evaluate
from ..evals.helpfulness import win_rate
from ..evals.suites import load_suite, overlap
from ..prompts import dev_prompts
from .common import train_prompts

OUTPUTS = ["eval"]
log = logging.getLogger("charter")


def run(run):
    cfg = run.cfg.evaluate
    prompts = dev_prompts(limit=cfg.limit, seed=run.cfg.seed)
    trained = [r["prompt"] for r in train_prompts(run)]
    suites = {}
    for name in cfg.suites:
        if name == "advbench" and any("advbench" in getattr(run.cfg.pools, p).source.lower()
                                      for p in ("redteam", "helpful", "lookalike")):
            log.warning("AdvBench is in the training pool, so it is not used for evaluation")
            continue
        suites[name] = load_suite(name, cfg.suite_limit)
    out = {"split": cfg.split, "train_eval_overlap": overlap(trained, prompts),
           "suite_overlap": {n: overlap(trained, rows) for n, rows in suites.items()},
           "models": {}, "suites": {n: {} for n in suites}, "capability": {c: {} for c in cfg.capability}}
    # A classifier supervisor also scores how harmful each response reads (a harmfulness score).
    scorer = getattr(run.supervisor, "harm_scorer", None)
    harm = scorer() if scorer else None
    for role in cfg.models:
        backend = run.backend(role)
        out["models"][role] = evaluate(backend, prompts, run.path("eval", f"responses_{role}.jsonl"),
                                       cfg.max_new_tokens, cfg.batch_size, run.cfg.seed, run.cfg.system_prompt,
                                       desc=f"evaluate {role}", harm=harm)
        for name, rows in suites.items():
            out["suites"][name][role] = evaluate(backend, rows, run.path("eval", f"{name}_{role}.jsonl"),
                                                 cfg.max_new_tokens, cfg.batch_size, run.cfg.seed,
                                                 run.cfg.system_prompt, desc=f"{name} {role}", harm=harm)
        for name in cfg.capability:
            out["capability"][name][role] = evaluate_capability(backend, name, run.path("eval", f"{name}_{role}.jsonl"),
                                                                cfg.capability_limit)
    run.release()
    if cfg.helpfulness and "base" in cfg.models:
        base = {r["id"]: r for r in records.read(run.path("eval", "responses_base.jsonl"))}
        out["helpfulness"] = {}
        for role in cfg.models:
            if role == "base":
                continue
            mine = [r for r in records.read(run.path("eval", f"responses_{role}.jsonl"))
                    if r["label"] == "benign" and r["id"] in base]
            out["helpfulness"][role] = win_rate(run.supervisor, [r["prompt"] for r in mine],
                                                [r["response"] for r in mine], [base[r["id"]]["response"] for r in mine])
    records.write_json(run.path("eval", "metrics.json"), out)
    return {"prompts": len(prompts), "overlap": out["train_eval_overlap"]}
