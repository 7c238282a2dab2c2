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
    r = subprocess.run(_cmd(cfg, clean, overrides), env=_env(), capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]

    crashed = tmp_path / "crashed"
    rng = random.Random(1234)
    kills = finished = 0
    stages_seen = set()
    while kills < KILLS:
        proc = subprocess.Popen(_cmd(cfg, crashed, overrides), env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            proc.wait(timeout=rng.uniform(2.0, 9.0))
            finished += 1
            break  # it finished before we could kill it again
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            kills += 1
            m = crashed / "manifest.json"
            if m.exists():
                stages_seen |= {s for s, v in json.loads(m.read_text())["stages"].items() if v["status"] == "running"}
    r = subprocess.run(_cmd(cfg, crashed, overrides), env=_env(), capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    assert kills >= 10, f"only {kills} kills before the run finished"
    assert len(stages_seen) >= 4, stages_seen  # the kills landed across the pipeline
    a, b = _records(clean), _records(crashed)
    assert a.keys() == b.keys()
    for name in a:
        assert a[name] == b[name], f"{name} differs after {kills} kills"
    m = json.loads((crashed / "manifest.json").read_text())
    assert all(v["status"] == "done" for v in m["stages"].values())
