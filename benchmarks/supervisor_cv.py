"""Which features should the supervisor's request-harm classifier read? 5-fold cross-validation on its training data.

    python benchmarks/supervisor_cv.py [--depths 0.333 0.5 0.667 0.833] [--weight-decay 0.01 0.1 1.0]

The training data is what `charter run configs/default.yaml` trains the supervisor on: the default
constitution's example requests plus the train split of the builtin pools (the dev split is never read
here). Compares a logistic-regression probe on the embedded SmolLM2-135M's hidden states at several depths
with the same regression on frozen all-MiniLM-L6-v2 sentence embeddings, and prints accuracy per setting
plus the seconds spent computing features. Writes benchmarks/supervisor_cv.json.
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
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))


def cv_accuracy(x, labels, weight_decay, folds=5, seed=0) -> float:
    import torch

    from charter.supervise.classifier import fit_logistic

    idx = list(range(len(labels)))
    random.Random(seed).shuffle(idx)
    right = 0
    for k in range(folds):
        test = set(idx[k::folds])
        train = [i for i in idx if i not in test]
        mu, sd, w, b = fit_logistic(x[train], [labels[i] for i in train], weight_decay)
        test = sorted(test)
        pred = (((x[test] - mu) / sd) @ w + b) > 0
        right += int((pred == torch.tensor([bool(labels[i]) for i in test])).sum())
    return right / len(labels)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--depths", type=float, nargs="+", default=[0.333, 0.5, 0.667, 0.833])
    ap.add_argument("--weight-decay", type=float, nargs="+", default=[0.01, 0.1, 1.0])
    a = ap.parse_args()

    from charter.constitution import load_constitution
    from charter.supervise import default_pool_rows
    from charter.supervise.classifier import Probe, Router, training_data

    constitution = load_constitution("default")
    rows = default_pool_rows()
    texts, labels = training_data(constitution, rows)
    print(f"{len(texts)} training requests, {sum(labels)} harmful; 5-fold cross-validation")
    results = []

    def report(name, x, secs):
        for wd in a.weight_decay:
            acc = cv_accuracy(x, labels, wd)
            results.append({"features": name, "weight_decay": wd, "cv_accuracy": round(acc, 4),
                            "feature_seconds": round(secs, 1)})
            print(f"{name:32s} wd={wd:<5} accuracy {acc:.1%}   ({secs:.0f} s of features)", flush=True)

    t = time.time()
    router = Router(constitution, [])
    report("all-MiniLM-L6-v2, frozen", router.embed(texts), time.time() - t)
    for depth in a.depths:
        probe = Probe("default", depth, "cpu")
        t = time.time()
        x = probe.features(texts)
        report(f"SmolLM2-135M layer {probe.layer}", x, time.time() - t)
    (ROOT / "benchmarks" / "supervisor_cv.json").write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
