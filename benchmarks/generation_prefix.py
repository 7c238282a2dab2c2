"""Batched generation that runs the prompts' common opening once (`HFBackend._encode`) against running
every prompt whole, measured in one run on this machine.

    python benchmarks/generation_prefix.py [--prompts 128] [--gsm8k 20] [--precision auto]

Two workloads, each in the order shared, whole, whole, shared, so that warm-up and drift weigh on both alike:
- the generate stage's: the default pools' training prompts (a seeded sample), batches of 64, temperature 0.7,
  top-p 0.95, 64 new tokens. Every prompt opens with SmolLM2's default system turn and the user header;
- evaluate's GSM8K: four worked problems, then the question, greedy, 256 new tokens, one batch. The four
  problems are most of every prompt. Skipped, and said, without the shared data or the hub.
Besides the seconds it prints how many answers came out the same (in bfloat16 a different batch shape rounds
differently, so greedy answers part where two tokens nearly tie) and what should not move: the refusal share
of the sampled answers and GSM8K's exact-match count. Writes benchmarks/generation_prefix.json.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))


def timed(backend, msgs, params):
    """Seconds and answers of each path, run shared, whole, whole, shared."""
    import functools

    from run import alternating

    def whole():
        backend._encode = functools.partial(type(backend)._encode, backend, share=False)
        try:
            return backend.generate(msgs, params)
        finally:
            del backend._encode

    secs, runs = alternating("shared", lambda: backend.generate(msgs, params), "whole", whole)
    answers = {name: texts[-1] for name, texts in runs.items()}
    out = {name: {"seconds": round(sum(s) / 2, 2), "runs_s": [round(x, 2) for x in s]} for name, s in secs.items()}
    out["identical_answers"] = sum(x == y for x, y in zip(answers["shared"], answers["whole"]))
    out["speedup"] = round(out["whole"]["seconds"] / out["shared"]["seconds"], 2)
    return out, answers


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--prompts", type=int, default=128)
    ap.add_argument("--gsm8k", type=int, default=20)
    ap.add_argument("--precision", default="auto")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "generation_prefix.json"))
    a = ap.parse_args()

    import torch

    from charter import prompts as pools
    from charter.backends import GenParams, hf, user
    from charter.errors import CharterError
    from charter.evals import capability
    from charter.evals.refusal import is_refusal

    backend = hf.HFBackend("default", precision=a.precision, progress=False)
    out = {"dtype": str(backend.dtype), "threads": torch.get_num_threads(), "order": "shared, whole, whole, shared"}

    rows = [r for kind in ("redteam", "helpful", "lookalike") for r in pools.read_prompt_file(pools.builtin_file(kind))
            if r["split"] == "train"]
    msgs = [user(r["prompt"]) for r in random.Random(0).sample(rows, min(a.prompts, len(rows)))]
    params = GenParams(64, 0.7, 0.95, seed=0, batch_size=64)
    backend.generate(msgs[:8], params)  # warm the kernels
    res, answers = timed(backend, msgs, params)
    res |= {"prompts": len(msgs), "max_new_tokens": 64,
            "refused": {k: round(sum(map(is_refusal, v)) / len(v), 3) for k, v in answers.items()}}
    out["generate_stage"] = res
    print(f"generate stage, {len(msgs)} prompts: shared {res['shared']['seconds']} s, whole {res['whole']['seconds']} s,"
          f" {res['speedup']}x; {res['identical_answers']} answers identical; refused {res['refused']}", flush=True)

    try:
        items = capability.gsm8k_items(a.gsm8k)
    except (CharterError, OSError, ValueError) as e:
        out["gsm8k"] = {"skipped": str(e).splitlines()[0]}
        print(f"gsm8k skipped: {out['gsm8k']['skipped']}")
    else:
        gmsgs = [it["messages"] for it in items]
        lengths = [len(backend.tok(backend.render(m), add_special_tokens=False).input_ids) for m in gmsgs]
        res, answers = timed(backend, gmsgs, GenParams(256, 0.0, batch_size=64))
        solved = {k: sum(capability.final_number(t) == it["target"] for t, it in zip(v, items))
                  for k, v in answers.items()}
        res |= {"problems": len(items), "max_new_tokens": 256, "prompt_tokens_mean": round(sum(lengths) / len(lengths)),
                "solved": solved}
        out["gsm8k"] = res
        print(f"gsm8k, {len(items)} problems (prompts of {res['prompt_tokens_mean']} tokens on average): shared "
              f"{res['shared']['seconds']} s, whole {res['whole']['seconds']} s, {res['speedup']}x; "
              f"{res['identical_answers']} answers identical; solved {solved}", flush=True)
    Path(a.out).write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
