"""Supervisors: who decides which of two responses is better under the constitution.

Specs: `default` (the classifier supervisor `configs/default.yaml` uses),
`classifier[:CONSTITUTION]`, `llm:MODEL[:cot]`, `ensemble:MODEL`.
"""
from __future__ import annotations

from ..errors import CharterError
from .base import Ensemble, Supervisor, position_inconsistent, verdict  # noqa: F401


def default_pool_rows(seed=0):
    from ..config import PoolsConfig
    from ..prompts import load_pool

    pools = PoolsConfig()
    return [r for name in ("redteam", "helpful", "lookalike") for r in load_pool(name, getattr(pools, name), seed)]


def get_supervisor(spec: str, constitution=None, pool_rows=None, device="auto", seed=0, **classifier):
    """`classifier` keywords go to `classifier.build` (probe_model, depth, weight_decay, router)."""
    from ..constitution import load_constitution

    kind, _, rest = spec.partition(":")
    if kind in ("default", "classifier"):
        from .classifier import build

        constitution = constitution or load_constitution(rest or "default")
        rows = pool_rows if pool_rows is not None else default_pool_rows(seed)
        return build(constitution, rows, device=device, **classifier)
    if kind in ("llm", "ensemble"):
        from ..backends import get_backend
        from .llm_judge import LLMJudge

        model, cot = rest, False
        if model.endswith(":cot"):
            model, cot = model[:-4], True
        if not model:
            raise CharterError(f"supervisor {spec!r}: name a judge model, e.g. llm:default")
        judge = LLMJudge(get_backend(model, device=device), constitution or load_constitution("default"),
                         seed=seed, cot=cot)
        if kind == "llm":
            return judge
        return Ensemble([get_supervisor("classifier", constitution, pool_rows, device, seed, **classifier),
                         judge])
    raise CharterError(f"unknown supervisor {spec!r} (use default, classifier, llm:MODEL or ensemble:MODEL)")


def from_config(run) -> Supervisor:
    import dataclasses

    from ..prompts import load_pool

    cfg = run.cfg.supervisor
    # The supervisor learns from whole pools: `limit` caps generation work, not its training data.
    rows = [r for name in ("redteam", "helpful", "lookalike")
            for r in load_pool(name, dataclasses.replace(getattr(run.cfg.pools, name), limit=None), run.cfg.seed)]

    spec = {"classifier": "classifier", "llm": f"llm:{cfg.model}", "ensemble": f"ensemble:{cfg.model}"}[cfg.kind]
    if cfg.cot and cfg.kind != "classifier":
        spec += ":cot"
    return get_supervisor(spec, run.constitution, rows, run.cfg.device, run.cfg.seed, model=cfg.probe_model,
                          depth=cfg.probe_depth, weight_decay=cfg.probe_weight_decay, router=cfg.router)
