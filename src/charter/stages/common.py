"""Helpers shared by the record-producing stages."""
from __future__ import annotations

import hashlib

from .. import records
from ..backends import GenParams, user
from ..prompts import load_pool


def train_prompts(run, pools=("redteam", "helpful", "lookalike")) -> list[dict]:
    cfg = run.cfg
    out = []
    for name in pools:
        out += load_pool(name, getattr(cfg.pools, name), cfg.seed)
    return out


def messages(run, prompt: str):
    return user(prompt, run.cfg.system_prompt)


def chunk_seed(seed: int, chunk) -> int:
    """A sampling seed that depends on which records a chunk holds, not on where a (resumed) run
    started, so a killed and resumed stage samples exactly what an uninterrupted one would."""
    key = "\x00".join(r["id"] for r in chunk)
    return seed * 1_000_003 + int(hashlib.sha256(key.encode()).hexdigest()[:8], 16)


def generate_into(run, stage: str, path, rows, backend, params: GenParams, field="response", desc=None,
                  make_messages=None):
    """Generate one response per row and append records, skipping ids already written.

    Rows are processed in chunks of `params.batch_size` and each chunk is written
    as soon as it is done, so a killed stage loses at most one chunk.
    """
    make_messages = make_messages or (lambda r: messages(run, r["prompt"]))
    for chunk in records.resumable(path, rows, params.batch_size, desc or stage):
        p = GenParams(params.max_new_tokens, params.temperature, params.top_p,
                      seed=chunk_seed(params.seed, chunk), batch_size=params.batch_size)
        texts = backend.generate([make_messages(r) for r in chunk], p)
        records.append(path, [run.stamp({**r, field: t, "model": backend.name}, stage) for r, t in zip(chunk, texts)])
    return records.read(path)
