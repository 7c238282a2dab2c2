"""How each run's steered model (`cast`) refuses on the supervisor's validation rows: where the steering's
settings are chosen, since these rows evaluate nothing (the dev split, XSTest and HarmBench test stay unseen).

    python benchmarks/steer_validation.py RUN_DIR [RUN_DIR ...]   # runs whose cast stage ran

The rows are `supervise.data.validation_set()` under 600 characters (charter's held-out requests, wrappers
and pasted texts, and HarmBench's validation behaviours when the shared data is present); each is answered
greedily, 64 new tokens, with the run's system prompt, and judged by the lexical refusal judge. Prints and
writes benchmarks/steer_validation.json: per run, its cast settings and refused / total per label.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from charter.backends import GenParams, user  # noqa: E402
from charter.evals.refusal import refusal_class  # noqa: E402
from charter.run import Run  # noqa: E402
from charter.supervise.data import validation_set  # noqa: E402


def measure(run_dir: str, rows) -> dict:
    run = Run.open(run_dir)
    if not run.steered():
        sys.exit(f"{run_dir}: its cast stage has not run (or cast.enabled is off)")
    backend = run.backend("cast")
    answers = backend.generate([user(r["prompt"], run.cfg.system_prompt) for r in rows],
                               GenParams(64, 0.0, batch_size=64))
    counts = {}
    for r, a in zip(rows, answers):
        c = counts.setdefault(r["label"], {"refused": 0, "n": 0})
        c["refused"] += refusal_class(a) != "full_compliance"
        c["n"] += 1
    stage = run.manifest["stages"]["cast"]
    return {"run": run_dir, **{k: stage.get(k) for k in ("start", "layer", "add", "refused", "prompts")},
            "flagged": backend.flagged, "validation": counts}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("runs", nargs="+")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "steer_validation.json"))
    a = ap.parse_args()
    rows = [r for r in validation_set() if len(r["prompt"]) < 600]
    results = []
    for d in a.runs:
        res = measure(d, rows)
        v = res["validation"]
        print(f"{d}: start {res['start']}, add {res['add']}: " + ", ".join(
            f"{k} refused {c['refused']}/{c['n']}" for k, c in sorted(v.items())), flush=True)
        results.append(res)
    Path(a.out).write_text(json.dumps({"rows": len(rows), "results": results}, indent=1) + "\n")


if __name__ == "__main__":
    main()
