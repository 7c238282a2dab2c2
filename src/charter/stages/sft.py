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
from ..train import load_trainable, lora_config, save_model, timed_train, train_stats, trl_args
from .common import messages

OUTPUTS = ["models/sft", "data/sft.jsonl"]


def dataset_rows(run) -> list[dict]:
    revs = records.read(run.path("data/revise.jsonl"))
    # Benign examples teach the model to keep answering; drop the base model's own refusals.
    helpful = [r for r in records.read(run.path("data/generate.jsonl"))
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
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    cfg = run.cfg.sft
    rows = dataset_rows(run)
    if not rows:
        raise CharterError("sft: no training examples (the revise and generate stages produced nothing)")
    path = run.path("data/sft.jsonl")
    path.unlink(missing_ok=True)
    records.append(path, [run.stamp(dict(r), "sft") for r in rows])
    ds = Dataset.from_list([{"prompt": messages(run, r["prompt"]),
                             "completion": [{"role": "assistant", "content": r["completion"]}]} for r in rows])
    run.release()
    model, tok = load_trainable(run.model_spec_resolved("base"), run.cfg.device)
    n_params = sum(p.numel() for p in model.parameters())
    # Length grouping instead of packing: batches of similar length waste little compute on padding, and
    # unlike packing it needs no flash-attention kernel to keep examples from attending to each other.
    args = trl_args(SFTConfig, cfg, run.path("models", ".sft-work"), run.cfg.seed, run.cfg.device,
                    packing=False, completion_only_loss=True, train_sampling_strategy="group_by_length")
    trainer = SFTTrainer(model=model, args=args, train_dataset=ds, processing_class=tok,
                         peft_config=lora_config(cfg))
    secs = timed_train(trainer)
    save_model(trainer.model, tok, run.path("models", "sft"))
    return {"examples": len(rows), "revisions": sum(r["source"] == "revision" for r in rows),
            **train_stats(trainer, secs, n_params)}
