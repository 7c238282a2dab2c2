"""TRL's fused LM head projecting every position against only the positions with a label
(`charter.train.labelled_positions_only`), measured in one run on this machine.

    python benchmarks/lm_head.py [--steps 6] [--precision auto]

SFT and DPO on the embedded model (batch 4, at most 256 tokens, the training setup of benchmarks/run.py),
first with every position projected (TRL's path off Triton devices), then with the labelled ones only.
Prints seconds per step, the ratio, and both runs' losses (they must agree). Writes benchmarks/lm_head.json.
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


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--precision", default="auto", help="as the run config's `precision`")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "lm_head.json"))
    a = ap.parse_args()

    from run import bench_training, s_per_step

    from charter.models import resolve_model
    from charter.train import labelled_positions_only

    model_dir = resolve_model("default")
    res = {}
    for name, on in (("every_position", False), ("labelled_only", True)):
        if not labelled_positions_only(on):
            sys.exit("this TRL has no `trl.trainer.utils._use_triton` hook: nothing to compare")
        res[name] = bench_training(model_dir, a.steps, a.precision)
    out = {"steps": a.steps, "precision": a.precision}
    for stage in ("sft", "dpo"):
        full, compact = res["every_position"][stage], res["labelled_only"][stage]
        out[stage] = {"every_position_s_per_step": s_per_step(full), "labelled_only_s_per_step": s_per_step(compact),
                      "speedup": round(s_per_step(full) / s_per_step(compact), 2),
                      "losses": [[full["first_loss"], full["last_loss"]], [compact["first_loss"], compact["last_loss"]]]}
        print(f"{stage}: {out[stage]['every_position_s_per_step']} s/step every position, "
              f"{out[stage]['labelled_only_s_per_step']} labelled only ({out[stage]['speedup']}x); losses "
              f"{out[stage]['losses'][0]} vs {out[stage]['losses'][1]}", flush=True)
    Path(a.out).write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
