"""Stage 4: sample response pairs from the SFT model (CAI paper, section 4.1).

Two samples per prompt at a high temperature, over red-team, helpful and
lookalike training prompts, so the supervisor sees both harmful requests
(where refusing is right) and harmless ones (where answering is right).
"""
from __future__ import annotations

import random

from .. import records
from ..backends import GenParams
from .common import GENERATE, PAIRS, PAIRS_A, PAIRS_B, SFT_MODEL, generate_into, rewrite, train_prompts

INPUTS = [SFT_MODEL, GENERATE]  # the base model's responses: read with pairs.base_side
OUTPUTS = [PAIRS, PAIRS_A, PAIRS_B]


def run(run):
    cfg = run.cfg.pairs
    prompts = train_prompts(run)
    rng = random.Random(run.cfg.seed + 1)
    rng.shuffle(prompts)
    rows = [{**p, "id": f"{p['id']}#{k}"} for k in range(cfg.per_prompt) for p in prompts][: cfg.max_pairs]
    sides = {}
    if cfg.base_side:
        base = {r["id"]: r["response"] for r in records.read(run.path(GENERATE))}
        sides["b"] = {r["id"]: base[r["id"].rsplit("#", 1)[0]] for r in rows}
    for side, offset in (("a", 0), ("b", 50021)):
        if side in sides:
            continue
        params = GenParams(cfg.max_new_tokens, cfg.temperature, 0.95, run.cfg.seed + offset, cfg.batch_size)
        got = generate_into(run, "pairs", run.path(PAIRS_A if side == "a" else PAIRS_B), rows, "sft", params,
                            desc=f"pairs ({side})")
        sides[side] = {r["id"]: r["response"] for r in got}
    rewrite(run, PAIRS, [{k: r[k] for k in ("id", "prompt", "label", "category", "pool")} |
                         {"a": sides["a"][r["id"]], "b": sides["b"][r["id"]], "model": SFT_MODEL,
                          "model_b": run.cfg.model if cfg.base_side else SFT_MODEL} for r in rows], "pairs")
    return {"pairs": len(rows)}
