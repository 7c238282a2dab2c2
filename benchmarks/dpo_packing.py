"""DPO with each pair in one row (`charter.packed_dpo`) against TRL's layout of two padded rows per pair,
measured in one run on this machine.

    python benchmarks/dpo_packing.py [--run runs/demo] [--steps 24] [--precision auto]

Both trainers get the same pairs, model, seed and arguments as the dpo stage (`train.trl_args` from the
default config's `dpo` section) and run in the order packed, TRL, TRL, packed, so that warm-up and drift
weigh on both alike. The pairs are a finished run's `data/dpo.jsonl` and its SFT model (`--run`), or, where
there is none, the built-in helpful pool with two fixed answers and the embedded model. Each run's seconds
cover loading the model, building the trainer (tokenising, the reference log-probs) and training, and are
averaged over its two runs, as its training seconds are; tokens are those the trainer fed the model, padding
included. The losses of the first steps are printed beside: both compute the same loss,
so they should agree to rounding. Writes benchmarks/dpo_packing.json.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))


def pairs_and_model(run_dir: Path, n: int):
    from charter import records
    from charter.backends import user
    from charter.models import resolve_model
    from charter.prompts import builtin_file, read_prompt_file

    data, sft = run_dir / "data" / "dpo.jsonl", run_dir / "models" / "sft"
    if data.exists() and sft.exists():
        rows, model = records.read(data), str(sft)
    else:
        print(f"no finished run at {run_dir}: the helpful pool with two fixed answers, on the embedded model")
        answer = "Here is a clear, step-by-step answer that covers the main points and gives one example."
        rows = [{"prompt": r["prompt"], "chosen": answer, "rejected": "I can't help with that."}
                for r in read_prompt_file(builtin_file("helpful"))]
        model = resolve_model("default")
    rows = (rows * (n // len(rows) + 1))[:n]
    return [{"prompt": user(r["prompt"]), "chosen": [{"role": "assistant", "content": r["chosen"]}],
             "rejected": [{"role": "assistant", "content": r["rejected"]}]} for r in rows], model


def train_once(trainer_cls, rows, model_dir, cfg, precision):
    from datasets import Dataset
    from trl import DPOConfig

    from charter.train import labelled_positions_only, load_trainable, train_stats, trl_args

    labelled_positions_only()  # as the stage runs TRL's trainer
    model, tok = load_trainable(model_dir, "cpu")
    n_params = sum(p.numel() for p in model.parameters())
    t0 = time.perf_counter()
    args = trl_args(DPOConfig, cfg, "/tmp/charter-bench-dpo-packing", 0, "cpu", precision=precision, beta=cfg.beta,
                    precompute_ref_log_probs=True, disable_tqdm=True)
    tr = trainer_cls(model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tok)
    setup = time.perf_counter() - t0
    t0 = time.perf_counter()
    tr.train()
    stats = train_stats(tr, time.perf_counter() - t0, n_params)
    losses = [round(h["loss"], 4) for h in tr.state.log_history if "loss" in h][:4]
    return {"setup_s": round(setup, 2), **stats, "first_losses": losses}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--run", default=str(ROOT / "runs" / "demo"))
    ap.add_argument("--steps", type=int, default=24)
    ap.add_argument("--precision", default="auto")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "dpo_packing.json"))
    a = ap.parse_args()

    from trl import DPOTrainer

    from charter.config import load_config
    from charter.packed_dpo import PackedDPOTrainer
    from run import alternating

    cfg = load_config(ROOT / "configs" / "default.yaml", [f"dpo.max_steps={a.steps}"]).dpo
    rows, model_dir = pairs_and_model(Path(a.run), a.steps * cfg.batch_size)
    secs, runs = alternating("packed", lambda: train_once(PackedDPOTrainer, rows, model_dir, cfg, a.precision),
                             "trl", lambda: train_once(DPOTrainer, rows, model_dir, cfg, a.precision))
    out = {"command": "python benchmarks/dpo_packing.py " + " ".join(sys.argv[1:]), "model": str(model_dir),
           "pairs": len(rows), "steps": a.steps, "batch_size": cfg.batch_size, "precision": a.precision}
    for name, s in secs.items():
        out[name] = {"seconds": round(sum(s) / 2, 2), "runs_s": [round(x, 2) for x in s],
                     "train_seconds": round(sum(r["train_seconds"] for r in runs[name]) / 2, 2),
                     "train_runs_s": [r["train_seconds"] for r in runs[name]],
                     "runs": runs[name]}
    out["speedup"] = round(out["trl"]["seconds"] / out["packed"]["seconds"], 2)
    out["train_speedup"] = round(out["trl"]["train_seconds"] / out["packed"]["train_seconds"], 2)
    Path(a.out).write_text(json.dumps(out, indent=2) + "\n")
    for name in ("trl", "packed"):
        r, last = out[name], out[name]["runs"][-1]
        print(f"{name:<7} {r['seconds']:>8} s a run (train {r['train_seconds']} s; runs {r['runs_s']}), "
              f"{last['tokens']} tokens, first losses {last['first_losses']}")
    print(f"speedup {out['speedup']}x (training alone {out['train_speedup']}x); wrote {a.out}")


if __name__ == "__main__":
    main()
