"""Kill `charter run` with SIGKILL at 20 random moments across all stages, resume each time, and
check that the records equal an uninterrupted run's: nothing lost, nothing doubled, same content."""
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from charter import records
from tests.stages.test_pipeline_tiny import tiny_overrides

pytestmark = [pytest.mark.reliability, pytest.mark.slow]
KILLS = 20


def _cmd(cfg, out, overrides):
    return [sys.executable, "-m", "charter.cli", "run", str(cfg), "--out", str(out), *overrides]


def _env():
    return {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def _records(out: Path):
    got = {}
    for p in sorted((out / "data").glob("*.jsonl")):
        rows = records.read(p)
        ids = [r.get("id") for r in rows]
        assert len(ids) == len(set(ids)) or p.name == "sft.jsonl", f"{p.name}: doubled records"
        got[p.name] = sorted(json.dumps(r, sort_keys=True) for r in rows)
    for p in sorted((out / "eval").glob("responses_*.jsonl")):
        got[p.name] = sorted(json.dumps(r, sort_keys=True) for r in records.read(p))
    return got


def test_sigkill_anywhere_then_resume_equals_uninterrupted(tiny_model, tmp_path):
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text("# charter run tiny.yaml --out DIR (plus the overrides below)\nseed: 0\n")
    overrides = [*tiny_overrides(tiny_model), "evaluate.suites=[]", "evaluate.capability=[]"]

    clean = tmp_path / "clean"
    t0 = time.time()
    r = subprocess.run(_cmd(cfg, clean, overrides), env=_env(), capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    # Kill moments spread over a whole run: each resumed run gets a random share of the clean run's time.
    span = time.time() - t0

    # Each kill lands a few seconds into a (re)started run, long enough for the longest stage that
    # restarts from scratch to finish, so every resume makes progress. When a run completes, it is
    # checked against the clean one and a new crashed run starts, until KILLS kills have been made.
    m = json.loads((clean / "manifest.json").read_text())
    window = max(v["seconds"] for v in m["stages"].values()) + 5.0
    rng = random.Random(1234)
    kills = trials = 0
    stages_seen = set()
    reference = _records(clean)
    while kills < KILLS:
        crashed = tmp_path / f"crashed{trials}"
        trials += 1
        while True:
            proc = subprocess.Popen(_cmd(cfg, crashed, overrides), env=_env(), stdout=subprocess.DEVNULL,
                                    stderr=subprocess.DEVNULL)
            try:
                code = proc.wait(timeout=rng.uniform(2.0, window) if kills < KILLS else 900)
                assert code == 0, f"resumed run failed with exit code {code}"
                break
            except subprocess.TimeoutExpired:
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                kills += 1
                mf = crashed / "manifest.json"
                if mf.exists():
                    stages_seen |= {k for k, v in json.loads(mf.read_text())["stages"].items()
                                    if v["status"] == "running"}
        got = _records(crashed)
        assert got.keys() == reference.keys()
        for name in reference:
            assert got[name] == reference[name], f"{name} differs after a killed and resumed run (trial {trials})"
        mf = json.loads((crashed / "manifest.json").read_text())
        assert all(v["status"] == "done" for v in mf["stages"].values())
    assert kills == KILLS
    assert len(stages_seen) >= 3, stages_seen  # the kills landed in several stages
