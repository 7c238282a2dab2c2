"""Sampled generation with charter's nucleus sampler (`backends.hf.NucleusSampler`) against transformers' own
top-p sampling, measured in one run on this machine.

    python benchmarks/sampling.py [--prompts 128] [--max-new 64] [--precision auto]

The workload is what the generate and pairs stages do: the default pools' training prompts (harmful, ordinary
and lookalike, a seeded sample), batches of 64, temperature 0.7, top-p 0.95. Both samplers run in the order
charter, transformers, transformers, charter, so that warm-up and drift weigh on both alike. Besides the
seconds it prints what should not move, since both draw from the same distribution (the mean answer length
and the share of answers the lexical judge reads as refusals), and how many answers came out the same.
Writes benchmarks/sampling.json.
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


def transformers_sampling(temperature, top_p):
    return dict(do_sample=True, temperature=temperature, top_p=top_p, top_k=None)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--prompts", type=int, default=128)
    ap.add_argument("--max-new", type=int, default=64)
    ap.add_argument("--precision", default="auto")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "sampling.json"))
    a = ap.parse_args()

    import torch
    from run import alternating

    from charter import prompts as pools
    from charter.backends import hf
    from charter.backends import GenParams, user
    from charter.evals.refusal import is_refusal

    rows = [r for kind in ("redteam", "helpful", "lookalike") for r in pools.read_prompt_file(pools.builtin_file(kind))
            if r["split"] == "train"]
    rows = random.Random(0).sample(rows, min(a.prompts, len(rows)))
    msgs = [user(r["prompt"]) for r in rows]
    backend = hf.HFBackend("default", precision=a.precision, progress=False)
    params = GenParams(a.max_new, 0.7, 0.95, seed=0, batch_size=64)
    backend.generate(msgs[:8], params)  # warm the kernels
    ours = hf.sampling_kwargs

    def with_transformers_sampler():
        hf.sampling_kwargs = transformers_sampling
        try:
            return backend.generate(msgs, params)
        finally:
            hf.sampling_kwargs = ours

    secs, runs = alternating("charter", lambda: backend.generate(msgs, params),
                             "transformers", with_transformers_sampler)
    answers = {name: texts[-1] for name, texts in runs.items()}
    out = {"prompts": len(msgs), "max_new_tokens": a.max_new, "dtype": str(backend.dtype),
           "threads": torch.get_num_threads(), "order": "charter, transformers, transformers, charter"}
    for name, texts in answers.items():
        tokens = sum(len(backend.tok(t, add_special_tokens=False).input_ids) for t in texts)
        s = sum(secs[name]) / 2
        out[name] = {"seconds": round(s, 2), "runs_s": [round(x, 2) for x in secs[name]], "new_tokens": tokens,
                     "tokens_per_s": round(tokens / s, 1), "mean_answer_tokens": round(tokens / len(texts), 1),
                     "refused": round(sum(map(is_refusal, texts)) / len(texts), 3)}
        print(f"{name}: {s:.2f} s ({out[name]['tokens_per_s']} tok/s), {out[name]['mean_answer_tokens']} tokens "
              f"per answer, {out[name]['refused']:.1%} refused", flush=True)
    out["identical_answers"] = sum(x == y for x, y in zip(answers["charter"], answers["transformers"]))
    print(f"{out['identical_answers']} of {len(msgs)} answers identical under the two samplers")
    out["speedup"] = round(out["transformers"]["seconds"] / out["charter"]["seconds"], 2)
    print(f"speedup {out['speedup']}x")
    Path(a.out).write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
