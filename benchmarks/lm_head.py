"""TRL's fused LM head projecting every position against only the positions with a label
(`charter.train.labelled_positions_only`), measured in one run on this machine.

    python benchmarks/lm_head.py [--steps 6] [--precision auto]

SFT and DPO on the embedded model (batch 4, at most 256 tokens, the training setup of benchmarks/run.py),
with every position projected (TRL's path off Triton devices) and with the labelled ones only, in the order
labelled, every, every, labelled, so that warm-up and drift weigh on both paths alike. Prints the mean
seconds per step of each path, the ratio, and the losses (they must agree). Writes benchmarks/lm_head.json.
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

    from run import alternating, bench_training, s_per_step
    from trl import DPOTrainer

    from charter.models import resolve_model
    from charter.train import labelled_positions_only

    model_dir = resolve_model("default")
    if not labelled_positions_only():
        sys.exit("this TRL has no `trl.trainer.utils._use_triton` hook: nothing to compare")

    def train(on):  # TRL's DPO trainer: the dpo stage's own goes around TRL's LM head
        return lambda: bench_training(model_dir, a.steps, a.precision, labelled_only=on, dpo_trainer=DPOTrainer)

    _, res = alternating("labelled_only", train(True), "every_position", train(False))
    out = {"steps": a.steps, "precision": a.precision, "order": "labelled, every, every, labelled"}
    for stage in ("sft", "dpo"):
        secs = {k: [s_per_step(r[stage]) for r in v] for k, v in res.items()}
        full, compact = (round(sum(secs[k]) / len(secs[k]), 2) for k in ("every_position", "labelled_only"))
        out[stage] = {"every_position_s_per_step": full, "labelled_only_s_per_step": compact,
                      "speedup": round(full / compact, 2), "runs_s_per_step": secs,
                      "losses": {k: [[r[stage]["first_loss"], r[stage]["last_loss"]] for r in v]
                                 for k, v in res.items()}}
        print(f"{stage}: {out[stage]['every_position_s_per_step']} s/step every position, "
              f"{out[stage]['labelled_only_s_per_step']} labelled only ({out[stage]['speedup']}x); runs "
              f"{out[stage]['runs_s_per_step']}; losses {out[stage]['losses']}", flush=True)
    Path(a.out).write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
