"""Where each stage's files live in a run directory, and helpers shared by the record-producing stages.

Each stage module names its `INPUTS` (checked by `Run` before it runs) and `OUTPUTS` (removed by `--restart`)
with the constants below."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

from .. import records
from ..backends import GenParams, user
from ..errors import CharterError
from ..executor import map_chunks
from ..prompts import load_pool

MANIFEST = "manifest.json"
CALIBRATION, CALIBRATION_TABLE = "supervisor/calibration.json", "supervisor/calibration.md"
GENERATE = "data/generate.jsonl"
REVISE = "data/revise.jsonl"
SFT_DATA, SFT_MODEL = "data/sft.jsonl", "models/sft"
PAIRS, PAIRS_A, PAIRS_B = "data/pairs.jsonl", "data/pairs_a.jsonl", "data/pairs_b.jsonl"
PAIRS_SAMPLES = "data/pairs_samples.jsonl"
LABELS = "data/labels.jsonl"
DPO_DATA, DPO_MODEL = "data/dpo.jsonl", "models/dpo"
RL_MODEL, RL_PROGRESS = "models/rl", "rl/progress.jsonl"
CAST_DATA, CAST_DIR = "data/cast.jsonl", "models/cast"
EVAL = "eval"
METRICS, REFUSAL_CALIBRATION = "eval/metrics.json", "eval/refusal_calibration.json"
REPORT = "report.html"
TRACKING = "tracking"


def read_manifest(run_dir) -> dict | None:
    """A run directory's manifest, or None when `run_dir` is not a run directory."""
    path = Path(run_dir) / MANIFEST
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise CharterError(f"{path}: unreadable manifest ({e})") from None


def steered(manifest: dict) -> bool:
    """Whether a run's model is the steered one: its cast stage ran, and its config still has cast on."""
    on = ((manifest.get("config") or {}).get("cast") or {}).get("enabled")
    return bool(on) and ((manifest.get("stages") or {}).get("cast") or {}).get("status") == "done"


def final_model(run_dir, manifest: dict | None = None, hint: str = "") -> Path | None:
    """The folder of a run's final model, or None when `run_dir` is not a run directory. A run that has not
    trained it yet is an error; `hint` says what the caller could do instead."""
    m = read_manifest(run_dir) if manifest is None else manifest
    if m is None:
        return None
    if not m.get("final_model"):
        raise CharterError(f"{Path(run_dir) / MANIFEST}: the run has no final model yet{hint and f' ({hint})'}")
    return Path(run_dir) / m["final_model"]


def train_prompts(run, pools=("redteam", "helpful", "lookalike")) -> list[dict]:
    cfg = run.cfg
    out, seen = [], {}
    for name in pools:
        for r in load_pool(name, getattr(cfg.pools, name), cfg.seed):
            if seen.setdefault(r["id"], name) != name:  # records are keyed by id: a resume would skip the second
                raise CharterError(f"pools.{name}: prompt id {r['id']!r} is also in pools.{seen[r['id']]}; ids must "
                                   "differ across the pools (give one file other ids, or none: then each row's id is "
                                   "its file's name and line)")
            out.append(r)
    return out


def messages(run, prompt: str):
    return user(prompt, run.cfg.system_prompt)


def chunk_seed(seed: int, chunk) -> int:
    """A sampling seed that depends on which records a chunk holds, not on where a (resumed) run
    started, so a killed and resumed stage samples exactly what an uninterrupted one would."""
    key = "\x00".join(r["id"] for r in chunk)
    return seed * 1_000_003 + int(hashlib.sha256(key.encode()).hexdigest()[:8], 16)


def generate_chunk(run, chunk, role: str, params: GenParams, field: str, stage: str) -> list[dict]:
    """One response per record of `chunk` from the model `role` names (a chunk function, see executor)."""
    backend = run.backend(role)
    p = GenParams(params.max_new_tokens, params.temperature, params.top_p,
                  seed=chunk_seed(params.seed, chunk), batch_size=params.batch_size)
    texts = backend.generate([messages(run, r["prompt"]) for r in chunk], p)
    return [run.stamp({**r, field: t, "model": backend.name}, stage) for r, t in zip(chunk, texts)]


def generate_into(run, stage: str, path, rows, role: str, params: GenParams, field="response", desc=None):
    """Generate one response per row and append records, skipping ids already written.

    Rows are processed in chunks of `params.batch_size` and each chunk is written
    as soon as it is done, so a killed stage loses at most one chunk.
    """
    map_chunks(run, path, rows, params.batch_size, desc or stage, generate_chunk, role, params, field, stage)
    return records.read(path)


def rewrite(run, rel: str, rows, stage: str):
    """Replace a record file with `rows`, stamped (for files a stage writes whole, not chunk by chunk)."""
    path = run.path(rel)
    path.unlink(missing_ok=True)
    records.append(path, [run.stamp(dict(r), stage) for r in rows])
