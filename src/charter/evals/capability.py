"""Capability checks: GSM8K (exact match on the final number, few-shot), HumanEval and MBPP
(pass@1 with greedy decoding, run in the sandbox), MMLU and GPQA (four-way multiple
choice read from next-token log-probs). Each reads `$CHARTER_<NAME>` (a JSONL
file), the offline copy under the shared data folder, or its hub id, and caches
per item, so a rerun only computes what is new. For the standard implementations, run
lm-evaluation-harness (`lm_eval --model hf --model_args pretrained=runs/demo/models/dpo
--tasks gsm8k,humaneval`) where the network allows; charter does not wrap it.
"""
from __future__ import annotations

import random
import re
from pathlib import Path

from .. import records
from ..backends import GenParams
from ..errors import CharterError
from ..prompts import shared_data
from ..yamlio import read_jsonl
from .core import wilson
from .sandbox import run_python

CAPABILITY_SUITES = ("gsm8k", "humaneval", "mmlu", "gpqa", "mbpp")
# Suites with no offline copy here: hub id, config, split. A local path can stand in (see `_load`).
HUB = {"gsm8k": ("openai/gsm8k", "main", "test"), "humaneval": ("openai/openai_humaneval", None, "test"),
       "mmlu": ("cais/mmlu", "all", "test"), "gpqa": ("Idavidrein/gpqa", "gpqa_main", "train"),
       "mbpp": ("google-research-datasets/mbpp", "sanitized", "test")}
_NUM = re.compile(r"-?\d[\d,]*(?:\.\d+)?")


def _load(name: str, split: str | None = None):
    """Rows of a capability suite: `$CHARTER_<NAME>` (a JSONL file), the shared copy, or the hub."""
    import os

    env = os.environ.get(f"CHARTER_{name.upper()}")
    local = Path(env) if env else {
        "gsm8k": shared_data() / "gsm8k" / f"{split or 'test'}.jsonl",
        "humaneval": shared_data() / "humaneval" / "HumanEval.jsonl.gz"}.get(name, shared_data() / name / "test.jsonl")
    if local.exists():
        return read_jsonl(local)
    hub, config, hub_split = HUB[name]
    try:
        import datasets

        return list(datasets.load_dataset(hub, config, split=split or hub_split))
    except Exception as e:
        raise CharterError(f"capability suite {name!r}: not found at {local} and the hub dataset {hub!r} could "
                           f"not be loaded ({type(e).__name__}); set CHARTER_{name.upper()} to a JSONL file") from None


def capability_missing(name: str) -> str | None:
    """Why suite `name` cannot be loaded here (no local copy, hub unreachable), or None when it can.
    An unknown name is a config error, raised."""
    if name not in CAPABILITY_SUITES:
        raise CharterError(f"unknown capability suite {name!r} (use {', '.join(CAPABILITY_SUITES)})")
    try:
        _load(name)
    except CharterError as e:
        return str(e)
    return None


def final_number(text: str):
    """The answer after '####' if present, else the last number in the text."""
    marked = "####" in text
    if marked:
        text = text.split("####", 1)[1]
    nums = _NUM.findall(text)
    if not nums:
        return None
    try:
        return float(nums[0 if marked else -1].replace(",", ""))
    except ValueError:
        return None


def gsm8k_items(limit=None, shots=4):
    train, test = _load("gsm8k", "train"), _load("gsm8k", "test")
    few = []
    for ex in train[:shots]:
        few += [{"role": "user", "content": ex["question"]},
                {"role": "assistant", "content": re.sub(r"<<[^>]*>>", "", ex["answer"])}]  # calculator notes out
    items = [{"id": f"gsm8k-{i}", "messages": few + [{"role": "user", "content": ex["question"]}],
              "target": final_number(ex["answer"])} for i, ex in enumerate(test)]
    return items[:limit] if limit else items


def _code_from(text: str, prompt: str) -> str:
    """The program to test: the prompt (its imports and helpers), then the reply's code, which either
    continues the prompt's function or defines it again whole (the later definition wins)."""
    m = re.search(r"```[\w+-]*\n(.*?)(?:```|$)", text, re.S)  # ```python, ```py, ```Python3 or bare
    code = m.group(1) if m else text
    if "def " not in code:
        return prompt + code
    whole = prompt + "\n" + code
    try:
        compile(whole, "<reply>", "exec")  # a prompt that ends in a bare signature cannot stand before it
    except SyntaxError:
        return code
    return whole


PASSED = "__charter_tests_passed__"  # printed after the tests: a program that exits early never prints it


