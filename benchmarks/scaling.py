"""How each stage's time grows with the number of records and with model size, in one run on this machine.

    python benchmarks/scaling.py [--sizes 12 24 48]

Runs the whole pipeline on random-init Llamas of two sizes (built here, nothing downloaded) at several
prompt counts (pairs grow with prompts), and prints seconds per stage plus a growth exponent per stage:
log(t_max / t_min) / log(n_max / n_min), where 1.0 is linear. Fixed costs (loading a model, the supervisor's
calibration) make small stages grow sub-linearly. Writes benchmarks/scaling.json.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT))

MODELS = {"2x64": {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2},
          "4x256": {"hidden_size": 256, "intermediate_size": 768, "num_hidden_layers": 4}}


def build(path: Path, shape: dict) -> Path:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from tests.conftest import build_tiny_llama

    build_tiny_llama(path)
    cfg = LlamaConfig.from_pretrained(path)
    for k, v in shape.items():
        setattr(cfg, k, v)
    torch.manual_seed(0)
    LlamaForCausalLM(cfg).save_pretrained(path, safe_serialization=True)
    return path


def run_once(model: Path, n: int, out: Path) -> dict:
    from charter.config import load_config
    from charter.run import Run

    third = max(1, n // 3)
    cfg = load_config(None, [
        f"model={model}", "device=cpu", f"pools.redteam.limit={third}", f"pools.helpful.limit={third}",
        f"pools.lookalike.limit={third}", "generate.max_new_tokens=16", "revise.rounds=1",
        "revise.critique_tokens=8", "revise.revision_tokens=16", "sft.epochs=1", "sft.batch_size=4",
        "sft.max_length=128", f"pairs.max_pairs={n}", "pairs.max_new_tokens=16", "supervisor.kind=llm",
        f"supervisor.model={model}", "supervisor.threshold=0", "supervisor.hh_limit=10", "dpo.epochs=1",
        "dpo.batch_size=4", "dpo.margin=0", "dpo.max_length=128", f"evaluate.limit={third}",
        "evaluate.max_new_tokens=16", "evaluate.helpfulness=false"])
    m = Run(cfg, out).execute()
    return {s: v["seconds"] for s, v in m["stages"].items()}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", type=int, nargs="+", default=[12, 24, 48])
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "scaling.json"))
    a = ap.parse_args()
    res = {"sizes": a.sizes, "models": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for name, shape in MODELS.items():
            model = build(Path(tmp) / name, shape)
            res["models"][name] = {n: run_once(model, n, Path(tmp) / f"{name}-{n}") for n in a.sizes}
    lo, hi = min(a.sizes), max(a.sizes)
    print(f"{'model':8} {'stage':10} " + " ".join(f"{n:>7}" for n in a.sizes) + "  growth")
    res["growth"] = {}
    for name, by_n in res["models"].items():
        res["growth"][name] = {}
        for stage in by_n[lo]:
            t = [by_n[n][stage] for n in a.sizes]
            g = math.log(max(t[-1], 0.05) / max(t[0], 0.05)) / math.log(hi / lo)
            res["growth"][name][stage] = round(g, 2)
            print(f"{name:8} {stage:10} " + " ".join(f"{x:7.1f}" for x in t) + f"  {g:5.2f}")
    Path(a.out).write_text(json.dumps(res, indent=2) + "\n")
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
