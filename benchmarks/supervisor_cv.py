"""Which features should the supervisor's request-harm probe read? Cross-validation, validation and outside sets.

    python benchmarks/supervisor_cv.py [--depths 0.4 0.5 0.6 0.667 0.733 0.833] [--weight-decay 0.1]
                                       [--suite-limit N] [--layer-sets 15,20,25 8,12,16 ...] [--no-minilm]

Training data is what `charter run configs/default.yaml` trains the supervisor on (`supervise/data.py`: the
default constitution's examples, the pools' train split, charter's supervisor data and wrappers, AdvBench and
StrongREJECT when present). Features are computed once at every depth listed, then each setting (which
layers; which pooling: mean over all tokens, mean over the last ones, the last token; which L2 penalty)
is scored by:
- 5-fold cross-validated accuracy on the training data;
- the validation rows (charter's held-out lookalikes, ordinary and harmful requests, wrapped ones, HarmBench
  val): F1 and benign-flagged rate at the threshold chosen there for a 5% false-positive target.
  **Settings are chosen on these.**
- suites it never trains on or is tuned on, reported beside: XSTest prompts (F1, safe flagged), HarmBench test
  and HarmBench test in PyRIT jailbreak templates (recall), benign dev requests in those templates (flagged).
A frozen all-MiniLM-L6-v2 probe is the baseline row (`--no-minilm` skips it). Writes benchmarks/supervisor_cv.json
(or `--out`).
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
OUTSIDE = ("xstest", "harmbench", "jailbreak", "jailbreak-benign")


def cv_accuracy(x, labels, weights, weight_decay, folds=5, seed=0) -> float:
    import torch

    from charter.stats import fit_logistic

    idx = list(range(len(labels)))
    random.Random(seed).shuffle(idx)
    right = 0
    for k in range(folds):
        test = set(idx[k::folds])
        train = [i for i in idx if i not in test]
        mu, sd, w, b = fit_logistic(x[train], [labels[i] for i in train], weight_decay, [weights[i] for i in train])
        test = sorted(test)
        pred = (((x[test] - mu) / sd) @ w + b) > 0
        right += int((pred == torch.tensor([bool(labels[i]) for i in test])).sum())
    return right / len(labels)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--depths", type=float, nargs="+", default=[0.4, 0.5, 0.6, 0.667, 0.733, 0.833])
    ap.add_argument("--weight-decay", type=float, nargs="+", default=[0.1])
    ap.add_argument("--suite-limit", type=int, default=None, help="a seeded sample per outside suite")
    ap.add_argument("--layer-sets", nargs="+", default=None,
                    help="layer numbers to compare, comma-separated per setting, each with all three poolings "
                         "(the depths read are then these layers; `feature_seconds` is then the one read of all "
                         "of them); default: the middle depth, every other one, all")
    ap.add_argument("--no-minilm", action="store_true", help="skip the all-MiniLM-L6-v2 baseline row")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "supervisor_cv.json"))
    a = ap.parse_args()
    layer_sets = [[int(x) for x in s.split(",")] for s in a.layer_sets] if a.layer_sets else None

    import torch

    from charter.constitution import load_constitution
    from charter.supervise import data, default_pool_rows, suites
    from charter.stats import fit_logistic
    from charter.supervise.classifier import Probe, Router

    texts, labels, weights, notes = data.training_set(load_constitution("default"), default_pool_rows())
    val = data.validation_set()
    outside = {}
    for name in OUTSIDE:
        try:
            outside[name] = suites.load(name, a.suite_limit)
        except Exception as e:  # a missing shared data folder: report without that column
            print(f"{name}: skipped ({e})")
    print(f"{len(texts)} training requests ({sum(labels)} harmful), {len(val)} validation, "
          f"outside: {', '.join(f'{k} {len(v)}' for k, v in outside.items())}; {notes or 'all public sets used'}")

    def featurise(fn):
        t = time.time()
        xs = {"train": fn(texts), "val": fn([r["prompt"] for r in val])}
        xs.update({k: fn([r["prompt"] for r in v]) for k, v in outside.items()})
        return xs, time.time() - t

    results = []

    def report(name, xs, secs):
        for wd in a.weight_decay:
            mu, sd, w, b = fit_logistic(xs["train"], labels, wd, weights)
            pred = lambda x: torch.sigmoid(((x - mu) / sd) @ w + b).tolist()  # noqa: E731
            pv = pred(xs["val"])
            thr = data.threshold_for(pv, val, 0.05)
            row = {"features": name, "weight_decay": wd, "feature_seconds": round(secs, 1),
                   "cv_accuracy": round(cv_accuracy(xs["train"], labels, weights, wd), 4), "threshold": thr,
                   "val": _brief(suites.score(val, pv, thr))}
            for k, v in outside.items():
                row[k] = _brief(suites.score(v, pred(xs[k]), thr))
            results.append(row)
            print(json.dumps(row), flush=True)

    if not a.no_minilm:
        router = Router(load_constitution("default"), [])
        report("all-MiniLM-L6-v2, frozen", *featurise(router.embed))
    depths = a.depths
    if layer_sets:
        from transformers import AutoConfig

        from charter.models import resolve_model

        n = AutoConfig.from_pretrained(resolve_model("default")).num_hidden_layers
        depths = [layer / n for layer in sorted({x for ls in layer_sets for x in ls})]
    probe = Probe("default", tuple(depths), "cpu")
    xs, secs = featurise(probe.features)
    d = probe.model.config.hidden_size

    parts_all = ("mean", "tail", "last")  # the order Probe.features writes them in, per layer

    def cols(layers, parts):
        picks = []
        for layer in layers:
            base = probe.layers.index(layer) * len(parts_all) * d
            picks += [torch.arange(base + off * d, base + (off + 1) * d) for off, p in enumerate(parts_all)
                      if p in parts]
        return torch.cat(picks)

    top = probe.layers
    mid = top[len(top) // 2]
    settings = ([(ls, parts_all) for ls in layer_sets] if layer_sets else
                [([mid], ("mean", "last")), (top[1::2], parts_all), (top, parts_all)])
    for layers, parts in settings:
        c = cols(layers, parts)
        report(f"SmolLM2-135M layers {layers} {'+'.join(parts)}", {k: v[:, c] for k, v in xs.items()}, secs)
    Path(a.out).write_text(json.dumps(results, indent=1) + "\n")


def _brief(s):
    out = {"n": s["n"]}
    for k in ("harmful_flagged", "benign_flagged"):
        if k in s:
            out[k] = round(s[k]["rate"], 4)
    if "f1" in s:
        out["f1"], out["auc"] = round(s["f1"]["value"], 4), round(s["auc"], 4)
    return out


if __name__ == "__main__":
    main()
