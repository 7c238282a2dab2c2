"""Helpers shared by the record-producing stages."""
from __future__ import annotations

from tqdm import tqdm

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


def generate_into(run, stage: str, path, rows, backend, params: GenParams, field="response", desc=None,
                  make_messages=None):
    """Generate one response per row and append records, skipping ids already written.

    Rows are processed in chunks of `params.batch_size` and each chunk is written
    as soon as it is done, so a killed stage loses at most one chunk.
    """
    done = records.done_ids(path)
    todo = [r for r in rows if r["id"] not in done]
    make_messages = make_messages or (lambda r: messages(run, r["prompt"]))
    bs = max(1, params.batch_size)
    with tqdm(total=len(rows), initial=len(rows) - len(todo), desc=desc or stage, unit="rec") as bar:
        for i in range(0, len(todo), bs):
            chunk = todo[i:i + bs]
            p = GenParams(params.max_new_tokens, params.temperature, params.top_p,
                          seed=params.seed + i // bs + 7919 * len(done), batch_size=bs)
            texts = backend.generate([make_messages(r) for r in chunk], p)
            recs = [run.stamp({**r, field: t, "model": backend.name}, stage) for r, t in zip(chunk, texts)]
            records.append(path, recs)
            bar.update(len(chunk))
    return records.read(path)
