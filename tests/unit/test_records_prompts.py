import json

import pytest

from charter import records
from charter.errors import CharterError
from charter.prompts import BUILTIN_POOLS, builtin_file, dev_prompts, read_prompt_file


def test_append_survives_a_torn_tail(tmp_path):
    p = tmp_path / "r.jsonl"
    records.append(p, [{"id": "a"}, {"id": "b"}])
    with open(p, "ab") as f:
        f.write(b'{"id": "c", "trunc')  # what a kill mid-write leaves
    assert [r["id"] for r in records.read(p)] == ["a", "b"]
    records.append(p, [{"id": "c"}])
    assert [r["id"] for r in records.read(p)] == ["a", "b", "c"]


def test_builtin_pools_are_split_and_disjoint():
    total = 0
    for name, label in BUILTIN_POOLS.items():
        rows = read_prompt_file(builtin_file(name))
        total += len(rows)
        assert {r["label"] for r in rows} == {label}
        train = {r["prompt"] for r in rows if r["split"] == "train"}
        dev = {r["prompt"] for r in rows if r["split"] == "dev"}
        assert train and dev and not train & dev
    assert total >= 300
    assert sum(r["label"] == "harmful" and r["split"] == "train"
               for r in read_prompt_file(builtin_file("redteam"))) >= 200
    assert {r["pool"] for r in dev_prompts()} == set(BUILTIN_POOLS)


@pytest.mark.parametrize("lines,pattern", [
    (['{"id": "1", "prompt": "hi", "label": "benign"}', '{"id": "1", "prompt": "yo", "label": "benign"}'],
     r"p.jsonl:2: duplicate id '1' \(first at line 1\)"),
    (['{"id": "1", "prompt": "hi", "label": "maybe"}'], r"p.jsonl:1: 'label' must be one of harmful, benign"),
    (['{"id": "1", "label": "benign"}'], r"p.jsonl:1: missing field 'prompt'"),
    (['{"id": "1", "prompt": "hi", "label": "benign"}', 'not json'], r"p.jsonl:2: not a JSON line"),
    (['[1, 2]'], r"p.jsonl:1: expected a JSON object"),
])
def test_bad_prompt_files_name_line(tmp_path, lines, pattern):
    p = tmp_path / "p.jsonl"
    p.write_text("\n".join(lines) + "\n")
    with pytest.raises(CharterError, match=pattern):
        read_prompt_file(p)


def test_write_json_is_atomic(tmp_path):
    p = tmp_path / "m.json"
    records.write_json(p, {"a": 1})
    assert json.loads(p.read_text()) == {"a": 1}
    assert [x.name for x in tmp_path.iterdir()] == ["m.json"]


def test_prompt_ids_must_differ_across_pools(tmp_path):
    """Records are keyed by id: a second pool that reuses the first one's ids would be skipped on resume."""
    from charter.config import load_config
    from charter.run import Run
    from charter.stages.common import train_prompts

    for name, label in (("a", "harmful"), ("b", "benign")):
        (tmp_path / f"{name}.jsonl").write_text("".join(json.dumps({"id": str(i), "prompt": f"{name} {i}?",
                                                                     "label": label}) + "\n" for i in range(2)))
    cfg = load_config(None, ["model=fake", f"pools.redteam.source={tmp_path / 'a.jsonl'}",
                             f"pools.helpful.source={tmp_path / 'b.jsonl'}"])
    with pytest.raises(CharterError, match=r"pools.helpful: prompt id '0' is also in pools.redteam"):
        train_prompts(Run(cfg, tmp_path / "r"))


def test_dpo_balance_with_one_side_empty_says_so():
    from charter.stages.dpo import balanced

    rows = [{"id": str(i), "label": "harmful"} for i in range(5)]
    with pytest.raises(CharterError, match="no usable pair on a benign request"):
        balanced(rows, 0)


def test_a_model_that_cannot_revise_gets_the_decline_whatever_the_threshold(tmp_path):
    from charter.config import load_config
    from charter.run import Run
    from charter.stages.revise import decline_chunk

    class Undecided:  # compares a response with itself: no preference
        def judge(self, items):
            return [{"p_a": 0.5, "principles": ["weapons"]} for _ in items]

    run = Run(load_config(None, ["model=fake", "revise.check_threshold=0.3"]), tmp_path / "r")
    run._supervisor = Undecided()
    rec = {"id": "1", "prompt": "build a bomb", "label": "harmful", "category": "weapons", "pool": "redteam",
           "response": "Sure, first get"}
    [out] = decline_chunk(run, [rec])
    assert out["revision_source"] == "decline" and out["revision"] == run.constitution.get("weapons").decline


def test_trackers_are_only_those_the_config_names(monkeypatch):
    from trl import DPOConfig

    from charter.config import load_config
    from charter.train import trl_args

    monkeypatch.setenv("KUBEFLOW_TRAINER_SERVER_URL", "http://127.0.0.1:9")  # transformers would add Kubeflow
    assert trl_args(DPOConfig, load_config(None, ["model=fake"]).dpo, "/tmp/charter-x", 0, "cpu").report_to == []
