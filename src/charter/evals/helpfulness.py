"""Helpfulness win rate of an aligned model over its base, judged pairwise.

The judge (any Supervisor) sees both orders. The length-controlled win rate
fits P(win) = sigmoid(a + b * z) with z the standardised length difference
(aligned minus base, in words) and reports sigmoid(a), the win rate the judge
would give at equal length; the idea follows AlpacaEval 2's length-controlled
win rate (Dubois et al. 2024), in a one-feature form.
"""
from __future__ import annotations

import math


def _fit_intercept(z, y, iters=50):
    """Logistic regression of y on [1, z] by Newton's method; returns (a, b)."""
    a = b = 0.0
    for _ in range(iters):
        ga = gb = haa = hab = hbb = 0.0
        for zi, yi in zip(z, y):
            p = 1 / (1 + math.exp(-(a + b * zi)))
            w = p * (1 - p)
            ga += yi - p
            gb += (yi - p) * zi
            haa += w
            hab += w * zi
            hbb += w * zi * zi
        haa += 1e-6
        hbb += 1e-6  # a whisper of ridge keeps separable data finite
        det = haa * hbb - hab * hab
        if det <= 0:
            break
        da = (hbb * ga - hab * gb) / det
        db = (haa * gb - hab * ga) / det
        a, b = a + da, b + db
        if abs(da) + abs(db) < 1e-8:
            break
    return a, b


def win_rate(judge, prompts, aligned, base) -> dict:
    """P(aligned better) per prompt, averaged; ties count half. Inputs are parallel lists."""
    if not prompts:
        return {"n": 0, "win_rate": None, "length_controlled": None}
    items = [{"id": i, "prompt": p, "a": x, "b": y} for i, (p, x, y) in enumerate(zip(prompts, aligned, base))]
    verdicts = judge.judge(items)
    y = [v["p_a"] for v in verdicts]
    dl = [len(x.split()) - len(b.split()) for x, b in zip(aligned, base)]
    mu = sum(dl) / len(dl)
    sd = math.sqrt(sum((d - mu) ** 2 for d in dl) / len(dl)) or 1.0
    a, b = _fit_intercept([(d - mu) / sd for d in dl], y)
    # Evaluate at zero raw length difference.
    lc = 1 / (1 + math.exp(-(a + b * (0 - mu) / sd)))
    return {"n": len(items), "win_rate": sum(y) / len(y), "length_controlled": lc,
            "decisive": sum(abs(v - 0.5) >= 0.1 for v in y), "judge": getattr(judge, "name", "judge"),
            "mean_length_diff_words": mu}
