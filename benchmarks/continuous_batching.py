"""The serving engine's continuous batching (`serve/hf_stream.py`: requests join the running batch between
steps, and leave it once they have their tokens) against the engine it replaced, which batched the requests
waiting when a batch started into one `generate` call and made later ones wait for that batch to end.

    python benchmarks/continuous_batching.py [--model default] [--requests 48] [--rate 2] [--batch-size 16]

The same open-loop workload for both, in the order joins, waits, waits, joins: `--requests` dev prompts (a
seeded shuffle) arriving at `--rate` per second on average (seeded Poisson arrivals), each asking for 16, 64 or
128 tokens in turn, greedy, streamed from the engine directly (no HTTP, no guard), so both give the same
answers up to the rounding of other batch shapes. Per request it times the first piece of text and the end,
from its arrival. The baseline is the old path itself, `HFEngine._run_whole`, which the engine still takes
for a model that `hf.Rows` cannot run. Writes benchmarks/continuous_batching.json.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from charter.serve.load import percentile  # noqa: E402  (the load test's rule, so p99s compare)


def serve(engine, workload):
    """Each (arrival s, messages, Sampling) of `workload` streamed from `engine`: first-text and end seconds
    from its arrival, its text, and the seconds until the last one ended."""
    async def one(at, messages, sampling, t0):
        await asyncio.sleep(max(0.0, t0 + at - time.perf_counter()))
        start, first, pieces = time.perf_counter(), None, []
        async for piece in engine.stream(messages, sampling, {}):
            first = first or time.perf_counter() - start
            pieces.append(piece)
        return first, time.perf_counter() - start, "".join(pieces).strip()

    async def main():
        t0 = time.perf_counter()
        res = await asyncio.gather(*(one(at, m, s, t0) for at, m, s in workload))
        return res, time.perf_counter() - t0

    return asyncio.run(main())


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="default")
    ap.add_argument("--requests", type=int, default=48)
    ap.add_argument("--rate", type=float, default=2.0, help="mean arrivals per second")
    ap.add_argument("--batch-size", type=int, default=16, help="as `charter serve --batch-size`")
    ap.add_argument("--precision", default="auto")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "continuous_batching.json"))
    a = ap.parse_args()

    import torch

    from charter.backends import hf, user
    from charter.prompts import dev_prompts
    from charter.serve.engines import Sampling
    from charter.serve.hf_stream import HFEngine
    from run import alternating

    backend = hf.HFBackend(a.model, precision=a.precision, progress=False)
    if not backend.decodes_alone:
        sys.exit(f"{a.model}: decodes through transformers' generate (hf.decodes_alone): both sides would be the same")
    rng = random.Random(0)
    prompts = [r["prompt"] for r in dev_prompts()]
    rng.shuffle(prompts)
    at, workload = 0.0, []
    for i, p in enumerate(prompts[:a.requests]):
        workload.append((at, user(p), Sampling(max_tokens=(16, 64, 128)[i % 3], temperature=0.0)))
        at += rng.expovariate(a.rate)
    joins, waits = HFEngine(backend, a.batch_size), HFEngine(backend, a.batch_size)
    waits.batcher.run_batch = waits._run_whole  # the engine before continuous batching
    serve(joins, workload[:4])  # warm the kernels
    secs, runs = alternating("joins", lambda: serve(joins, workload), "waits", lambda: serve(waits, workload))
    out = {"model": a.model, "dtype": str(backend.dtype), "threads": torch.get_num_threads(),
           "requests": len(workload), "rate_per_s": a.rate, "batch_size": a.batch_size,
           "max_tokens": [16, 64, 128], "order": "joins, waits, waits, joins"}
    for name, results in runs.items():
        rows = [r for res, _ in results for r in res]
        out[name] = {"first_text_s": {"p50": round(percentile([r[0] for r in rows], 0.5), 3),
                                      "p99": round(percentile([r[0] for r in rows], 0.99), 3)},
                     "latency_s": {"p50": round(percentile([r[1] for r in rows], 0.5), 2),
                                   "p99": round(percentile([r[1] for r in rows], 0.99), 2),
                                   "mean": round(statistics.mean(r[1] for r in rows), 2)},
                     "last_ended_s": [round(wall, 2) for _, wall in results]}
    texts = {name: [r[2] for r in results[-1][0]] for name, results in runs.items()}
    out["identical_answers"] = sum(x == y for x, y in zip(texts["joins"], texts["waits"]))
    for q in ("p50", "p99"):
        out[f"latency_{q}_ratio"] = round(out["waits"]["latency_s"][q] / out["joins"]["latency_s"][q], 2)
    out["first_text_p50_ratio"] = round(out["waits"]["first_text_s"]["p50"] / out["joins"]["first_text_s"]["p50"], 2)
    Path(a.out).write_text(json.dumps(out, indent=1) + "\n")
    for name in ("joins", "waits"):
        r = out[name]
        print(f"{name}: first text p50 {r['first_text_s']['p50']} s, p99 {r['first_text_s']['p99']} s; latency p50 "
              f"{r['latency_s']['p50']} s, p99 {r['latency_s']['p99']} s; last ended after {r['last_ended_s']} s")
    print(f"latency p50 {out['latency_p50_ratio']}x, p99 {out['latency_p99_ratio']}x, first text p50 "
          f"{out['first_text_p50_ratio']}x; {out['identical_answers']} of {len(workload)} answers identical")


if __name__ == "__main__":
    main()
