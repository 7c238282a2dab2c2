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
