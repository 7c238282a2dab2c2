import pytest

from charter.constitution import load_constitution
from charter.errors import CharterError

GOOD = """name: t
version: "1"
principles:
  - id: a
    text: Do no harm.
    critique: Critique it.
    revision: Revise it.
    comparison: Which is less harmful?
  - id: b
    text: Be helpful.
    critique: Critique it.
    revision: Revise it.
    comparison: Which is more helpful?
    kind: helpful
"""


def test_builtin_constitutions_load():
    d = load_constitution("default")
    assert 12 <= len(d.principles) <= 20
    ids = {p.id for p in d.principles}
    for needed in ("physical-harm", "weapons", "cyber", "fraud", "hate", "harassment", "privacy", "self-harm",
                   "child-safety", "extremism", "helpfulness"):
        assert needed in ids
    assert any(p.kind == "helpful" for p in d.principles)
    s = load_constitution("small")
    assert len(s.principles) < len(d.principles) and s.hash != d.hash


def test_hash_changes_with_content(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text(GOOD)
    h1 = load_constitution(str(p)).hash
    p.write_text(GOOD.replace("Do no harm.", "Do no harm at all."))
    assert load_constitution(str(p)).hash != h1


@pytest.mark.parametrize("bad,pattern", [
    (GOOD.replace("  - id: b", "  - id: a"), r"c.yaml:9: duplicate principle id 'a' \(first at line 4\)"),
    (GOOD.replace("text: Do no harm.", "text: ''"), r"c.yaml:5: 'text' must not be empty"),
    (GOOD.replace("    comparison: Which is less harmful?", "    comparison: x\n    colour: red"),
     r"c.yaml:9: unknown key 'principles\[0\].colour'"),
    (GOOD.replace("    critique: Critique it.\n    revision: Revise it.\n    comparison: Which is less harmful?\n", "", 1),
     r"c.yaml:4: missing required key 'principles\[0\].critique'"),
    ("name: x\nversion: 1\nprinciples: []\n", r"c.yaml:3: a constitution needs at least one principle"),
    ("name: [unclosed\n", r"c.yaml:\d+: invalid YAML"),
])
def test_bad_constitutions_name_file_and_line(tmp_path, bad, pattern):
    p = tmp_path / "c.yaml"
    p.write_text(bad)
    with pytest.raises(CharterError, match=pattern):
        load_constitution(str(p))


def test_principle_sampling_is_deterministic():
    c = load_constitution("default")
    a = [c.sample(f"r{i}", seed=3, kind="harm").id for i in range(20)]
    assert a == [c.sample(f"r{i}", seed=3, kind="harm").id for i in range(20)]
    assert len(set(a)) > 3
    assert all(c.get(i).kind == "harm" for i in a)
