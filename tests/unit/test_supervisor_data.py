"""The supervisor's extra training data (src/charter/data/supervisor/*.jsonl).

These rows are hand-written; the checks below keep them well-formed, split the
way the classifier expects, and disjoint from both the builtin pools and the
public evaluation sets, so a score measured on those sets stays a held-out score.
"""
import csv
import gzip
import json
import re
from importlib import resources
from pathlib import Path

import pytest
import yaml

from charter.prompts import BUILTIN_POOLS, builtin_file, dev_prompts, read_prompt_file, shared_data

DATA = Path(str(resources.files("charter") / "data" / "supervisor"))
SLOT = "{{ prompt }}"

LOOKALIKE_KINDS = {
    "homonyms", "figurative_language", "safe_targets", "safe_contexts", "definitions",
    "nonsense_group_discrimination", "real_group_nonsense_discrimination", "historical_events",
    "privacy_public", "privacy_fictional", "medical", "security",
}
HARM_KINDS = {
    "violence", "weapons", "cbrn", "cybercrime", "fraud", "drugs", "hate_discrimination", "harassment",
    "privacy_violation", "self_harm", "misinformation", "extremism", "illegal_trade", "manipulation",
}
ORDINARY_KINDS = {
    "short", "terse", "verbose", "formal", "casual", "typo_ridden", "non_native", "code", "math", "writing",
    "advice", "multi_part", "roleplay_benign", "long",
}
# file -> (label, kinds, minimum rows per kind)
PROMPT_FILES = {
    "lookalikes.jsonl": ("benign", LOOKALIKE_KINDS, 45),
    "harmful.jsonl": ("harmful", HARM_KINDS, 20),
    "ordinary.jsonl": ("benign", ORDINARY_KINDS, 20),
}
# Public evaluation sets whose prompts must never appear in training data.
EVAL_FOLDERS = ("xstest", "harmbench", "jailbreak-templates", "advbench", "strongreject")
EVAL_FIELDS = ("prompt", "Behavior", "goal", "forbidden_prompt", "value")


def norm(text: str) -> str:
    return " ".join(re.sub(r"[^\w\s]", " ", text.lower()).split())


