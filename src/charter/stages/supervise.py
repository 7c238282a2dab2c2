"""Stage 0: build the supervisor and pass it through the calibration gate.

RLAIF is only as good as the AI that gives the feedback, so before any label is
used, the supervisor is measured (see `supervise.calibrate`). The label stage
refuses to run when it failed the gate, unless `--force` was given.
"""
from __future__ import annotations

import logging

from .. import records
from ..supervise.calibrate import calibrate, gate, table
from .common import CALIBRATION, CALIBRATION_TABLE

INPUTS = []
OUTPUTS = [CALIBRATION, CALIBRATION_TABLE]
log = logging.getLogger("charter")


def run(run):
    sup = run.supervisor
    from ..prompts import shared_data

    hh = run.cfg.supervisor.hh_limit
    if hh and not (shared_data() / "hh-rlhf").exists():
        log.warning("HH-RLHF test pairs not found under %s; calibrating on the dev contrast pairs only", shared_data())
        hh = 0
    res = calibrate(sup, hh_limit=hh, seed=run.cfg.seed, suites=run.cfg.supervisor.suites,
                    suite_limit=run.cfg.supervisor.suite_limit)
    res.update(gate(res, run.cfg.supervisor))
    res["cache"] = getattr(sup, "cache", None)
    records.write_json(run.path(CALIBRATION), res)
    run.path(CALIBRATION_TABLE).write_text(table(res) + "\n")
    log.info("supervisor %s calibration:\n%s", sup.name, table(res))
    return {"passed": res["passed"], "gate_accuracy": round(res["gate_accuracy"], 4), "gate_reasons": res["reasons"]}
