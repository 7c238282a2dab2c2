"""Helpfulness win rate of an aligned model over its base, judged pairwise.

The judge (any Supervisor) sees both orders. The length-controlled win rate
fits P(win) = sigmoid(a + b * z) with z the standardised length difference
(aligned minus base, in words) and reports sigmoid(a), the win rate the judge
would give at equal length; the idea follows AlpacaEval 2's length-controlled
win rate (Dubois et al. 2024), in a one-feature form.
"""
from __future__ import annotations

from ..stats import fit_logistic


def win_rate(judge, prompts, aligned, base) -> dict:
    """P(aligned better) per prompt, averaged; ties count half. Inputs are parallel lists."""
    import torch

    if not prompts:
        return {"n": 0, "win_rate": None, "length_controlled": None}
    items = [{"id": i, "prompt": p, "a": x, "b": y} for i, (p, x, y) in enumerate(zip(prompts, aligned, base))]
    verdicts = judge.judge(items)
    y = [v["p_a"] for v in verdicts]
    dl = [len(x.split()) - len(b.split()) for x, b in zip(aligned, base)]
    mu, sd, w, b = fit_logistic([[d] for d in dl], y, weight_decay=1e-6)
    lc = float(torch.sigmoid(b - w * mu / sd))  # the fit read at zero length difference
    return {"n": len(items), "win_rate": sum(y) / len(y), "length_controlled": lc,
            "decisive": sum(abs(v - 0.5) >= 0.1 for v in y), "judge": getattr(judge, "name", "judge"),
            "mean_length_diff_words": sum(dl) / len(dl)}
