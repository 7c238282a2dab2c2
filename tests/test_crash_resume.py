"""Kill `charter run configs/smoke.yaml` with SIGKILL at 20 random moments, in every stage, resume each time,
and check the records against an uninterrupted run's: nothing lost, nothing doubled, the same content.

Each kill targets a stage: the harness waits until the manifest says that stage is running, then kills
after a random share of the time the stage took in the uninterrupted run. The crashed run is then resumed to
the end and compared."""
import hashlib
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
from charter.config import load_config
from charter.run import pipeline

pytestmark = [pytest.mark.reliability, pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "configs" / "smoke.yaml"
STAGES = pipeline(load_config(SMOKE))
# One crashed run takes all 20 kills, more of them in the longer stages; a stage killed again resumes
# from what its earlier attempts wrote.
PLANS = [["supervise", "supervise", "generate", "generate", "revise", "revise", "revise", "sft", "sft", "pairs",
          "pairs", "label", "dpo", "dpo", "dpo", "evaluate", "evaluate", "evaluate", "report", "report"]]


def _cmd(out):
    # --force: the smoke supervisor's gate verdict is not what this test is about.
    # cache=false: cached generations would make the resumed stages too short for kills to land in.
    return [sys.executable, "-m", "charter.cli", "run", str(SMOKE), "--out", str(out), "--force", "cache=false"]


def _env():
    return {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def _manifest(out):
    try:
        return json.loads((out / "manifest.json").read_text())
    except (OSError, ValueError):
        return {}


def _status(out, stage):
    return _manifest(out).get("stages", {}).get(stage, {}).get("status")


def _records(out: Path):
    got = {}
    for p in sorted([*out.glob("data/*.jsonl"), *out.glob("eval/*.jsonl")]):
        rows = records.read(p)
        ids = [r.get("id") for r in rows]
        assert len(ids) == len(set(ids)) or p.name == "sft.jsonl", f"{p.name}: doubled records"
        got[p.relative_to(out).as_posix()] = sorted(json.dumps(r, sort_keys=True) for r in rows)
    return got


def _weights(out, role):
    p = out / "models" / role / "model.safetensors"
    return hashlib.sha256(p.read_bytes()).hexdigest() if p.exists() else None


def _kill_in(out, stage, share, rng):
    """Start (or resume) the run; kill it inside `stage`. Returns the stage it died in, or None if the run
    finished first."""
    proc = subprocess.Popen(_cmd(out), env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 900
        while _status(out, stage) != "running":
            if proc.poll() is not None or _status(out, stage) == "done" or time.time() > deadline:
                proc.wait(timeout=900)
                return None
            time.sleep(0.005)
        time.sleep(rng.uniform(0, 0.9) * share)
        if proc.poll() is not None:
            return None
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        running = [s for s, v in _manifest(out).get("stages", {}).items() if v.get("status") == "running"]
        return running[0] if running else stage
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_sigkill_in_every_stage_then_resume_equals_uninterrupted(smoke_run, tmp_path):
    clean = smoke_run  # the uninterrupted run (tests/conftest.py)
    seconds = {s: v["seconds"] for s, v in _manifest(clean)["stages"].items()}
    reference = _records(clean)
    rng = random.Random(1234)
    kills, landed, identical = 0, set(), []
    plans, trial = list(PLANS), 0
    while plans:
        plan = plans.pop(0)
        crashed = tmp_path / f"crashed{trial}"
        trial += 1
        for stage in plan:
            if _status(crashed, stage) == "done":
                continue  # an earlier kill overshot into a later stage
            # A stage missed once is aimed at earlier in its run the next time.
            share = seconds[stage] if trial == 1 else seconds[stage] / 4
            where = _kill_in(crashed, stage, share, rng)
            if where:
                kills += 1
                landed.add(where)
        r = subprocess.run(_cmd(crashed), env=_env(), capture_output=True, text=True, timeout=1800)
        assert r.returncode == 0, r.stderr[-3000:]
        got = _records(crashed)
        assert got.keys() == reference.keys()
        # Nothing lost, nothing doubled: the same records by id in every file.
        for name in reference:
            ids = lambda rows: sorted(json.loads(x).get("id") for x in rows)  # noqa: E731
            assert ids(got[name]) == ids(reference[name]), f"{name}: records lost or doubled (trial {trial})"
        # Same content: records made before training always; after it, wherever training reproduced the
        # clean run's weights bit for bit (a deterministic backend on the same machine).
        same_sft = _weights(crashed, "sft") == _weights(clean, "sft")
        same_dpo = same_sft and _weights(crashed, "dpo") == _weights(clean, "dpo")
        identical.append({"sft_weights": same_sft, "dpo_weights": same_dpo})
        for name in reference:
            before_sft = (name in ("data/generate.jsonl", "data/revise.jsonl", "data/sft.jsonl")
                          or name.endswith("_base.jsonl"))
            if before_sft or same_sft and not name.startswith("eval/") or same_dpo:
                assert got[name] == reference[name], f"{name} differs after kills and resumes (trial {trial})"
        assert all(v["status"] == "done" for v in _manifest(crashed)["stages"].values())
        # Some targeted kills miss: a short stage can end before the kill lands. Another crashed run then
        # aims at the stages not yet hit (or at random ones, until there are 20 kills), a few runs at most.
        missed = [s for s in STAGES if s not in landed]
        if not plans and (kills < 20 or missed) and trial < 6:
            plans.append(missed or sorted(rng.sample(STAGES, 3), key=STAGES.index))
    # The figures the README quotes, kept as a test artifact.
    (ROOT / "test-artifacts").mkdir(exist_ok=True)
    (ROOT / "test-artifacts" / "crash_resume.json").write_text(json.dumps(
        {"kills": kills, "crashed_runs": trial, "landed_in": sorted(landed), "identical": identical}, indent=2))
    assert kills >= 20
    assert landed == set(STAGES), f"no kill landed in {set(STAGES) - landed}"
