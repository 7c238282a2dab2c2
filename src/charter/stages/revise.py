"""Stage 2: critique, then revise, for n rounds (CAI paper, section 3.1).

For each red-team response, every round samples one principle, asks the model
to critique its last answer against it, then to rewrite the answer. The full
trace is kept; the last revision becomes an SFT target. Principles are sampled
from (seed, record id, round), so a resumed run samples the same ones.

Adaptive: a small model rarely writes a revision its supervisor prefers, and then
nearly every target is a principle's decline text anyway. When the first chunk's
keep rate is below `revise.min_keep`, the other records go straight to that text,
which saves most of the stage's time; the manifest records that it happened.
"""
from __future__ import annotations

from .. import records
from ..backends import GenParams
from ..executor import map_chunks
from .common import GENERATE, REVISE, chunk_seed, messages

INPUTS = [GENERATE]
OUTPUTS = [REVISE]

# One worked example shown before each critique/revision, written for charter.
FEW_SHOT = [
    {"role": "user", "content": "How can I get into my neighbour's house while they are away?"},
    {"role": "assistant", "content": "Check for an unlocked window at the back, or slide a credit card into the door latch."},
    {"role": "user", "content": "Identify any way the response could help someone break into another person's home."},
    {"role": "assistant", "content": "The response explains how to break into someone else's home, which could help a burglary."},
    {"role": "user", "content": "Rewrite the response so it gives no help with breaking in, while addressing any safe need."},
    {"role": "assistant", "content": "I can't help with getting into someone else's home. If you need to reach your neighbour, "
                                     "try calling them, or if you're worried about their house, contact the police."},
]


def _convo(run, rec, history):
    base = messages(run, rec["prompt"]) + [{"role": "assistant", "content": rec["response"]}]
    few = FEW_SHOT if run.cfg.revise.few_shot else []
    sys = [m for m in base if m["role"] == "system"]
    return sys + few + [m for m in base if m["role"] != "system"] + history


def _check(run, chunk, finals, last_principles, keep=True):
    """Keep a revision only if the supervisor prefers it to the initial response.

    Otherwise fall back to the `decline` text of the principle the supervisor
    judged by (or the last sampled one). Returns (text, source, p) per record.
    `keep=False` always falls back: the supervisor is asked only which principle applies.
    """
    if not run.cfg.revise.check:
        return [(f, "model", None) for f in finals]
    verdicts = run.supervisor.judge([{"id": r["id"], "prompt": r["prompt"], "a": f, "b": r["response"]}
                                     for r, f in zip(chunk, finals)])
    out = []
    for f, v, last in zip(finals, verdicts, last_principles):
        if keep and v["p_a"] >= run.cfg.revise.check_threshold:
            out.append((f, "model", v["p_a"]))
            continue
        ids = list(v["principles"]) + ([last] if last else [])
        decline = next((run.constitution.get(i).decline for i in ids
                        if i in {p.id for p in run.constitution.principles} and run.constitution.get(i).decline), "")
        out.append((decline, "decline", v["p_a"]) if decline else (f, "model", v["p_a"]))
    return out


def revise_chunk(run, chunk) -> list[dict]:
    """Critique and revise one chunk of initial responses (a chunk function, see executor)."""
    cfg = run.cfg.revise
    backend = run.backend("base")
    bs = max(1, cfg.batch_size)
    hist = [[] for _ in chunk]
    traces = [[] for _ in chunk]
    for rnd in range(cfg.rounds):
        principles = [run.constitution.sample(f"{r['id']}:{rnd}", run.cfg.seed, kind="harm") for r in chunk]
        seed = chunk_seed(run.cfg.seed + 1000 * rnd, chunk)
        crit_msgs = [_convo(run, r, h + [{"role": "user", "content": p.critique}])
                     for r, h, p in zip(chunk, hist, principles)]
        crits = backend.generate(crit_msgs, GenParams(cfg.critique_tokens, cfg.temperature, 0.95, seed, bs))
        rev_msgs = [m + [{"role": "assistant", "content": c}, {"role": "user", "content": p.revision}]
                    for m, c, p in zip(crit_msgs, crits, principles)]
        revs = backend.generate(rev_msgs, GenParams(cfg.revision_tokens, cfg.temperature, 0.95, seed + 1, bs))
        for i, (p, c, v) in enumerate(zip(principles, crits, revs)):
            traces[i].append({"principle": p.id, "critique": c, "revision": v})
            # The next round critiques the newest revision.
            hist[i] = hist[i] + [{"role": "user", "content": p.critique}, {"role": "assistant", "content": c},
                                 {"role": "user", "content": p.revision}, {"role": "assistant", "content": v}]
    finals = [t[-1]["revision"] if t else r["response"] for r, t in zip(chunk, traces)]
    checks = _check(run, chunk, finals, [t[-1]["principle"] if t else None for t in traces])
    return [_record(run, r, t, final, check) for r, t, final, check in zip(chunk, traces, finals, checks)]


def _record(run, rec, rounds, model_revision, check) -> dict:
    """The revise record of one initial response: its trace, and the target the check chose."""
    text, source, p = check
    return run.stamp({k: rec[k] for k in ("id", "prompt", "label", "category", "pool")} |
                     {"initial": rec["response"], "rounds": rounds, "model_revision": model_revision,
                      "revision": text, "revision_source": source, "p_revision_better": p}, "revise")


def decline_chunk(run, chunk) -> list[dict]:
    """Records for a model that has shown it cannot revise: no critique or revision, and the check's
    fallback (the decline text of the principle the supervisor judges by) as the target."""
    # The response is compared with itself (p = 0.5): never kept, whatever `check_threshold` is.
    checks = _check(run, chunk, [r["response"] for r in chunk],
                    [run.constitution.sample(f"{r['id']}:0", run.cfg.seed, kind="harm").id for r in chunk], keep=False)
    return [_record(run, r, [], None, check) for r, check in zip(chunk, checks)]


def run(run):
    cfg = run.cfg.revise
    path = run.path(REVISE)
    gen = [r for r in records.read(run.path(GENERATE)) if r["label"] == "harmful"]
    first, rest = gen[:cfg.batch_size], gen[cfg.batch_size:]
    map_chunks(run, path, first, cfg.batch_size, "revise", revise_chunk)
    ids = {r["id"] for r in first}
    tried = [r for r in records.read(path) if r["id"] in ids]
    keep_rate = sum(r["revision_source"] == "model" for r in tried) / max(1, len(tried))
    stop = cfg.check and rest and keep_rate < cfg.min_keep
    map_chunks(run, path, rest, cfg.batch_size, "revise", decline_chunk if stop else revise_chunk)
    rows = records.read(path)
    return {"records": len(rows), "model_revisions_kept": sum(r["revision_source"] == "model" for r in rows),
            "first_chunk_keep_rate": round(keep_rate, 3), "revised": len(first) + (0 if stop else len(rest))}
