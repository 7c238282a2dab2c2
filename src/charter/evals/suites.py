"""Safety suites: XSTest, StrongREJECT, HarmBench, AdvBench and charter's own dev split.

Each suite loads from the offline copy under the shared data folder when it is
there, else from its `datasets` hub id, and becomes prompt rows in `charter eval`
format. A suite that cannot be found names both the local path and the hub id.
"""
from __future__ import annotations

import csv
from pathlib import Path

from ..errors import CharterError
from ..prompts import dev_prompts, read_prompt_file, shared_data

# name -> (local file under shared data, hub id, hub split, loader)
SUITES = {
    "xstest": ("xstest/xstest_prompts.csv", "walledai/XSTest", "test"),
    "strongreject": ("strongreject/strongreject_dataset.csv", "walledai/StrongREJECT", "train"),
    "harmbench": ("harmbench/harmbench_behaviors_text_test.csv", "walledai/HarmBench", "standard"),
    "advbench": ("advbench/harmful_behaviors.csv", "walledai/AdvBench", "train"),
}


def _rows_xstest(rows):
    out = []
    for r in rows:
        label = r.get("label") or ("unsafe" if str(r.get("type", "")).startswith("contrast") else "safe")
        out.append({"id": f"xstest-{r.get('id') or len(out) + 1}", "prompt": r["prompt"],
                    "label": "harmful" if label == "unsafe" else "benign", "category": r.get("type") or "xstest"})
    return out


def _rows_strongreject(rows):
    return [{"id": f"strongreject-{i}", "prompt": r.get("forbidden_prompt") or r["prompt"], "label": "harmful",
             "category": r.get("category") or "strongreject"} for i, r in enumerate(rows)]


def _rows_harmbench(rows):
    out = []
    for i, r in enumerate(rows):
        # Contextual behaviours need their context string; copyright ones are out of scope for refusal.
        if r.get("FunctionalCategory", "standard") not in ("standard", "contextual"):
            continue
        prompt = r.get("Behavior") or r.get("prompt")
        if r.get("ContextString"):
            prompt = f"{r['ContextString']}\n\n---\n\n{prompt}"
        out.append({"id": f"harmbench-{r.get('BehaviorID') or i}", "prompt": prompt, "label": "harmful",
                    "category": r.get("SemanticCategory") or r.get("category") or "harmbench"})
    return out


def _rows_advbench(rows):
    return [{"id": f"advbench-{i}", "prompt": r.get("goal") or r["prompt"], "label": "harmful", "category": "advbench"}
            for i, r in enumerate(rows)]


CONVERT = {"xstest": _rows_xstest, "strongreject": _rows_strongreject, "harmbench": _rows_harmbench,
           "advbench": _rows_advbench}


def load_suite(name: str, limit: int | None = None) -> list[dict]:
    """Prompt rows for a builtin suite name, `dev`, or a prompt JSONL file."""
    if name == "dev":
        rows = dev_prompts()
    elif name in SUITES:
        rel, hub, split = SUITES[name]
        local = shared_data() / rel
        if local.exists():
            with open(local, newline="") as f:
                raw = list(csv.DictReader(f))
        else:
            try:
                import datasets

                raw = list(datasets.load_dataset(hub, split=split))
            except Exception as e:
                raise CharterError(f"suite {name!r}: not found at {local} and the hub dataset {hub!r} could not be "
                                   f"loaded ({type(e).__name__}); set CHARTER_SHARED_DATA or connect") from None
        rows = CONVERT[name](raw)
    elif Path(name).exists():
        rows = read_prompt_file(name)
    else:
        raise CharterError(f"unknown suite {name!r}: use one of dev, {', '.join(SUITES)}, or a prompt JSONL file")
    if limit:
        import random

        rows = list(rows)
        random.Random(0).shuffle(rows)  # a subset should mix labels and categories
        rows = rows[:limit]
    if not rows:
        raise CharterError(f"suite {name!r} is empty")
    return rows


def _norm(text: str) -> str:
    return " ".join(text.lower().split())


def overlap(train_prompts, suite_rows) -> int:
    """How many suite prompts also appear (case- and space-insensitively) among training prompts."""
    seen = {_norm(p) for p in train_prompts}
    return sum(_norm(r["prompt"]) in seen for r in suite_rows)
