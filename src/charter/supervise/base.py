"""The Supervisor contract: judge (prompt, a, b) pairs under the constitution.

`judge` returns, per item, `p_a` (probability that a is the better response),
the probabilities from each presentation order (`p_ab`: a shown first,
`p_ba`: b shown first, both as P(a better)), and the principle(s) used.
Order is handled inside: callers never see position effects except in the
reported `p_ab`/`p_ba`.
"""
from __future__ import annotations

import math
from typing import Protocol, Sequence

from ..errors import CharterError


class Supervisor(Protocol):
    name: str

    def judge(self, items: Sequence[dict]) -> list[dict]: ...


def verdict(p_ab: float, p_ba: float, principles: list[str], **extra) -> dict:
    if any(math.isnan(p) for p in (p_ab, p_ba)):
        raise CharterError("supervisor returned NaN probabilities; check the judge model and its inputs")
    return {"p_a": (p_ab + p_ba) / 2, "p_ab": p_ab, "p_ba": p_ba, "principles": principles, **extra}


def position_inconsistent(v: dict) -> bool:
    """True when the preferred response changes with presentation order."""
    return (v["p_ab"] - 0.5) * (v["p_ba"] - 0.5) < 0


class Ensemble:
    """Average of several supervisors' probabilities."""

    def __init__(self, members):
        self.members = members
        self.name = "ensemble(" + ",".join(m.name for m in members) + ")"

    def judge(self, items):
        outs = [m.judge(items) for m in self.members]
        res = []
        for vs in zip(*outs):
            n = len(vs)
            principles = sorted({p for v in vs for p in v["principles"]})
            res.append(verdict(sum(v["p_ab"] for v in vs) / n, sum(v["p_ba"] for v in vs) / n, principles))
        return res
