"""Supervisors: who decides which of two responses is better under the constitution.

Specs: `default` (the classifier supervisor `configs/default.yaml` uses),
`classifier[:CONSTITUTION]`, `llm:MODEL[:cot]`, `ensemble:MODEL`.
"""
from __future__ import annotations

from ..errors import CharterError
from ..registry import Registry
from .base import Ensemble, Supervisor, position_inconsistent, verdict  # noqa: F401


def default_pool_rows(seed=0):
    from ..config import PoolsConfig
    from ..prompts import load_pool

    pools = PoolsConfig()
    return [r for name in ("redteam", "helpful", "lookalike") for r in load_pool(name, getattr(pools, name), seed)]


SUPERVISORS = Registry("supervisor", {
    "default": "charter.supervise:_classifier",
    "classifier": "charter.supervise:_classifier",
    "llm": "charter.supervise:_llm",
    "ensemble": "charter.supervise:_ensemble",
}, usage="default, classifier, llm:MODEL or ensemble:MODEL")


def get_supervisor(spec: str, constitution=None, pool_rows=None, device="auto", seed=0, **classifier):
    """`classifier` keywords go to `classifier.build` (model, depths, weight_decay, router, public, target_fpr)."""
    make, rest = SUPERVISORS.resolve(spec)
    return make(rest, constitution, pool_rows, device, seed, **classifier)


def _classifier(rest, constitution, pool_rows, device, seed, **classifier):
    from ..constitution import load_constitution
    from .classifier import build

    constitution = constitution or load_constitution(rest or "default")
    rows = pool_rows if pool_rows is not None else default_pool_rows(seed)
    return build(constitution, rows, device=device, **classifier)


def _llm(rest, constitution, pool_rows, device, seed, **_):
    from ..backends import get_backend
    from ..constitution import load_constitution
    from .llm_judge import LLMJudge

    model = rest.removesuffix(":cot")
    if not model:
        raise CharterError(f"supervisor {rest!r}: name a judge model, e.g. llm:default")
    return LLMJudge(get_backend(model, device=device), constitution or load_constitution("default"), seed=seed,
                    cot=rest.endswith(":cot"))


def _ensemble(rest, constitution, pool_rows, device, seed, **classifier):
    return Ensemble([_classifier("", constitution, pool_rows, device, seed, **classifier),
                     _llm(rest, constitution, pool_rows, device, seed)])


def from_config(run) -> Supervisor:
    from ..prompts import load_pool

    cfg = run.cfg.supervisor
    # The supervisor learns from whole pools: `limit` caps generation work, not its training data.
    rows = [r for name in ("redteam", "helpful", "lookalike")
            for r in load_pool(name, getattr(run.cfg.pools, name).model_copy(update={"limit": None}), run.cfg.seed)]

    spec = {"classifier": "classifier", "llm": f"llm:{cfg.model}", "ensemble": f"ensemble:{cfg.model}"}[cfg.kind]
    if cfg.cot and cfg.kind != "classifier":
        spec += ":cot"
    return get_supervisor(spec, run.constitution, rows, run.cfg.device, run.cfg.seed, model=cfg.probe_model,
                          depths=tuple(cfg.probe_depths), weight_decay=cfg.probe_weight_decay, router=cfg.router,
                          public=tuple(cfg.train_public), target_fpr=cfg.target_fpr,
                          dtype=cfg.probe_dtype)
