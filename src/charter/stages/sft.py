"""Stage 3: supervised fine-tuning on the revisions (CAI paper, section 3.1).

The targets are the final revisions of red-team responses, mixed with the base
model's own responses to helpful and lookalike prompts so the model keeps
answering harmless requests (`sft.helpful_mix` helpful examples per revision).
"""
from __future__ import annotations

import random

from .. import records
from ..errors import CharterError
from ..evals.refusal import is_refusal
from ..train import fit
from .common import GENERATE, REVISE, SFT_DATA, SFT_MODEL, messages, rewrite

INPUTS = [REVISE, GENERATE]
OUTPUTS = [SFT_MODEL, SFT_DATA]


def dataset_rows(run) -> list[dict]:
    revs = records.read(run.path(REVISE))
    # Benign examples teach the model to keep answering; drop the base model's own refusals.
    helpful = [r for r in records.read(run.path(GENERATE))
               if r["label"] == "benign" and not is_refusal(r["response"])]
    rng = random.Random(run.cfg.seed)
    rng.shuffle(helpful)
    helpful = helpful[: int(round(len(revs) * run.cfg.sft.helpful_mix))] if revs else helpful
    rows = [{"id": r["id"], "prompt": r["prompt"], "completion": r["revision"], "source": "revision"} for r in revs]
    rows += [{"id": r["id"], "prompt": r["prompt"], "completion": r["response"], "source": "helpful"} for r in helpful]
    rows = [r for r in rows if r["completion"].strip()]
    rng.shuffle(rows)
    return rows


def run(run):
    from trl import SFTConfig, SFTTrainer

    rows = dataset_rows(run)
    if not rows:
        raise CharterError("sft: no training examples (the revise and generate stages produced nothing)")
    rewrite(run, SFT_DATA, rows, "sft")
    ds = [{"prompt": messages(run, r["prompt"]), "completion": [{"role": "assistant", "content": r["completion"]}]}
          for r in rows]
    # Length grouping instead of packing: batches of similar length waste little compute on padding, and
    # unlike packing it needs no flash-attention kernel to keep examples from attending to each other.
    stats = fit(run, SFTTrainer, SFTConfig, run.cfg.sft, ds, "base", "sft", packing=False,
                completion_only_loss=True, train_sampling_strategy="group_by_length")
    return {"examples": len(rows), "revisions": sum(r["source"] == "revision" for r in rows), **stats}
