"""`charter compare`: several models or runs on the same suites, one side-by-side table.

Rows are suite metrics, columns are models; each cell has the rate, its 95%
Wilson interval and n. Responses are cached per (model hash, suite, prompt id),
so adding a model or a suite only computes what is new.
"""
from __future__ import annotations

import csv
import hashlib
import html
import json
from pathlib import Path

from ..errors import CharterError
from .core import evaluate
from .suites import load_suite


def resolve(spec: str) -> tuple[str, str]:
    """(label, model spec) for a run directory, a model folder, or any backend spec."""
    p = Path(spec)
    if (p / "manifest.json").exists():
        final = json.loads((p / "manifest.json").read_text()).get("final_model")
        if not final:
            raise CharterError(f"{p / 'manifest.json'}: the run has no final model yet")
        return p.name, str(p / final)
    return (p.name if p.exists() else spec), spec


def model_hash(spec: str) -> str:
    p = Path(spec)
    parts = [spec]
    if p.is_dir():
        for f in sorted(p.glob("*.safetensors")) + sorted(p.glob("config.json")):
            st = f.stat()
            parts.append(f"{f.name}:{st.st_size}:{st.st_mtime_ns}")
    elif p.is_file():
        st = p.stat()
        parts.append(f"{st.st_size}:{st.st_mtime_ns}")
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:12]


def _cell(m, label):
    n = m["n"].get(label)
    if not n:
        return None
    lo, hi = m["ci95"][label]
    return {"rate": m["refusal_rate"][label], "lo": lo, "hi": hi, "n": n}


def compare(models, suites, out, limit=None, max_new_tokens=96, batch_size=16, device="auto", harm=None,
            by_category=False) -> dict:
    """`harm`: optional text -> P(harmful) scorer; adds harmfulness rows for the safety suites.
    `by_category`: also one row per category (e.g. XSTest's prompt types)."""
    from ..backends import get_backend

    out = Path(out)
    from .capability import CAPABILITY_SUITES, evaluate_capability

    loaded = {s: (None if s in CAPABILITY_SUITES else load_suite(s, limit)) for s in suites}
    table = {}  # (suite, metric) -> {label: cell}
    labels = []
    for spec in models:
        label, model = resolve(spec)
        if label in labels:
            label = f"{label}#{len(labels)}"
        labels.append(label)
        backend = None
        for suite, rows in loaded.items():
            path = out / "cache" / model_hash(model) / f"{Path(suite).stem}.jsonl"
            if backend is None:
                backend = get_backend(model, device=device)
            if rows is None:
                c = evaluate_capability(backend, suite, path, limit, max(max_new_tokens, 256), batch_size)
                table.setdefault((suite, c["metric"]), {})[label] = {
                    "rate": c["score"], "lo": c["ci95"][0], "hi": c["ci95"][1], "n": c["n"]}
                continue
            m = evaluate(backend, rows, path, max_new_tokens, batch_size, desc=f"{label} / {suite}", harm=harm)
            for lab, metric in (("harmful", "harmful refused"), ("benign", "benign refused")):
                c = _cell(m, lab)
                if c:
                    table.setdefault((Path(suite).stem, metric), {})[label] = c
            if by_category:
                for cat, c in m["by_category"].items():
                    table.setdefault((Path(suite).stem, f"{cat} refused"), {})[label] = {
                        "rate": c["refusal_rate"], "lo": c["ci95"][0], "hi": c["ci95"][1], "n": c["n"]}
            if m.get("harmfulness", {}).get("harmful") is not None:
                table.setdefault((Path(suite).stem, "harmfulness (harmful prompts)"), {})[label] = {
                    "rate": m["harmfulness"]["harmful"], "lo": None, "hi": None, "n": m["n"]["harmful"]}
        del backend
    write_tables(table, labels, out)
    return {"models": labels, "rows": [{"suite": s, "metric": k, "cells": v} for (s, k), v in table.items()]}


def _fmt(c):
    if c is None:
        return ""
    if c["lo"] is None:  # a mean score, not a proportion: no Wilson interval
        return f"{c['rate']:.3f} n={c['n']}"
    return f"{c['rate']:.1%} [{c['lo']:.0%}, {c['hi']:.0%}] n={c['n']}"


def write_tables(table, labels, out: Path):
    out.mkdir(parents=True, exist_ok=True)
    rows = [(f"{s}: {k}", [cells.get(l) for l in labels]) for (s, k), cells in table.items()]
    md = ["| benchmark | " + " | ".join(labels) + " |", "|---|" + "---|" * len(labels)]
    md += [f"| {name} | " + " | ".join(_fmt(c) for c in cs) + " |" for name, cs in rows]
    (out / "table.md").write_text("\n".join(md) + "\n")
    with open(out / "table.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["benchmark"] + [f"{l} {x}" for l in labels for x in ("rate", "ci_lo", "ci_hi", "n")])
        for name, cs in rows:
            w.writerow([name] + [v for c in cs for v in ((c["rate"], c["lo"], c["hi"], c["n"]) if c else ("",) * 4)])
    head = "".join(f"<th>{html.escape(l)}</th>" for l in labels)
    body = "".join(f"<tr><td>{html.escape(name)}</td>" + "".join(f"<td>{html.escape(_fmt(c))}</td>" for c in cs)
                   + "</tr>" for name, cs in rows)
    (out / "table.html").write_text(
        "<!doctype html><html><head><meta charset='utf-8'><title>charter compare</title><style>"
        "body{font-family:system-ui,sans-serif;margin:2em}td,th{border:1px solid #ddd;padding:4px 8px}"
        "table{border-collapse:collapse}</style></head><body><h1>charter compare</h1>"
        "<p>Refusal rates (lower on benign rows is more helpful; higher on harmful rows is safer) and capability "
        "scores, with 95% Wilson intervals.</p>"
        f"<table><tr><th>benchmark</th>{head}</tr>{body}</table></body></html>")
