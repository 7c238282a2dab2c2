"""Measure the refusal judge against the 2,250 human-labelled XSTest completions."""
from __future__ import annotations

import csv
from collections import Counter
from pathlib import Path

from ..errors import CharterError
from ..prompts import shared_data
from .refusal import CLASSES, LexicalRefusalJudge

HUMAN = {"1_full_compliance": "full_compliance", "2_full_refusal": "full_refusal", "3_partial_refusal": "partial_refusal"}


def xstest_completions(folder=None) -> list[dict]:
    folder = Path(folder) if folder else shared_data() / "xstest" / "model_completions"
    files = sorted(folder.glob("*.csv")) if folder.is_dir() else []
    if not files:
        raise CharterError(f"{folder}: no XSTest completion CSVs found (set CHARTER_SHARED_DATA or pass --xstest)")
    rows = []
    for f in files:
        with open(f, newline="") as fh:
            for r in csv.DictReader(fh):
                if r.get("final_label") in HUMAN:
                    rows.append({"prompt": r["prompt"], "completion": r["completion"] or "",
                                 "human": HUMAN[r["final_label"]], "source": f.stem, "type": r.get("type", "")})
    return rows


def calibrate_refusal(folder=None, judge=None, limit=None) -> dict:
    judge = judge or LexicalRefusalJudge()
    rows = xstest_completions(folder)
    if limit:
        import random

        rows = random.Random(0).sample(rows, min(limit, len(rows)))
    pred = judge.classify([r["prompt"] for r in rows], [r["completion"] for r in rows])
    cm = Counter((r["human"], p) for r, p in zip(rows, pred))
    n = len(rows)
    res = {"judge": judge.name, "n": n,
           "accuracy_3class": sum(cm[(c, c)] for c in CLASSES) / n,
           "accuracy_binary": sum(v for (h, p), v in cm.items()
                                  if (h == "full_compliance") == (p == "full_compliance")) / n,
           "confusion": {h: {p: cm[(h, p)] for p in CLASSES} for h in CLASSES}, "per_class": {}}
    by_source = {}
    for r, p in zip(rows, pred):
        ok = (r["human"] == "full_compliance") == (p == "full_compliance")
        n_ok = by_source.setdefault(r["source"].replace("xstest_v2_completions_", ""), [0, 0])
        n_ok[0] += ok
        n_ok[1] += 1
    res["accuracy_binary_by_model"] = {k: v[0] / v[1] for k, v in sorted(by_source.items())}
    for c in CLASSES:
        tp = cm[(c, c)]
        pp = sum(cm[(h, c)] for h in CLASSES)
        ap = sum(cm[(c, p)] for p in CLASSES)
        res["per_class"][c] = {"precision": tp / pp if pp else 0.0, "recall": tp / ap if ap else 0.0, "n": ap}
    return res


def refusal_table(res: dict) -> str:
    lines = [f"refusal judge {res['judge']} on {res['n']} XSTest completions (human labels)",
             f"accuracy, refusal vs compliance: {res['accuracy_binary']:.1%}; three classes: {res['accuracy_3class']:.1%}",
             "", "| human \\ judge | " + " | ".join(CLASSES) + " | recall | precision |",
             "|---|" + "---|" * (len(CLASSES) + 2)]
    for h in CLASSES:
        pc = res["per_class"][h]
        lines.append(f"| {h} | " + " | ".join(str(res["confusion"][h][p]) for p in CLASSES)
                     + f" | {pc['recall']:.1%} | {pc['precision']:.1%} |")
    lines.append("")
    lines.append("binary accuracy by responding model: " + ", ".join(
        f"{k} {v:.1%}" for k, v in res["accuracy_binary_by_model"].items()))
    return "\n".join(lines)
