"""The supervisor's probe reading the shared opening of every request once (`Probe._prefix`) against reading
each rendering whole, measured in one run on this machine.

    python benchmarks/probe_prefix.py [--requests 600] [--dtype auto]

Three workloads, each what a stage reads: training requests (a seeded sample of the supervisor's own
training set, as `supervise` reads them), the embedded model's own 64-token answers (the refusal fixture's
responses, as `label` reads both sides of each pair) and one 500-token request (the serving guard's latency
case). Each is read with the prefix shared and whole, in the order shared, whole, whole, shared, so that
warm-up and drift weigh on both alike. Prints seconds per workload, the ratio, and how far the features and
the shipped probe's P(harmful) moved. Writes benchmarks/probe_prefix.json.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))


def workloads(probe, n_requests: int) -> dict[str, list[str]]:
    from run import long_request

    from charter.constitution import load_constitution
    from charter.supervise import data

    texts, *_ = data.training_set(load_constitution("default"), [], public=())
    requests = random.Random(0).sample(texts, min(n_requests, len(texts)))
    fixture = ROOT / "tests" / "fixtures" / "refusal_smollm135m.jsonl"
    answers = [json.loads(line)["response"] for line in fixture.read_text().splitlines() if line.strip()]
    return {"training_requests": requests, "answers": answers, "request_500_tokens": [long_request(probe.tok, 500)]}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=600)
    ap.add_argument("--dtype", default="auto", help="as `supervisor.probe_dtype`")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "probe_prefix.json"))
    a = ap.parse_args()

    import torch

    from charter.supervise import get_supervisor
    from charter.supervise.classifier import Probe

    probe = Probe("default", dtype=a.dtype)
    sets = workloads(probe, a.requests)
    probe.features(sets["training_requests"][:8])  # warm: the prefix's states and the kernels
    out = {"dtype": str(probe.dtype), "threads": torch.get_num_threads(), "prefix_tokens": len(probe._prefix()[0]),
           "order": "shared, whole, whole, shared"}
    feats = {}
    for name, texts in sets.items():
        repeats = 10 if len(texts) == 1 else 1  # one short read is too quick to time once
        secs = {True: [], False: []}
        for shared in (True, False, False, True):
            t0 = time.perf_counter()
            for _ in range(repeats):
                feats[name, shared] = probe.features(texts, shared_prefix=shared)
            secs[shared].append((time.perf_counter() - t0) / repeats)
        tokens = sum(len(probe._encode(t)) for t in texts)
        whole, shared = (sum(secs[k]) / 2 for k in (False, True))
        x, y = feats[name, True], feats[name, False]
        out[name] = {"texts": len(texts), "tokens": tokens, "whole_s": round(whole, 3), "shared_s": round(shared, 3),
                     "speedup": round(whole / shared, 2), "runs_s": {"whole": secs[False], "shared": secs[True]},
                     "feature_cosine_min": round(torch.nn.functional.cosine_similarity(x, y).min().item(), 6)}
        print(f"{name}: {len(texts)} texts, {tokens} tokens: whole {whole:.3f} s, shared prefix {shared:.3f} s "
              f"({out[name]['speedup']}x); feature cosine >= {out[name]['feature_cosine_min']}", flush=True)
    # What the shipped probe's weights read from each path (they were fitted on one of them).
    sup = get_supervisor("default")
    if sup.clf.dtype == probe.dtype:
        texts = sets["training_requests"] + sets["answers"]
        p = {k: sup.clf.score(torch.cat([feats[n, k] for n in ("training_requests", "answers")]))
             for k in (True, False)}
        diff = [abs(u - v) for u, v in zip(p[True], p[False])]
        flips = sum((u >= 0.5) != (v >= 0.5) for u, v in zip(p[True], p[False]))
        out["shipped_probe"] = {"texts": len(texts), "max_abs_p_difference": round(max(diff), 4),
                                "verdicts_changed": flips}
        print(f"shipped probe: P(harmful) moved by at most {max(diff):.4f}; {flips} of {len(texts)} verdicts changed")
    Path(a.out).write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
