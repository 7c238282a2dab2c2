"""Stage 9: evaluate the base model and every model the run trained, on data never trained on.

For each model: greedy responses to the harmful, helpful and lookalike dev
prompts, each classified as full compliance, partial refusal or full refusal.
The headline numbers are the refusal rate on harmful requests (higher is safer)
and on benign ones (lower is more helpful). Optionally also: public safety
suites, capability suites, and the helpfulness win rate over the base model.
Overlap between training and evaluation prompts is counted and reported. The
stage also measures its refusal judge against XSTest's human labels, and picks
the before/after examples the report shows, each with the supervisor's verdict.
"""
from __future__ import annotations

import logging

from .. import records
from ..backends import GenParams
from ..errors import CharterError
from ..evals.capability import capability_missing, evaluate_capability
from ..evals.core import eval_chunk, summarize
from ..evals.helpfulness import win_rate
from ..evals.refusal_calibration import calibrate_refusal
from ..executor import map_chunks
from ..evals.suites import load_if_present, overlap
from ..prompts import dev_prompts
from .common import EVAL, METRICS, REFUSAL_CALIBRATION, train_prompts

INPUTS = []  # and the models `evaluate.models` names, which `Run.model_spec` checks
OUTPUTS = [EVAL]
log = logging.getLogger("charter")


def _harm(run):
    """A classifier supervisor also scores how harmful each response reads (a harmfulness score)."""
    scorer = getattr(run.supervisor, "harm_scorer", None)
    return scorer() if scorer else None


def evaluate_chunk(run, chunk, role: str) -> list[dict]:
    """Responses of model `role` to one chunk of prompts, classified (a chunk function, see executor)."""
    cfg = run.cfg.evaluate
    params = GenParams(cfg.max_new_tokens, 0.0, seed=run.cfg.seed, batch_size=cfg.batch_size)
    return eval_chunk(run.backend(role), chunk, params, run.cfg.system_prompt, harm=_harm(run))


def _evaluate(run, role, rows, path, desc):
    map_chunks(run, path, rows, run.cfg.evaluate.batch_size, desc, evaluate_chunk, role, unit="prompt")
    return summarize(rows, path, harm=_harm(run))


# The report's cards: both directions, successes and failures, so it never shows only what went well.
OUTCOMES = [("harmful", True, "harmful request, now declined"), ("benign", False, "harmless request, answered"),
            ("harmful", False, "failure: harmful request still answered"),
            ("benign", True, "failure: harmless request refused")]


def examples(run, roles, per_outcome=2) -> list[dict]:
    """Dev prompts answered by the base and the last aligned model, `per_outcome` for each of `OUTCOMES`
    (those whose refusal changed from the base first), each with the supervisor's verdict (the aligned
    response shown to it as `a`)."""
    if "base" not in roles or len(roles) < 2:
        return []
    last = roles[-1]
    base = {r["id"]: r for r in records.read(run.path(EVAL, "responses_base.jsonl"))}
    aligned = {r["id"]: r for r in records.read(run.path(EVAL, f"responses_{last}.jsonl"))}
    ids, outcome = [], {}
    for label, refused, name in OUTCOMES:
        match = [i for i in aligned if i in base and aligned[i]["label"] == label
                 and (aligned[i]["refusal"] != "full_compliance") == refused]
        for i in sorted(match, key=lambda i: aligned[i]["refusal"] == base[i]["refusal"])[:per_outcome]:
            ids.append(i)
            outcome[i] = name
    verdicts = run.supervisor.judge([{"id": i, "prompt": base[i]["prompt"], "a": aligned[i]["response"],
                                      "b": base[i]["response"]} for i in ids]) if ids else []
    return [{k: base[i][k] for k in ("id", "prompt", "label", "category")} | {
        "model": last, "outcome": outcome[i], "base": {k: base[i][k] for k in ("response", "refusal")},
        "aligned": {k: aligned[i][k] for k in ("response", "refusal")},
        "verdict": {"p_a": v["p_a"], "principles": list(v["principles"])}} for i, v in zip(ids, verdicts)]


def run(run):
    from ..run import trained_roles

    cfg = run.cfg.evaluate
    roles = cfg.models or ["base", *trained_roles(run.cfg)]
    prompts = dev_prompts(limit=cfg.limit, seed=run.cfg.seed)
    trained = [r["prompt"] for r in train_prompts(run)]
    suites, unavailable = {}, {}
    for name in cfg.suites:
        if name == "advbench" and any("advbench" in getattr(run.cfg.pools, p).source.lower()
                                      for p in ("redteam", "helpful", "lookalike")):
            log.warning("AdvBench is in the training pool, so it is not used for evaluation")
            continue
        rows, missing = load_if_present(name, cfg.suite_limit)  # absent data is said, not fatal
        if missing:
            unavailable[name] = missing
        else:
            suites[name] = rows
    unavailable |= {c: why for c in cfg.capability if (why := capability_missing(c))}
    capability = [c for c in cfg.capability if c not in unavailable]
    for name, why in unavailable.items():
        log.warning("evaluate: %s skipped (%s)", name, why)
    out = {"train_eval_overlap": overlap(trained, prompts),
           "suite_overlap": {n: overlap(trained, rows) for n, rows in suites.items()},
           "models": {}, "suites": {n: {} for n in suites}, "capability": {c: {} for c in capability},
           "unavailable": unavailable}
    for role in roles:
        out["models"][role] = _evaluate(run, role, prompts, run.path(EVAL, f"responses_{role}.jsonl"),
                                        f"evaluate {role}")
        for name, rows in suites.items():
            out["suites"][name][role] = _evaluate(run, role, rows, run.path(EVAL, f"{name}_{role}.jsonl"),
                                                  f"{name} {role}")
        for name in capability:
            out["capability"][name][role] = evaluate_capability(run.backend(role), name,
                                                                run.path(EVAL, f"{name}_{role}.jsonl"),
                                                                cfg.capability_limit, batch_size=cfg.batch_size)
    run.release()
    if cfg.helpfulness and "base" in roles:
        base = {r["id"]: r for r in records.read(run.path(EVAL, "responses_base.jsonl"))}
        out["helpfulness"] = {}
        for role in roles:
            if role == "base":
                continue
            mine = [r for r in records.read(run.path(EVAL, f"responses_{role}.jsonl"))
                    if r["label"] == "benign" and r["id"] in base]
            out["helpfulness"][role] = win_rate(run.supervisor, [r["prompt"] for r in mine],
                                                [r["response"] for r in mine], [base[r["id"]]["response"] for r in mine])
    out["examples"] = examples(run, roles)
    try:  # the judge behind these refusal rates, against XSTest's human labels
        refusal = calibrate_refusal()
    except CharterError as e:
        refusal = {"skipped": str(e)}
    records.write_json(run.path(REFUSAL_CALIBRATION), refusal)
    records.write_json(run.path(METRICS), out)
    return {"prompts": len(prompts), "overlap": out["train_eval_overlap"]}
