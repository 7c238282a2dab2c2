"""Stage 6: DPO on the supervisor's labels (Rafailov et al. 2023), starting from the SFT model.

`threshold` labels keep pairs with |p - 0.5| >= margin as hard preferences.
`soft` labels keep every pair and use conservative DPO (Mitchell 2023), whose
label smoothing is set to the mean label noise min(p, 1 - p). The SFT model is
the reference; its log-probs are computed once before training. Each pair is trained as one row
(`charter.packed_dpo`): the prompt is run once for both answers.
"""
from __future__ import annotations

from .. import records
from ..errors import CharterError
from ..train import fit
from .common import DPO_DATA, DPO_MODEL, LABELS, SFT_MODEL, messages, rewrite

INPUTS = [LABELS, SFT_MODEL]
OUTPUTS = [DPO_MODEL, DPO_DATA]


def preference_rows(labels, mode: str, margin: float) -> tuple[list[dict], float]:
    rows, noise = [], []
    for r in labels:
        p = r["p_a"]
        if mode == "threshold" and abs(p - 0.5) < margin:
            continue
        if r["a"].strip() == r["b"].strip():
            continue
        chosen, rejected = (r["a"], r["b"]) if p >= 0.5 else (r["b"], r["a"])
        rows.append({"id": r["id"], "prompt": r["prompt"], "label": r.get("label"), "chosen": chosen,
                     "rejected": rejected, "p_chosen": max(p, 1 - p)})
        noise.append(min(p, 1 - p))
    smoothing = sum(noise) / len(noise) if (mode == "soft" and noise) else 0.0
    return rows, smoothing


def balanced(rows, seed: int) -> list[dict]:
    """As many harmful-request pairs as benign ones: the larger side is subsampled (seeded)."""
    import random

    by = {lab: [r for r in rows if r.get("label") == lab] for lab in ("harmful", "benign")}
    n = min(len(v) for v in by.values())
    if rows and n == 0:
        empty = next(lab for lab, v in by.items() if not v)
        raise CharterError(f"dpo.balance: no usable pair on a {empty} request, so balancing would keep none; "
                           "sample more pairs, lower dpo.margin, or set dpo.balance=false")
    rng = random.Random(seed)
    keep = {r["id"] for v in by.values() for r in (rng.sample(v, n) if len(v) > n else v)}
    return [r for r in rows if r["id"] in keep or r.get("label") not in by]


def run(run):
    from trl import DPOConfig

    from ..packed_dpo import PackedDPOTrainer

    cfg = run.cfg.dpo
    rows, smoothing = preference_rows(records.read(run.path(LABELS)), cfg.labels, cfg.margin)
    if cfg.balance:
        rows = balanced(rows, run.cfg.seed)
    if not rows:
        raise CharterError("dpo: no usable preference pairs (every label was within the margin of 0.5; "
                           "lower dpo.margin, use dpo.labels=soft, or sample more pairs)")
    rewrite(run, DPO_DATA, rows, "dpo")
    ds = [{"prompt": messages(run, r["prompt"]), "chosen": [{"role": "assistant", "content": r["chosen"]}],
           "rejected": [{"role": "assistant", "content": r["rejected"]}]} for r in rows]
    stats = fit(run, PackedDPOTrainer, DPOConfig, cfg, ds, "sft", "dpo", beta=cfg.beta, label_smoothing=smoothing,
                precompute_ref_log_probs=True)
    return {"pairs_used": len(rows), "pairs_harmful": sum(r["label"] == "harmful" for r in rows),
            "label_smoothing": round(smoothing, 4), **stats}
