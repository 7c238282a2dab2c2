import csv
import json

import pytest

from charter.errors import CharterError
from charter.evals import suites
from charter.evals.compare import compare
from tests.conftest import SHARED

needs_shared = pytest.mark.skipif(not SHARED.exists(), reason="shared data folder not present")


@needs_shared
@pytest.mark.parametrize("name,n,harmful", [("xstest", 450, 200), ("strongreject", 313, 313),
                                            ("harmbench", 240, 240), ("advbench", 520, 520)])
def test_offline_suites_load(name, n, harmful, monkeypatch):
    monkeypatch.setenv("CHARTER_SHARED_DATA", str(SHARED))
    rows = suites.load_suite(name)
    assert len(rows) == n and sum(r["label"] == "harmful" for r in rows) == harmful
    assert len({r["id"] for r in rows}) == n


def test_missing_suite_names_local_path_and_hub(tmp_path, monkeypatch):
    monkeypatch.setenv("CHARTER_SHARED_DATA", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(CharterError, match=r"suite 'xstest': not found at .*xstest_prompts.csv and the hub dataset "
                                           r"'walledai/XSTest'"):
        suites.load_suite("xstest")
    with pytest.raises(CharterError, match="unknown suite"):
        suites.load_suite("nope")


def test_empty_suite_is_an_error(tmp_path):
    p = tmp_path / "empty.jsonl"
    p.write_text("")
    with pytest.raises(CharterError, match="is empty"):
        suites.load_suite(str(p))


def test_builtin_pools_do_not_overlap_the_eval_suites(monkeypatch):
    if not SHARED.exists():
        pytest.skip("shared data folder not present")
    monkeypatch.setenv("CHARTER_SHARED_DATA", str(SHARED))
    from charter.prompts import BUILTIN_POOLS, builtin_file, read_prompt_file

    ours = [r["prompt"] for name in BUILTIN_POOLS for r in read_prompt_file(builtin_file(name))]
    for name in ("xstest", "strongreject", "harmbench", "advbench"):
        assert suites.overlap(ours, suites.load_suite(name)) == 0, name


def test_compare_writes_tables_and_caches(tmp_path, monkeypatch):
    from charter.backends.fake import FakeBackend

    calls = []
    orig = FakeBackend.generate
    monkeypatch.setattr(FakeBackend, "generate", lambda self, p, params: calls.append(len(p)) or orig(self, p, params))
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps({"id": str(i), "prompt": f"q{i}", "label": "harmful" if i % 2 else "benign"})
                               + "\n" for i in range(6)))
    res = compare(["fake", "fake:b"], [str(prompts)], tmp_path / "out")
    assert res["models"] == ["fake", "fake:b"]
    first = sum(calls)
    assert first == 12
    md = (tmp_path / "out" / "table.md").read_text().splitlines()
    assert md[0] == "| benchmark | fake | fake:b |" and len(md) == 4  # header, rule, harmful row, benign row
    assert "n=3" in md[2]
    with open(tmp_path / "out" / "table.csv") as f:
        assert len(list(csv.reader(f))) == 3
    assert "<table>" in (tmp_path / "out" / "table.html").read_text()
    compare(["fake", "fake:b"], [str(prompts)], tmp_path / "out")
    assert sum(calls) == first  # everything came from the cache
    compare(["fake"], [str(prompts)], tmp_path / "out", max_new_tokens=32)
    assert sum(calls) == first + 6  # answers of another length are generated, not reused


def test_a_run_directory_stands_for_its_final_model(tmp_path):
    from charter.evals.compare import resolve

    run = tmp_path / "run"
    run.mkdir()
    assert resolve(str(run)) == ("run", str(run))  # a folder without a manifest is a model folder
    assert resolve("org/model") == ("org/model", "org/model")
    (run / "manifest.json").write_text(json.dumps({"stages": {}}))
    with pytest.raises(CharterError, match="run has no final model yet"):
        resolve(str(run))
    (run / "manifest.json").write_text("{not json")
    with pytest.raises(CharterError, match="manifest.json: unreadable manifest"):
        resolve(str(run))
    (run / "manifest.json").write_text(json.dumps({"final_model": "models/dpo"}))
    assert resolve(str(run)) == ("run", str(run / "models" / "dpo"))


def test_harmfulness_counts_only_compliant_responses(tmp_path):
    from charter.backends import get_backend
    from charter.evals.core import evaluate

    def harm(texts):
        return [0.8 for _ in texts]
    harm.name = "constant"
    prompts = [{"id": str(i), "prompt": f"q{i}", "label": "harmful"} for i in range(4)]
    m = evaluate(get_backend("fake"), prompts, tmp_path / "r.jsonl", harm=harm)
    assert m["harm_scorer"] == "constant"
    assert m["harmfulness"]["harmful"] == pytest.approx(0.8)  # the fake never refuses
    res = compare(["fake"], ["dev"], tmp_path / "c", limit=6, harm=harm)
    assert any(r["metric"] == "harmfulness (harmful prompts)" for r in res["rows"])
