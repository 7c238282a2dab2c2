"""Stage 5: the supervisor labels each pair (CAI paper, section 4.1).

Both orders are judged and averaged inside the supervisor; the soft label
`p_a` is kept, with the principle(s) used. Labels are only written by a
supervisor that passed the calibration gate, unless the run was forced.
"""
from __future__ import annotations

import json

from .. import records
from ..errors import CharterError
from ..executor import map_chunks

OUTPUTS = ["data/labels.jsonl"]
CHUNK = 32


def gate(run):
    cal_path = run.path("supervisor/calibration.json")
    if not cal_path.exists():
        raise CharterError(f"{cal_path}: missing; the supervise stage must run before labelling")
    cal = json.loads(cal_path.read_text())
    if not cal.get("passed"):
        msg = (f"supervisor {cal['supervisor']} failed the calibration gate: {cal['gate_accuracy']:.1%} on the "
               f"weaker direction of the dev contrast pairs, below the threshold {cal['threshold']:.0%} "
               f"(see {cal_path})")
        if not run.force:
            raise CharterError(msg + "; rerun with --force to label anyway")
        run.manifest["gate_override"] = msg
    return cal


def label_chunk(run, chunk) -> list[dict]:
    """Supervisor verdicts for one chunk of pairs (a chunk function, see executor)."""
    sup = run.supervisor
    return [run.stamp({**p, **v, "supervisor": sup.name}, "label") for p, v in zip(chunk, sup.judge(chunk))]


def run(run):
    gate(run)
    path = run.path(OUTPUTS[0])
    pairs = records.read(run.path("data/pairs.jsonl"))
    map_chunks(run, path, pairs, CHUNK, "label", label_chunk, unit="pair")
    labels = records.read(path)
    decisive = sum(abs(r["p_a"] - 0.5) >= run.cfg.dpo.margin for r in labels)
    return {"labels": len(labels), "decisive": decisive}
