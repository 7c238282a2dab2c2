"""Property-based tests: any bytes given as a config, constitution, prompt file or pairs file end
either in success or in a CharterError naming the file; never in another exception."""

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from charter.cli import _load_pairs
from charter.config import load_config
from charter.constitution import load_constitution
from charter.errors import CharterError
from charter.prompts import read_prompt_file

pytestmark = pytest.mark.reliability
SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

yaml_scalars = st.one_of(st.none(), st.booleans(), st.integers(-10, 10**6), st.floats(allow_nan=True),
                         st.text(max_size=30))
yaml_values = st.recursive(yaml_scalars, lambda c: st.one_of(st.lists(c, max_size=3),
                                                             st.dictionaries(st.text(max_size=8), c, max_size=3)),
                           max_leaves=8)
CONFIG_KEYS = ["model", "seed", "device", "pools", "sft", "dpo", "revise", "pairs", "supervisor", "evaluate",
               "constitution", "generate", "bogus"]


def _dump(obj):
    import yaml

    return yaml.safe_dump(obj, allow_unicode=True)


def _check(fn, path):
    try:
        fn(path)
    except CharterError as e:
        assert str(path.name) in str(e) or "override" in str(e), str(e)
        assert "\n" not in str(e).strip() or len(str(e)) < 2000


@SETTINGS
@given(st.one_of(st.binary(max_size=300),
                 st.dictionaries(st.sampled_from(CONFIG_KEYS), yaml_values, max_size=5).map(lambda d: _dump(d).encode())))
def test_fuzz_config(tmp_path, data):
    p = tmp_path / "c.yaml"
    p.write_bytes(data)
    _check(load_config, p)


PRINCIPLE = {"id": "a", "text": "t", "critique": "c", "revision": "r", "comparison": "q"}


@SETTINGS
@given(st.one_of(
    st.binary(max_size=300),
    st.builds(lambda extra, drop, n: _dump({"name": "n", "version": "1", "principles": [
        {k: v for k, v in {**PRINCIPLE, **extra}.items() if k != drop} for _ in range(n)]}).encode(),
        st.dictionaries(st.sampled_from(list(PRINCIPLE) + ["kind", "examples", "decline", "zzz"]), yaml_values,
                        max_size=3),
        st.sampled_from([None, *PRINCIPLE]), st.integers(0, 3))))
def test_fuzz_constitution(tmp_path, data):
    p = tmp_path / "const.yaml"
    p.write_bytes(data)
    _check(lambda x: load_constitution(str(x)), p)


json_values = st.one_of(st.none(), st.booleans(), st.integers(), st.text(max_size=20), st.lists(st.integers(), max_size=2))
row = st.dictionaries(st.sampled_from(["id", "prompt", "label", "category", "a", "b", "x"]), json_values, max_size=6)


def _jsonl(rows, junk):
    import json

    out = b"".join(json.dumps(r).encode() + b"\n" for r in rows)
    return out + junk


@SETTINGS
@given(st.lists(row, max_size=5), st.binary(max_size=40))
def test_fuzz_prompt_file(tmp_path, rows, junk):
    p = tmp_path / "p.jsonl"
    p.write_bytes(_jsonl(rows, junk))
    _check(read_prompt_file, p)


@SETTINGS
@given(st.lists(row, max_size=5), st.binary(max_size=40))
def test_fuzz_pairs_file(tmp_path, rows, junk):
    p = tmp_path / "pairs.jsonl"
    p.write_bytes(_jsonl(rows, junk))
    _check(_load_pairs, p)
