"""Decoding that drops each row from its batch once it has ended (`backends.hf.decode`) against transformers'
`generate`, which computes every row until the batch's longest answer is done, measured in one run.

    python benchmarks/finished_rows.py [--models default runs/demo/models/sft] [--dev N] [--gsm8k 20] [--humaneval 20]

`--models` are what the evaluate stage reads: `default`, and a run's trained folders, whose answers are shorter
than the base model's (a folder that is not there is skipped, and said). Three of evaluate's workloads, greedy, in batches of 64, each
in the order drop, generate, generate, drop, so that warm-up and drift weigh on both alike:
- the dev split's prompts, 64 new tokens;
- GSM8K, four worked problems then the question, 256 new tokens;
- HumanEval, 256 new tokens.
GSM8K and HumanEval are skipped, and said, without the shared data. Both paths share everything but the decode
loop (the shared opening, the padding): the baseline is `hf.generate_whole`, the call `HFBackend.generate` made
before, which it still makes for a model that `decode` cannot run alone.
Besides the seconds it prints how many answers came out the same (in bfloat16 a different batch shape rounds
differently, so greedy answers part where two tokens nearly tie) and GSM8K's exact-match count.
Writes benchmarks/finished_rows.json.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))


def timed(backend, msgs, params):
    from run import alternating

    def generate_path():  # `generate_whole`, the path of a model `decode` cannot run alone
        saved, backend.decodes_alone = backend.decodes_alone, False
        try:
            return backend.generate(msgs, params)
        finally:
            backend.decodes_alone = saved

    secs, runs = alternating("drop", lambda: backend.generate(msgs, params), "generate", generate_path)
    answers = {name: texts[-1] for name, texts in runs.items()}
    out = {name: {"seconds": round(sum(s) / 2, 2), "runs_s": [round(x, 2) for x in s]} for name, s in secs.items()}
    out["identical_answers"] = sum(x == y for x, y in zip(answers["drop"], answers["generate"]))
    out["speedup"] = round(out["generate"]["seconds"] / out["drop"]["seconds"], 2)
    tokens = [len(backend.tok(t, add_special_tokens=False).input_ids) for t in answers["drop"]]
    out["answer_tokens"] = {"mean": round(sum(tokens) / len(tokens), 1), "max": max(tokens)}
    return out, answers


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", nargs="+", default=["default", "runs/demo/models/sft"])
    ap.add_argument("--dev", type=int, default=None, help="dev prompts per label; all of them by default")
    ap.add_argument("--gsm8k", type=int, default=20)
    ap.add_argument("--humaneval", type=int, default=20)
    ap.add_argument("--precision", default="auto")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "finished_rows.json"))
    a = ap.parse_args()

    import torch

    from charter.backends import GenParams, hf, user
    from charter.errors import CharterError
    from charter.evals import capability
    from charter.prompts import dev_prompts

    out = {"threads": torch.get_num_threads(), "order": "drop, generate, generate, drop", "models": {}}
    for model in a.models:
        if model != "default" and not Path(model).is_dir():
            print(f"{model}: no such folder, skipped")
            continue
        backend = hf.HFBackend(model, precision=a.precision, progress=False)
        if not backend.decodes_alone:  # both sides would be `generate`: nothing to compare
            print(f"{model}: decodes through transformers' generate (hf.decodes_alone), skipped")
            continue
        res = out["models"][model] = {"dtype": str(backend.dtype)}
        dev = [{"messages": user(r["prompt"])} for r in dev_prompts(a.dev)]
        backend.generate([it["messages"] for it in dev[:8]], GenParams(16, 0.0, batch_size=64))  # warm the kernels
        workloads = [("dev", lambda: dev, 64), ("gsm8k", lambda: capability.gsm8k_items(a.gsm8k), 256),
                     ("humaneval", lambda: capability.humaneval_items(a.humaneval), 256)]
        for name, load, max_new in workloads:
            try:
                items = load()
            except (CharterError, OSError, ValueError) as e:
                res[name] = {"skipped": str(e).splitlines()[0]}
                print(f"{model}, {name} skipped: {res[name]['skipped']}")
                continue
            msgs = [it["messages"] for it in items]
            r, answers = timed(backend, msgs, GenParams(max_new, 0.0, batch_size=64))
            r |= {"prompts": len(msgs), "max_new_tokens": max_new}
            if name == "gsm8k":
                r["solved"] = {k: sum(capability.final_number(t) == it["target"] for t, it in zip(v, items))
                               for k, v in answers.items()}
            res[name] = r
            print(f"{model}, {name}, {len(msgs)} prompts, answers of {r['answer_tokens']['mean']} tokens on average "
                  f"(max {r['answer_tokens']['max']}): drop {r['drop']['seconds']} s, generate "
                  f"{r['generate']['seconds']} s, {r['speedup']}x; {r['identical_answers']} answers identical",
                  flush=True)
        del backend
    Path(a.out).write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
