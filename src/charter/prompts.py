"""Prompt pools: the builtin JSONL files, a local JSONL file, or a hub dataset.

Builtin pools are written by charter's authors and split into `train` and
`dev`; the dev split is for evaluation only and is never trained on.
"""
from __future__ import annotations

import os
import random
from importlib import resources
from pathlib import Path

from .errors import CharterError, where
from .yamlio import read_jsonl

BUILTIN_POOLS = {"redteam": "harmful", "helpful": "benign", "lookalike": "benign"}
LABELS = ("harmful", "benign")


def builtin_file(name: str) -> Path:
    return Path(str(resources.files("charter") / "data" / "prompts" / f"{name}.jsonl"))


def read_prompt_file(path, default_label=None, field="prompt") -> list[dict]:
    """Read `{"id", "prompt", "label", "category"?}` lines, checking each one."""
    rows = read_jsonl(path)
    seen, out = {}, []
    for r in rows:
        loc = where(path, r["_line"])
        if field not in r:
            raise CharterError(f"{loc}: missing field {field!r}")
        if not isinstance(r[field], str) or not r[field].strip():
            raise CharterError(f"{loc}: {field!r} must be a non-empty string")
        rid = r.get("id", f"{Path(path).stem}-{r['_line']}")
        if not isinstance(rid, (str, int)) or isinstance(rid, bool):
            raise CharterError(f"{loc}: 'id' must be a string or integer")
        rid = str(rid)
        if rid in seen:
            raise CharterError(f"{loc}: duplicate id {rid!r} (first at line {seen[rid]})")
        seen[rid] = r["_line"]
        label = r.get("label", default_label)
        if label not in LABELS:
            raise CharterError(f"{loc}: 'label' must be one of {', '.join(LABELS)}, got {label!r}")
        category = r.get("category", "uncategorised")
        if not isinstance(category, str):
            raise CharterError(f"{loc}: 'category' must be a string")
        out.append({"id": rid, "prompt": r[field], "label": label, "category": category,
                    "split": r.get("split", "train")})
    return out


def _from_hub(source: str, split: str, field: str, label: str) -> list[dict]:
    try:
        import datasets

        ds = datasets.load_dataset(source, split=split)
    except Exception as e:  # network, missing dataset, bad split: all user-facing
        raise CharterError(f"pool {source!r} (split {split!r}): cannot load from the hub or the local "
                           f"datasets cache ({type(e).__name__}: {str(e).splitlines()[0][:200]})") from None
    if field not in ds.column_names:
        raise CharterError(f"pool {source!r}: no column {field!r} (columns: {', '.join(ds.column_names)})")
    return [{"id": f"{source}-{i}", "prompt": str(x[field]), "label": label, "category": source, "split": split}
            for i, x in enumerate(ds)]


def load_pool(name: str, pool, seed: int = 0) -> list[dict]:
    """Load one configured pool (see `config.PoolConfig`)."""
    label = BUILTIN_POOLS.get(name, "benign")
    src = pool.source
    if src.startswith("builtin:"):
        key = src.split(":", 1)[1]
        if key not in BUILTIN_POOLS:
            raise CharterError(f"pools.{name}.source: unknown builtin pool {key!r} "
                               f"(known: {', '.join(BUILTIN_POOLS)})")
        rows = [r for r in read_prompt_file(builtin_file(key)) if r["split"] == pool.split]
    elif src.endswith(".jsonl") or Path(src).exists():
        rows = read_prompt_file(src, default_label=label, field=pool.field)
    else:
        rows = _from_hub(src, pool.split, pool.field, label)
    for r in rows:
        r["pool"] = name
    if pool.limit is not None:
        rows = list(rows)
        random.Random(seed).shuffle(rows)
        rows = sorted(rows[: pool.limit], key=lambda r: r["id"])
    if not rows:
        raise CharterError(f"pools.{name}: the pool {src!r} (split {pool.split!r}) is empty")
    return rows


def dev_prompts(limit=None, seed=0) -> list[dict]:
    """The builtin dev split of every pool: what `evaluate` measures."""
    from .config import PoolConfig

    out = []
    for name in BUILTIN_POOLS:
        out += load_pool(name, PoolConfig(source=f"builtin:{name}", split="dev", limit=limit), seed)
    return out


def shared_data() -> Path:
    """Folder of offline copies of public eval sets (`$CHARTER_SHARED_DATA`, else `../shared/data`)."""
    env = os.environ.get("CHARTER_SHARED_DATA")
    if env:
        return Path(env)
    for base in (Path.cwd(), Path(__file__).resolve().parents[2]):
        cand = base.parent / "shared" / "data"
        if cand.exists():
            return cand
    return Path.cwd().parent / "shared" / "data"
