"""Stage 1: initial responses from the base model to every training prompt.

These are the responses that the critique/revise stage improves (CAI paper,
section 3.1), and, for helpful prompts, part of the SFT mix that keeps the
model helpful.
"""
from __future__ import annotations

from ..backends import GenParams
from .common import GENERATE, generate_into, train_prompts

INPUTS = []
OUTPUTS = [GENERATE]


def run(run):
    cfg = run.cfg.generate
    rows = train_prompts(run)
    params = GenParams(cfg.max_new_tokens, cfg.temperature, cfg.top_p, run.cfg.seed, cfg.batch_size)
    out = generate_into(run, "generate", run.path(GENERATE), rows, "base", params)
    return {"records": len(out)}
