"""A second run of one base model reads its generations from the cache instead of generating them."""
import json

import pytest

from charter import records
from charter.backends.hf import HFBackend
from charter.run import Run
from charter.stages import common
from tests.stages.test_pipeline_tiny import tiny_cfg

pytestmark = pytest.mark.filterwarnings("ignore")


def test_second_run_generates_nothing_and_matches(tiny_model, tmp_path, tmp_cache, monkeypatch):
    calls = []
    real = HFBackend.generate
    monkeypatch.setattr(HFBackend, "generate", lambda self, p, params: calls.append(len(p)) or real(self, p, params))
    cfg = tiny_cfg(tmp_path, tiny_model, ["cache=true"])
    first = Run(cfg, tmp_path / "a")
    first.execute(stages=["generate"])
    assert calls, "the first run generates"
    n = len(calls)
    second = Run(cfg, tmp_path / "b")
    second.execute(stages=["generate"])
    assert len(calls) == n  # no new model call
    assert records.read(first.path(common.GENERATE)) == records.read(second.path(common.GENERATE))
    stage = json.loads(second.path("manifest.json").read_text())["stages"]["generate"]
    assert stage["cached_batches"] == n
    # Another seed samples anew.
    Run(tiny_cfg(tmp_path, tiny_model, ["cache=true", "seed=5"]), tmp_path / "c").execute(stages=["generate"])
    assert len(calls) > n
