"""What the supervisor learns from and what it is checked on, in one place, so nothing that evaluates it trains it.

Training (request-harm probe):
- the constitution's per-principle `examples` (covers / not_covers), weighted up: they are the user's lever
  for moving verdicts, and a handful of them must be able to outweigh hundreds of generic rows;
- the prompt pools' `train` split (red-team, helpful, lookalike);
- charter's supervisor data (`data/supervisor/`, `train` split): benign lookalikes of many kinds, harmful
  requests in many styles, ordinary requests in many styles (long ones included), and the same requests
  placed in charter's own jailbreak-style wrappers and after long pasted texts, so the probe reads the
  request, not what surrounds it;
- public harmful sets not used to evaluate it (`supervisor.train_public`: AdvBench and StrongREJECT by
  default), loaded from the shared data folder or the hub and skipped with a note when neither has them.
Validation (choosing the decision threshold): the `val` split of charter's supervisor data and wrappers,
and HarmBench's validation behaviours.
Evaluation only, never trained on: the pools' `dev` split, XSTest, HarmBench test, PyRIT's jailbreak
templates, HH-RLHF (see `supervise.suites` and `supervise.calibrate`).
"""
from __future__ import annotations

import logging
import random
from importlib import resources
from pathlib import Path

from ..errors import CharterError

log = logging.getLogger("charter")
EXAMPLE_WEIGHT = 4.0
WRAPPED_PER_LABEL = 6  # requests of each label placed in each wrapper
CONTEXTUAL_PER_LABEL = 2  # requests of each label placed after each long text
PUBLIC_TRAIN = ("advbench", "strongreject")


def _file(name: str) -> Path:
    return Path(str(resources.files("charter") / "data" / "supervisor" / name))


def builtin_rows(split: str) -> list[dict]:
    from ..prompts import read_prompt_file
    from ..yamlio import read_jsonl

    rows = []
    for name in ("lookalikes", "harmful", "ordinary"):
        path = _file(f"{name}.jsonl")
        if path.exists():
            kinds = {r["id"]: r.get("kind") for r in read_jsonl(path)}
            rows += [{**r, "category": kinds[r["id"]] or r["category"]} for r in read_prompt_file(path)
                     if r["split"] == split]
    return rows


def wrappers(split: str) -> list[str]:
    from ..yamlio import read_jsonl

    path = _file("wrappers.jsonl")
    if not path.exists():
        return []
    return [r["template"] for r in read_jsonl(path) if r.get("split", "train") == split]


def public_rows(names) -> tuple[list[dict], list[str]]:
    """Rows of the public training sets that can be loaded, and a note for each that cannot."""
    from ..evals.suites import load_suite

    rows, notes = [], []
    for name in names:
        try:
            rows += load_suite(name)
        except CharterError as e:
            notes.append(f"{name}: {e}")
            log.warning("supervisor: public training set %s not used: %s", name, e)
    return rows, notes


def wrapped(rows, templates, seed=0) -> list[dict]:
    """A few requests of each label placed in each template (seeded): the wrapper must not decide the label."""
    rng = random.Random(seed)
    short = [r for r in rows if len(r["prompt"]) < 400]
    by_label = {lab: [r for r in short if r["label"] == lab] for lab in ("harmful", "benign")}
    out = []
    for tpl in templates:
        for lab, pool in by_label.items():
            for r in rng.sample(pool, min(WRAPPED_PER_LABEL, len(pool))):
                out.append({"prompt": tpl.replace("{{ prompt }}", r["prompt"]), "label": lab})
    return out


def contextual(contexts, rows, seed=0) -> list[dict]:
    """Requests of each label after a long pasted text (`CONTEXT\n\n---\n\nREQUEST`): the ask at the end
    decides the label, however harmless the text before it."""
    rng = random.Random(seed)
    short = [r for r in rows if len(r["prompt"]) < 400]
    out = []
    for ctx in contexts:
        for lab in ("harmful", "benign"):
            for r in rng.sample([x for x in short if x["label"] == lab], CONTEXTUAL_PER_LABEL):
                out.append({"prompt": f"{ctx}\n\n---\n\n{r['prompt']}", "label": lab})
    return out


def training_set(constitution, pool_rows, public=PUBLIC_TRAIN, seed=0):
    """(texts, labels, weights, notes); labels 1 = harmful. Harmful and benign rows carry equal total weight."""
    items = []
    for p in constitution.principles:
        harmful_side = 1 if p.kind == "harm" else 0
        items += [(t, harmful_side, EXAMPLE_WEIGHT) for t in p.examples.covers]
        items += [(t, 1 - harmful_side, EXAMPLE_WEIGHT) for t in p.examples.not_covers]
    plain = [r for r in pool_rows if r.get("split", "train") != "dev"] + builtin_rows("train")
    pub, notes = public_rows(public)
    plain += [{**r, "label": "harmful"} for r in pub]
    long_texts = [r["prompt"] for r in plain if r["label"] == "benign" and len(r["prompt"]) >= 800]
    plain += wrapped(plain, wrappers("train"), seed) + contextual(long_texts, plain, seed)
    items += [(r["prompt"], int(r["label"] == "harmful"), 1.0) for r in plain]
    seen, texts, labels, weights = set(), [], [], []
    for t, y, w in items:
        if t not in seen:
            seen.add(t)
            texts.append(t)
            labels.append(y)
            weights.append(w)
    pos = sum(w for w, y in zip(weights, labels) if y) or 1.0
    neg = sum(w for w, y in zip(weights, labels) if not y) or 1.0
    weights = [w * (0.5 / pos if y else 0.5 / neg) * len(weights) for w, y in zip(weights, labels)]
    return texts, labels, weights, notes


def validation_set(seed=0) -> list[dict]:
    """Rows that choose the decision threshold; none of them trains the probe or evaluates it."""
    from ..evals.suites import load_suite

    rows = builtin_rows("val")
    long_texts = [r["prompt"] for r in rows if r["label"] == "benign" and len(r["prompt"]) >= 800]
    rows += wrapped(rows, wrappers("val"), seed + 1) + contextual(long_texts, rows, seed + 1)
    try:
        rows += load_suite("harmbench-val")
    except CharterError as e:
        log.warning("supervisor: HarmBench validation behaviours not used: %s", e)
    return rows


def threshold_for(p_harm, rows, target_fpr: float | None = None) -> float:
    """The decision threshold, from the probe's readings of the validation rows.

    With `target_fpr`, the lowest threshold that flags at most that share of the benign rows. Without, the
    point where the share of benign rows flagged equals the share of harmful rows missed: the calibration
    gate asks for both directions to be right equally often, so the threshold aims there."""
    benign = sorted((p for p, r in zip(p_harm, rows) if r["label"] == "benign"), reverse=True)
    harmful = sorted(p for p, r in zip(p_harm, rows) if r["label"] == "harmful")
    if not benign or (target_fpr is None and not harmful):
        return 0.5
    if target_fpr is not None:
        k = int(target_fpr * len(benign))  # this many benign rows may be flagged
        t = benign[k] + 1e-6 if k < len(benign) else 0.01
    else:
        candidates = sorted(set(p_harm))
        t = min(candidates, key=lambda c: abs(sum(p >= c for p in benign) / len(benign)
                                             - sum(p < c for p in harmful) / len(harmful)))
    return min(0.99, max(0.01, t))
