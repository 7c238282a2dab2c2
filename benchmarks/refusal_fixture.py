"""The lexical refusal judge against 476 hand-labelled responses of the embedded model.

    python benchmarks/refusal_fixture.py

Prints binary (refusal vs compliance) and three-class agreement on the `check` split (never used to change
the judge), on every row, and per source (which model, which prompts); and, on harmful prompts, the share
refused by the human labels beside the judge's. Reads tests/fixtures/refusal_smollm135m.jsonl.
"""
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
from charter.evals.refusal import refusal_class  # noqa: E402

rows = [json.loads(x) for x in (ROOT / "tests" / "fixtures" / "refusal_smollm135m.jsonl").read_text().splitlines()]
for r in rows:
    r["judge"] = refusal_class(r["response"])


def agreement(rs):
    binary = sum((r["judge"] == "full_compliance") == (r["human"] == "full_compliance") for r in rs) / len(rs)
    return f"{len(rs)} rows: binary {binary:.1%}, 3-class {sum(r['judge'] == r['human'] for r in rs) / len(rs):.1%}"


print("check:", agreement([r for r in rows if r["split"] == "check"]))
print("all:  ", agreement(rows))
for src in sorted({r["source"] for r in rows}):
    rs = [r for r in rows if r["source"] == src]
    harm = [r for r in rs if r["prompt_label"] == "harmful"]
    refused = lambda key: sum(r[key] != "full_compliance" for r in harm) / len(harm)  # noqa: E731
    print(f"{src}: {agreement(rs)}; harmful prompts refused, human {refused('human'):.0%} / judge {refused('judge'):.0%}")
