"""Ray speed-up: the generate stage's work on 1 worker against N workers, in one run on this machine.

    python benchmarks/ray_scaling.py [--workers 2] [--prompts 48] [--model default]

Each worker holds its own copy of the model and gets `cpus_per_worker` CPUs (torch threads). The 1-worker
figure uses the same executor, so the ratio isolates the sharding. Writes benchmarks/ray_scaling.json.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))


def timed_generate(model, workers, prompts, max_new, out_dir):
    from charter.backends import GenParams
    from charter.config import load_config
    from charter.executor import map_chunks
    from charter.run import Run
    from charter.stages.common import generate_chunk, train_prompts

    third = max(1, prompts // 3)
    cfg = load_config(None, [f"model={model}", "device=cpu", f"pools.helpful.limit={third}",
                             f"pools.redteam.limit={third}", f"pools.lookalike.limit={third}", "executor.kind=ray",
                             f"executor.workers={workers}", "executor.cpus_per_worker=1"])
    run = Run(cfg, out_dir)
    rows = train_prompts(run)
    params = GenParams(max_new, 0.0, 0.95, 0, 8)
    t0 = time.time()
    map_chunks(run, run.path("data", "generate.jsonl"), rows, 8, f"{workers} worker(s)", generate_chunk, "base",
               params, "response", "generate")
    return time.time() - t0, len(rows)


def main():
    import tempfile

    import ray

    ap = argparse.ArgumentParser()
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--prompts", type=int, default=48)
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--model", default="default")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "ray_scaling.json"))
    a = ap.parse_args()
    from charter.models import resolve_model

    resolve_model(a.model)  # convert the embedded model once, outside the timings
    ray.init(num_cpus=a.workers, include_dashboard=False, log_to_driver=False)
    res = {"machine": {"cpus": os.cpu_count(), "platform": platform.platform()}, "model": a.model,
           "prompts": a.prompts, "max_new_tokens": a.max_new_tokens}
    with tempfile.TemporaryDirectory() as tmp:
        for n in sorted({1, a.workers}):
            secs, rows = timed_generate(a.model, n, a.prompts, a.max_new_tokens, Path(tmp) / f"w{n}")
            res[f"workers_{n}"] = {"seconds": round(secs, 1), "records_s": round(rows / secs, 3)}
    res["speedup"] = round(res["workers_1"]["seconds"] / res[f"workers_{a.workers}"]["seconds"], 2)
    res["ideal"] = a.workers
    res["efficiency"] = round(res["speedup"] / a.workers, 2)
    print(f"{'workers':>8} {'seconds':>8} {'records/s':>10}")
    for n in sorted({1, a.workers}):
        r = res[f"workers_{n}"]
        print(f"{n:>8} {r['seconds']:>8} {r['records_s']:>10}")
    print(f"speed-up {res['speedup']}x on {a.workers} workers (efficiency {res['efficiency']:.0%}; "
          f"this machine has {os.cpu_count()} cores, one per worker; each time includes loading the model)")
    Path(a.out).write_text(json.dumps(res, indent=2) + "\n")


if __name__ == "__main__":
    main()
