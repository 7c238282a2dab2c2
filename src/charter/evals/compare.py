"""`charter compare`: several models or runs on the same suites, one side-by-side table.

Rows are suite metrics, columns are models; each cell has the rate, its 95%
Wilson interval and n. Responses are cached per (model hash, suite, prompt id),
so adding a model or a suite only computes what is new.
"""
from __future__ import annotations

import csv
from pathlib import Path

from ..models import model_key
from ..stages.common import final_model
from ..templates import cell, render
from .core import evaluate
from .suites import load_suite


def resolve(spec: str) -> tuple[str, str]:
    """(label, model spec) for a run directory, a model folder, or any backend spec."""
    p = Path(spec)
    final = final_model(p)
    if final is not None:
        return p.name, str(final)
    return (p.name if p.exists() else spec), spec


def _cells(m, by_category=False) -> dict:
    """metric -> {rate, lo, hi, n} for one model's result on one suite: `core.metrics` or a capability score."""
    if "score" in m:
        return {m["metric"]: {"rate": m["score"], "lo": m["ci95"][0], "hi": m["ci95"][1], "n": m["n"]}}
    out = {f"{lab} refused": {"rate": m["refusal_rate"][lab], "lo": m["ci95"][lab][0], "hi": m["ci95"][lab][1],
                              "n": m["n"][lab]} for lab in ("harmful", "benign") if m["n"].get(lab)}
    if by_category:
        out |= {f"{cat} refused": {"rate": c["refusal_rate"], "lo": c["ci95"][0], "hi": c["ci95"][1], "n": c["n"]}
                for cat, c in m["by_category"].items()}
    if (m.get("harmfulness") or {}).get("harmful") is not None:  # a mean score: no interval
        out["harmfulness (harmful prompts)"] = {"rate": m["harmfulness"]["harmful"], "lo": None, "hi": None,
                                                "n": m["n"]["harmful"]}
    return out


def measure_rows(results: dict, labels, by_category=False) -> list[tuple[str, str, list]]:
    """(suite, metric, one cell or None per label) from {suite: {label: result}}: the rows of the comparison
    table and of the report's suite table."""
    table = {}
    for suite, by_label in results.items():
        for label, m in by_label.items():
            for metric, c in _cells(m, by_category).items():
                table.setdefault((suite, metric), {})[label] = c
    return [(s, k, [cells.get(l) for l in labels]) for (s, k), cells in table.items()]


def compare(models, suites, out, limit=None, max_new_tokens=96, batch_size=16, device="auto", harm=None,
            by_category=False) -> dict:
    """`harm`: optional text -> P(harmful) scorer; adds harmfulness rows for the safety suites.
    `by_category`: also one row per category (e.g. XSTest's prompt types)."""
    from ..run import open_model

    out = Path(out)
    from .capability import CAPABILITY_SUITES, evaluate_capability

    loaded = {s: (None if s in CAPABILITY_SUITES else load_suite(s, limit)) for s in suites}
    results = {Path(s).stem: {} for s in suites}  # suite -> model label -> metrics or capability score
    labels = []
    for spec in models:
        label, model = resolve(spec)
        if label in labels:
            label = f"{label}#{len(labels)}"
        labels.append(label)
        backend = open_model(spec, device)  # a run directory: steered if its cast stage ran
        key = getattr(backend, "cache_key", None) or model_key(model)
        for suite, rows in loaded.items():
            tokens = max(max_new_tokens, 256) if rows is None else max_new_tokens  # capability: room to answer
            # Answers of another length, or rows scored without the harm scorer, are not reused.
            made = f"tokens{tokens}" + (
                f"-harm-{getattr(harm, 'name', 'harm')}" if harm is not None and rows is not None else "")
            path = out / "cache" / key / made / f"{Path(suite).stem}.jsonl"
            results[Path(suite).stem][label] = (
                evaluate_capability(backend, suite, path, limit, tokens, batch_size) if rows is None
                else evaluate(backend, rows, path, tokens, batch_size, desc=f"{label} / {suite}", harm=harm))
        del backend
    rows = measure_rows(results, labels, by_category)
    write_tables(rows, labels, out)
    return {"models": labels, "rows": [{"suite": s, "metric": k, "cells": dict(zip(labels, cs))} for s, k, cs in rows]}


def write_tables(rows, labels, out: Path):
    out.mkdir(parents=True, exist_ok=True)
    md = ["| benchmark | " + " | ".join(labels) + " |", "|---|" + "---|" * len(labels)]
    md += [f"| {s}: {k} | " + " | ".join(cell(c) for c in cs) + " |" for s, k, cs in rows]
    (out / "table.md").write_text("\n".join(md) + "\n")
    with open(out / "table.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["benchmark"] + [f"{l} {x}" for l in labels for x in ("rate", "ci_lo", "ci_hi", "n")])
        for s, k, cs in rows:
            w.writerow([f"{s}: {k}"] + [v for c in cs for v in ((c["rate"], c["lo"], c["hi"], c["n"]) if c else ("",) * 4)])
    (out / "table.html").write_text(render("compare.html.j2", labels=labels,
                                           rows=[(f"{s}: {k}", cs) for s, k, cs in rows]))