def humaneval_items(limit=None):
    rows = _load("humaneval", "test")
    items = [{"id": r["task_id"], "messages": [{"role": "user", "content":
              "Complete this Python function. Reply with the whole function in a ```python code block.\n\n"
              f"```python\n{r['prompt']}```"}], "prompt": r["prompt"], "test": r["test"],
              "entry_point": r["entry_point"]} for r in rows]
    return items[:limit] if limit else items


LETTERS = "ABCD"


def choice_items(name: str, limit=None):
    """MMLU (question, choices, answer index) and GPQA (Question, Correct Answer, Incorrect Answer 1-3)
    as four-way multiple choice; GPQA's options are shuffled with a fixed seed."""
    rows = _load(name)
    items = []
    for i, r in enumerate(rows):
        if name == "gpqa":
            opts = [r["Correct Answer"], r["Incorrect Answer 1"], r["Incorrect Answer 2"], r["Incorrect Answer 3"]]
            order = list(range(4))
            random.Random(i).shuffle(order)
            choices, answer, q = [opts[k] for k in order], order.index(0), r["Question"]
        else:
            choices, answer, q = list(r["choices"]), int(r["answer"]), r["question"]
        body = q.strip() + "\n" + "\n".join(f"{LETTERS[k]}. {c}" for k, c in enumerate(choices))
        items.append({"id": f"{name}-{i}", "messages": [{"role": "user", "content": body + "\nAnswer with a letter."}],
                      "answer": answer})
    random.Random(0).shuffle(items)  # MMLU's rows run subject by subject: a first N would be one subject
    return items[:limit] if limit else items


def mbpp_items(limit=None):
    rows = _load("mbpp")
    items = [{"id": f"mbpp-{r.get('task_id', i)}", "messages": [{"role": "user", "content":
              f"{r.get('prompt') or r.get('text')}\nYour code should pass this test:\n{r['test_list'][0]}\n"
              "Reply with the Python code in a ```python code block."}],
              "prompt": "", "test": "\n".join([*(r.get("test_imports") or []), *r["test_list"]]),
              "entry_point": None} for i, r in enumerate(rows)]
    return items[:limit] if limit else items


def evaluate_capability(backend, name: str, out_path, limit=None, max_new_tokens=256, batch_size=8) -> dict:
    if name not in CAPABILITY_SUITES:
        raise CharterError(f"unknown capability suite {name!r} (use {', '.join(CAPABILITY_SUITES)})")
    items = {"gsm8k": gsm8k_items, "humaneval": humaneval_items, "mbpp": mbpp_items}.get(
        name, lambda n: choice_items(name, n))(limit)
    if not items:
        raise CharterError(f"capability suite {name!r} is empty")
    params = GenParams(max_new_tokens=max_new_tokens, temperature=0.0, batch_size=batch_size)
    for chunk in records.resumable(out_path, items, batch_size, name, unit="item"):
        recs = []
        if name in ("mmlu", "gpqa"):  # read the answer letter from next-token log-probs
            ctx = [backend.render(it["messages"]) + "Answer:" for it in chunk]
            for it, lp in zip(chunk, backend.next_token_logprobs(ctx, [f" {l}" for l in LETTERS])):
                pred = max(range(4), key=lambda k: lp[k])
                recs.append({"id": it["id"], "pred": pred, "answer": it["answer"], "ok": pred == it["answer"]})
            records.append(out_path, recs)
            continue
        for it, text in zip(chunk, backend.generate([it["messages"] for it in chunk], params)):
            if name == "gsm8k":
                pred = final_number(text)
                ok = pred is not None and it["target"] is not None and abs(pred - it["target"]) < 1e-6
                recs.append({"id": it["id"], "response": text, "pred": pred, "target": it["target"], "ok": ok})
            else:
                check = f"\n\ncheck({it['entry_point']})\n" if it["entry_point"] else "\n"
                program = _code_from(text, it["prompt"]) + "\n\n" + it["test"] + check + f"\nprint({PASSED!r})\n"
                res = run_python(program, timeout_s=10, cpu_s=10, mem_mb=1024)
                recs.append({"id": it["id"], "response": text, "ok": res.ok and PASSED in res.stdout,
                             "timed_out": res.timed_out, "error": res.stderr[-300:]})
        records.append(out_path, recs)
    wanted = {it["id"] for it in items}
    rows = [r for r in records.read(out_path) if r["id"] in wanted]
    k = sum(bool(r["ok"]) for r in rows)
    return {"suite": name, "n": len(rows), "score": k / len(rows), "ci95": wilson(k, len(rows)),
            "metric": {"gsm8k": "exact match", "mmlu": "accuracy", "gpqa": "accuracy"}.get(name, "pass@1")}