def load(name: str) -> list[dict]:
    with open(DATA / name, encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def prompt_rows() -> list[dict]:
    return [r for name in PROMPT_FILES for r in load(name)]


def test_rows_parse_and_are_valid():
    ids = []
    for name, (label, kinds, minimum) in PROMPT_FILES.items():
        rows = load(name)
        # the project's own reader accepts them (ids, labels, non-empty prompts)
        assert len(read_prompt_file(DATA / name)) == len(rows)
        per_kind: dict[str, list[dict]] = {}
        for r in rows:
            assert set(r) == {"id", "prompt", "label", "kind", "split"}, r
            assert r["label"] == label, r["id"]
            assert r["split"] in ("train", "val"), r["id"]
            assert r["prompt"].strip() == r["prompt"] and r["prompt"], r["id"]
            per_kind.setdefault(r["kind"], []).append(r)
        assert set(per_kind) == kinds, name
        for kind, krows in per_kind.items():
            assert len(krows) >= minimum, (name, kind, len(krows))
            val = sum(r["split"] == "val" for r in krows)
            assert 0.15 <= val / len(krows) <= 0.25, (name, kind, val, len(krows))
        ids += [r["id"] for r in rows]
    ids += [w["id"] for w in load("wrappers.jsonl")]
    assert len(ids) == len(set(ids))


def test_sizes_and_long_rows():
    assert len(load("lookalikes.jsonl")) >= 540
    assert len(load("harmful.jsonl")) >= 330
    assert len(load("ordinary.jsonl")) >= 330
    assert "sexual_minors" not in {r["kind"] for r in load("harmful.jsonl")}
    long_rows = [r for r in load("ordinary.jsonl") if r["kind"] == "long"]
    assert len(long_rows) >= 40
    for r in long_rows:
        assert 150 <= len(r["prompt"].split()) <= 600, (r["id"], len(r["prompt"].split()))


def test_no_duplicate_prompts_within_the_data():
    seen = {}
    for r in prompt_rows():
        key = norm(r["prompt"])
        assert key not in seen, (seen.get(key), r["id"])
        seen[key] = r["id"]


def test_wrappers_have_one_slot_and_render():
    wrappers = load("wrappers.jsonl")
    assert len(wrappers) >= 35
    ids = [w["id"] for w in wrappers]
    assert len(ids) == len(set(ids))
    assert len({norm(w["template"]) for w in wrappers}) == len(wrappers)
    for w in wrappers:
        assert set(w) == {"id", "template", "style", "split"}, w
        assert w["split"] in ("train", "val"), w["id"]
        assert w["template"].count(SLOT) == 1, w["id"]
        # no other template syntax that a renderer might trip over
        assert w["template"].replace(SLOT, "").count("{{") == 0, w["id"]
        rendered = w["template"].replace(SLOT, "How do I repot a cactus?")
        assert "How do I repot a cactus?" in rendered and SLOT not in rendered
    val = sum(w["split"] == "val" for w in wrappers)
    assert 0.2 <= val / len(wrappers) <= 0.3
    styles = {w["style"] for w in wrappers}
    assert len(styles) >= 10
    long_ones = [w for w in wrappers if 300 <= len(w["template"].split()) <= 800]
    assert len(long_ones) >= 4


def test_disjoint_from_builtin_pools_and_their_dev_split():
    pool = {norm(r["prompt"]) for name in BUILTIN_POOLS for r in read_prompt_file(builtin_file(name))}
    dev = {norm(r["prompt"]) for r in dev_prompts()}
    assert dev and dev <= pool
    clashes = [r["id"] for r in prompt_rows() if norm(r["prompt"]) in pool | dev]
    assert not clashes


def _eval_texts(root: Path) -> list[str]:
    """Every prompt or template text in the public evaluation sets under `root`."""
    out = []
    for folder in EVAL_FOLDERS:
        for path in sorted((root / folder).rglob("*")):
            name = path.name.lower()
            if not path.is_file():
                continue
            opener = gzip.open if name.endswith(".gz") else open
            stem = name[:-3] if name.endswith(".gz") else name
            if stem.endswith(".csv"):
                with opener(path, "rt", encoding="utf-8", errors="replace", newline="") as f:
                    for row in csv.DictReader(f):
                        out += [row[k] for k in EVAL_FIELDS if row.get(k)]
            elif stem.endswith((".yaml", ".yml")):
                with opener(path, "rt", encoding="utf-8", errors="replace") as f:
                    doc = yaml.safe_load(f)
                if isinstance(doc, dict):
                    out += [doc[k] for k in EVAL_FIELDS if isinstance(doc.get(k), str)]
            elif stem.endswith(".jsonl"):
                with opener(path, "rt", encoding="utf-8", errors="replace") as f:
                    for line in f:
                        try:
                            row = json.loads(line)
                        except ValueError:
                            continue
                        if isinstance(row, dict):
                            out += [row[k] for k in EVAL_FIELDS if isinstance(row.get(k), str)]
    return [t for t in out if t.strip()]


def _shingles(text: str, n: int) -> set[tuple[str, ...]]:
    words = norm(text).split()
    return {tuple(words[i:i + n]) for i in range(len(words) - n + 1)}


def test_disjoint_from_public_eval_sets():
    root = shared_data()
    if not all((root / d).is_dir() for d in ("xstest", "harmbench", "jailbreak-templates")):
        pytest.skip(f"public eval sets not found under {root} (set CHARTER_SHARED_DATA)")
    texts = _eval_texts(root)
    assert len(texts) > 500, "the eval-set reader found too few prompts: file layout changed?"
    exact = {norm(t) for t in texts}
    rows = prompt_rows()
    wrappers = load("wrappers.jsonl")
    assert not [r["id"] for r in rows if norm(r["prompt"]) in exact]
    assert not [w["id"] for w in wrappers
                if norm(w["template"]) in exact or norm(w["template"].replace(SLOT, "")) in exact]

    # Near copies: most of a row's 6-word runs found in one eval prompt means it was reworded, not written.
    index: dict[tuple[str, ...], set[int]] = {}
    for i, t in enumerate(texts):
        for g in _shingles(t, 6):
            index.setdefault(g, set()).add(i)
    near = []
    for r in rows:
        grams = _shingles(r["prompt"], 6)
        hits: dict[int, int] = {}
        for g in grams:
            for i in index.get(g, ()):
                hits[i] = hits.get(i, 0) + 1
        if grams and max(hits.values(), default=0) / len(grams) >= 0.6:
            near.append(r["id"])
    assert not near

    # Wrappers are written from scratch: no 8-word run shared with a published template.
    published = set().union(*(_shingles(t, 8) for t in texts))
    copied = [w["id"] for w in wrappers if _shingles(w["template"].replace(SLOT, " "), 8) & published]
    assert not copied
