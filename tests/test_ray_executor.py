"""Ray executor on a local 2-CPU Ray cluster: same records as one process, no loss when a worker dies,
and a clear error for a cluster that is not there."""
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from charter import records
from charter.config import load_config
from charter.errors import CharterError
from charter.run import Run
from tests.stages.test_pipeline_tiny import tiny_overrides

pytestmark = pytest.mark.ray
ray = pytest.importorskip("ray", reason="Ray (the `ray` extra) is not installed")
RAY = ["executor.kind=ray", "executor.address=local", "executor.workers=2", "executor.cpus_per_worker=1"]


@pytest.fixture(scope="module", autouse=True)
def local_cluster():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def _files(out: Path):
    """Every record file's lines in file order, minus nothing: order matters downstream (SFT reads it)."""
    return {p.relative_to(out).as_posix(): p.read_text().splitlines()
            for p in sorted([*out.glob("data/*.jsonl"), *out.glob("eval/*.jsonl")])}


def test_ray_run_equals_single_process_run(tiny_model, tmp_path):
    overrides = [*tiny_overrides(tiny_model), "evaluate.suites=[]", "evaluate.capability=[]"]
    local = Run(load_config(None, overrides), tmp_path / "local")
    local.execute()
    sharded = Run(load_config(None, [*overrides, *RAY]), tmp_path / "ray")
    sharded.execute()
    a, b = _files(tmp_path / "local"), _files(tmp_path / "ray")
    assert a.keys() == b.keys() and "data/revise.jsonl" in a and "data/labels.jsonl" in a
    for name in a:
        assert a[name] == b[name], f"{name} differs between the local and the Ray run"
    # The executor is not part of the config hash: the same directory resumes under either.
    assert json.loads((tmp_path / "ray" / "manifest.json").read_text())["config_hash"] == local.cfg.hash()


def _ray_worker_pids():
    pids = []
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                if b"ray::_Worker" in (p / "cmdline").read_bytes():
                    pids.append(int(p.name))
            except OSError:
                pass
    return pids


def test_a_worker_killed_mid_stage_loses_nothing(tmp_path, caplog):
    # 40 prompts in chunks of 4 on a model that takes 0.3 s per chunk: long enough to kill a worker.
    base = ["model=fake?delay=0.3", "pools.redteam.limit=20", "pools.helpful.limit=10", "pools.lookalike.limit=10",
            "generate.batch_size=4"]
    local = Run(load_config(None, base), tmp_path / "local")
    local.execute(stages=["generate"])
    run = Run(load_config(None, [*base, *RAY]), tmp_path / "ray")
    t = threading.Thread(target=run.execute, kwargs={"stages": ["generate"]})
    t.start()
    out = tmp_path / "ray" / "data" / "generate.jsonl"
    deadline = time.time() + 120
    while not (out.exists() and records.read(out)) and time.time() < deadline:
        time.sleep(0.05)
    pids = _ray_worker_pids()
    assert pids, "no Ray worker process found"
    os.kill(pids[0], signal.SIGKILL)
    t.join(timeout=300)
    assert not t.is_alive()
    assert run.manifest["stages"]["generate"]["status"] == "done"
    assert "a Ray worker died" in caplog.text  # the kill landed mid-stage and its chunk was redone
    assert _files(tmp_path / "ray") == _files(tmp_path / "local")


def test_unreachable_cluster_is_a_clear_error_not_a_hang(tmp_path):
    from charter.executor import _reachable

    t0 = time.time()
    with pytest.raises(CharterError, match="cannot reach the Ray cluster"):
        _reachable("127.0.0.1:9")
    with pytest.raises(CharterError, match="is not local, auto"):
        _reachable("nowhere")
    # And through the CLI, in a fresh process where Ray is not yet initialised.
    cfg = tmp_path / "c.yaml"
    cfg.write_text("model: fake\n")
    r = subprocess.run([sys.executable, "-m", "charter.cli", "run", str(cfg), "--out", str(tmp_path / "x"),
                        "--stages", "generate", "--ray", "127.0.0.1:9", "pools.redteam.limit=2"],
                       capture_output=True, text=True, timeout=120, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert r.returncode != 0 and "cannot reach the Ray cluster at 127.0.0.1:9" in r.stderr
    assert "Traceback" not in r.stderr
    assert time.time() - t0 < 60
