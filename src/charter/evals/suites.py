"""Safety suites: XSTest, StrongREJECT, HarmBench (test, val, and test inside PyRIT jailbreak templates), AdvBench
and charter's own dev split (also inside the templates: `jailbreak-benign`).

Each suite loads from the offline copy under the shared data folder when it is
there, else from its `datasets` hub id, and becomes prompt rows in `charter eval`
format. A suite that cannot be found names both the local path and the hub id.
"""
from __future__ import annotations

import csv
import random
from pathlib import Path

from ..errors import CharterError
from ..prompts import dev_prompts, read_prompt_file, shared_data
from ..registry import Registry

# name -> (local file under shared data, hub id, hub split)
SOURCES = {
    "xstest": ("xstest/xstest_prompts.csv", "walledai/XSTest", "test"),
    "strongreject": ("strongreject/strongreject_dataset.csv", "walledai/StrongREJECT", "train"),
    "harmbench": ("harmbench/harmbench_behaviors_text_test.csv", "walledai/HarmBench", "standard"),
    # HarmBench's validation behaviours: what the supervisor's threshold is chosen on (never its test split).
    # No hub fallback: the hub copy holds the test behaviours too, which must never choose a setting.
    "harmbench-val": ("harmbench/harmbench_behaviors_text_val.csv", None, None),
    "advbench": ("advbench/harmful_behaviors.csv", "walledai/AdvBench", "train"),
}


def _raw(name: str) -> list[dict]:
    rel, hub, split = SOURCES[name]
    local = shared_data() / rel
    if local.exists():
        with open(local, newline="") as f:
            return list(csv.DictReader(f))
    if hub is None:
        raise CharterError(f"suite {name!r}: not found at {local} (set CHARTER_SHARED_DATA)")
    try:
        import datasets

        return list(datasets.load_dataset(hub, split=split))
    except Exception as e:
        raise CharterError(f"suite {name!r}: not found at {local} and the hub dataset {hub!r} could not be "
                           f"loaded ({type(e).__name__}); set CHARTER_SHARED_DATA or connect") from None


def _dev(name):
    return dev_prompts()


def _rows_xstest(name):
    out = []
    for r in _raw(name):
        label = r.get("label") or ("unsafe" if str(r.get("type", "")).startswith("contrast") else "safe")
        out.append({"id": f"xstest-{r.get('id') or len(out) + 1}", "prompt": r["prompt"],
                    "label": "harmful" if label == "unsafe" else "benign", "category": r.get("type") or "xstest"})
    return out


def _rows_strongreject(name):
    return [{"id": f"strongreject-{i}", "prompt": r.get("forbidden_prompt") or r["prompt"], "label": "harmful",
             "category": r.get("category") or "strongreject"} for i, r in enumerate(_raw(name))]


def _rows_harmbench(name):
    out = []
    for i, r in enumerate(_raw(name)):
        # Contextual behaviours need their context string; copyright ones are out of scope for refusal.
        if r.get("FunctionalCategory", "standard") not in ("standard", "contextual"):
            continue
        prompt = r.get("Behavior") or r.get("prompt")
        if r.get("ContextString"):
            prompt = f"{r['ContextString']}\n\n---\n\n{prompt}"
        out.append({"id": f"harmbench-{r.get('BehaviorID') or i}", "prompt": prompt, "label": "harmful",
                    "category": r.get("SemanticCategory") or r.get("category") or "harmbench"})
    return out


def _rows_advbench(name):
    return [{"id": f"advbench-{i}", "prompt": r.get("goal") or r["prompt"], "label": "harmful", "category": "advbench"}
            for i, r in enumerate(_raw(name))]


def jailbreak_templates(folder=None) -> list[tuple[str, str]]:
    """(name, template) for each PyRIT jailbreak template (YAML) with a `{{ prompt }}` slot."""
    from ..yamlio import load_yaml

    folder = Path(folder) if folder else shared_data() / "jailbreak-templates"
    if not folder.is_dir():
        raise CharterError(f"{folder}: jailbreak templates not found (set CHARTER_SHARED_DATA)")
    out = []
    for f in sorted(folder.glob("*.yaml")):
        doc = load_yaml(f)
        value = doc.get("value") if isinstance(doc, dict) else None
        if isinstance(value, str) and "{{ prompt }}" in value:
            out.append((f.stem, value))
    if not out:
        raise CharterError(f"{folder}: no template with a {{{{ prompt }}}} slot")
    return out


def wrap(rows, templates, seed=0, suite="jailbreak") -> list[dict]:
    """Each row's request placed in one seeded template; the category names the template."""
    rng = random.Random(seed)
    out = []
    for r in rows:
        name, tpl = rng.choice(templates)
        out.append({**r, "id": f"{suite}-{r['id']}", "prompt": tpl.replace("{{ prompt }}", r["prompt"]),
                    "category": name, "request": r["prompt"]})
    return out


def _jailbreak(name):
    """HarmBench test behaviours (`jailbreak`) or charter's benign dev requests (`jailbreak-benign`), each in a
    PyRIT jailbreak template: does a reader judge the request or the template around it?"""
    rows = _rows_harmbench("harmbench") if name == "jailbreak" else [r for r in dev_prompts() if r["label"] == "benign"]
    return wrap(rows, jailbreak_templates(), 0, name)


TARGETS = {
    "dev": "charter.evals.suites:_dev",
    "xstest": "charter.evals.suites:_rows_xstest",
    "strongreject": "charter.evals.suites:_rows_strongreject",
    "harmbench": "charter.evals.suites:_rows_harmbench",
    "harmbench-val": "charter.evals.suites:_rows_harmbench",
    "advbench": "charter.evals.suites:_rows_advbench",
    "jailbreak": "charter.evals.suites:_jailbreak",
    "jailbreak-benign": "charter.evals.suites:_jailbreak",
}
SUITES = Registry("suite", TARGETS, usage=", ".join(TARGETS) + ", or a prompt JSONL file")


def load_suite(name: str, limit: int | None = None) -> list[dict]:
    """Prompt rows for a builtin suite name, `dev`, or a prompt JSONL file."""
    if name in TARGETS:
        rows = SUITES.resolve(name)[0](name)
    elif Path(name).exists():
        rows = read_prompt_file(name)
    else:
        raise CharterError(f"unknown suite {name!r} (use {SUITES.usage})")
    if limit:
        rows = list(rows)
        random.Random(0).shuffle(rows)  # a subset should mix labels and categories
        rows = rows[:limit]
    if not rows:
        raise CharterError(f"suite {name!r} is empty")
    return rows


def load_if_present(name: str, limit: int | None = None, optional=TARGETS) -> tuple[list[dict] | None, str | None]:
    """`(rows, None)`, or `(None, why)` when `name` is one of the `optional` builtin suites and its data is not
    on this machine (a user's clone has no shared data folder); any other failure raises."""
    try:
        return load_suite(name, limit), None
    except CharterError as e:
        if name not in optional or Path(name).exists():
            raise
        return None, str(e)


def _norm(text: str) -> str:
    return " ".join(text.lower().split())


def overlap(train_prompts, suite_rows) -> int:
    """How many suite prompts also appear (case- and space-insensitively) among training prompts."""
    seen = {_norm(p) for p in train_prompts}
    return sum(_norm(r["prompt"]) in seen for r in suite_rows)
