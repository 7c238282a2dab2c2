"""Stage 4: sample response pairs from the SFT model (CAI paper, section 4.1).

Two samples per prompt at a high temperature, over red-team, helpful and
lookalike training prompts, so the supervisor sees both harmful requests
(where refusing is right) and harmless ones (where answering is right).

With `pairs.samples` k > 2, each prompt gets k samples and its pair is the best
and the worst of them under the supervisor's two-sided reward: on-policy pairs,
both sides from the model DPO trains. A prompt whose samples the reward cannot
tell apart (all refuse, or all answer) yields no pair, since it teaches nothing.
"""
from __future__ import annotations

import random

from .. import records
from ..backends import GenParams
from ..supervise.reward import request_scorer, two_sided
from .common import (GENERATE, PAIRS, PAIRS_A, PAIRS_B, PAIRS_SAMPLES, SFT_MODEL, generate_into, rewrite,
                     train_prompts)

INPUTS = [SFT_MODEL, GENERATE]  # the base model's responses: read with pairs.base_side
OUTPUTS = [PAIRS, PAIRS_A, PAIRS_B, PAIRS_SAMPLES]
MIN_GAP = 0.5  # reward gap for a k-sample pair: about a different refusal class on a confident request


def best_and_worst(run, rows, params) -> list[dict]:
    """k samples per row from the SFT model; the pair is the best (a) and the worst (b) by the reward."""
    k = run.cfg.pairs.samples
    got = generate_into(run, "pairs", run.path(PAIRS_SAMPLES),
                        [{**r, "id": f"{r['id']}/{s}"} for r in rows for s in range(k)], "sft", params,
                        desc=f"pairs ({k} samples)")
    texts = {r["id"]: r["response"] for r in got}
    p_harm = request_scorer(run.supervisor)([r["prompt"] for r in rows])
    out = []
    for r, p in zip(rows, p_harm):
        scored = sorted((two_sided(p, texts[f"{r['id']}/{s}"]), texts[f"{r['id']}/{s}"]) for s in range(k))
        (low, worst), (high, best) = scored[0], scored[-1]
        if high - low >= MIN_GAP:
            out.append({**r, "a": best, "b": worst, "reward_a": round(high, 4), "reward_b": round(low, 4)})
    return out


def run(run):
    cfg = run.cfg.pairs
    prompts = train_prompts(run)
    rng = random.Random(run.cfg.seed + 1)
    rng.shuffle(prompts)
    rows = [{**p, "id": f"{p['id']}#{k}"} for k in range(cfg.per_prompt) for p in prompts][: cfg.max_pairs]
    def params(offset=0):
        return GenParams(cfg.max_new_tokens, cfg.temperature, 0.95, run.cfg.seed + offset, cfg.batch_size)

    if cfg.samples > 2:
        keep = ("id", "prompt", "label", "category", "pool", "a", "b", "reward_a", "reward_b")
        chosen = best_and_worst(run, rows, params())
        rewrite(run, PAIRS, [{k: r[k] for k in keep} | {"model": SFT_MODEL, "model_b": SFT_MODEL} for r in chosen],
                "pairs")
        return {"pairs": len(chosen), "prompts_without_pair": len(rows) - len(chosen)}
    sides = {}
    if cfg.base_side:
        base = {r["id"]: r["response"] for r in records.read(run.path(GENERATE))}
        sides["b"] = {r["id"]: base[r["id"].rsplit("#", 1)[0]] for r in rows}
    for side, offset in (("a", 0), ("b", 50021)):
        if side in sides:
            continue
        got = generate_into(run, "pairs", run.path(PAIRS_A if side == "a" else PAIRS_B), rows, "sft", params(offset),
                            desc=f"pairs ({side})")
        sides[side] = {r["id"]: r["response"] for r in got}
    rewrite(run, PAIRS, [{k: r[k] for k in ("id", "prompt", "label", "category", "pool")} |
                         {"a": sides["a"][r["id"]], "b": sides["b"][r["id"]], "model": SFT_MODEL,
                          "model_b": run.cfg.model if cfg.base_side else SFT_MODEL} for r in rows], "pairs")
    return {"pairs": len(rows)}
