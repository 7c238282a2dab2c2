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
from ..supervise import calibrate
from .common import CALIBRATION, LABELS, PAIRS

INPUTS = [CALIBRATION, PAIRS]
OUTPUTS = [LABELS]
CHUNK = 32


def gate(run) -> str | None:
    """Stop unless the supervisor passed its calibration gate; a forced run goes on and gets the reason."""
    cal_path = run.path(CALIBRATION)
    cal = json.loads(cal_path.read_text())
    verdict = calibrate.gate(cal, run.cfg.supervisor)
    if not verdict["passed"]:
        msg = (f"supervisor {cal['supervisor']} failed the calibration gate: {'; '.join(verdict['reasons'])} "
               f"(see {cal_path})")
        if not run.force:
            raise CharterError(msg + "; rerun with --force to label anyway")
        return msg
    return None


def label_chunk(run, chunk) -> list[dict]:
    """Supervisor verdicts for one chunk of pairs (a chunk function, see executor)."""
    sup = run.supervisor
    return [run.stamp({**p, **v, "supervisor": sup.name}, "label") for p, v in zip(chunk, sup.judge(chunk))]


def run(run):
    override = gate(run)
    path = run.path(LABELS)
    pairs = records.read(run.path(PAIRS))
    map_chunks(run, path, pairs, CHUNK, "label", label_chunk, unit="pair")
    labels = records.read(path)
    decisive = sum(abs(r["p_a"] - 0.5) >= run.cfg.dpo.margin for r in labels)
    return {"labels": len(labels), "decisive": decisive} | ({"gate_override": override} if override else {})
