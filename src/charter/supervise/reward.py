"""A two-sided pointwise reward from the supervisor, for on-policy training (the `rl` stage, k-sample pairs).

The supervisor reads the request (P(harmful), from its request probe) and the refusal judge reads the
response. Declining a request the supervisor finds harmful earns reward, and so does answering one it
finds harmless; the opposite of each costs the same. The weight is the supervisor's confidence, 2p - 1,
so a request near its threshold teaches little either way. This is the two-sided shape of OpenAI's Rule
Based Rewards (arXiv 2411.01111, section 4: propositions for "refuses" weighted by whether the request
should be refused), with the supervisor in place of the rule grader.

A quality term in [-w, 0] (distinct word trigrams, 0 for fewer than three words) means an empty or
looping response never beats a proper one on the same side: without it, an empty reply counts as a
refusal and would be the cheapest way to decline.
"""
from __future__ import annotations

from ..errors import CharterError
from ..evals.refusal import refusal_score


def quality(text: str) -> float:
    """1 for a normal response, lower for a looping one, 0 for fewer than three words."""
    words = (text or "").split()
    if len(words) < 3:
        return 0.0
    grams = [tuple(words[i:i + 3]) for i in range(len(words) - 2)]
    return len(set(grams)) / len(grams)


def two_sided(p_harm: float, response: str, quality_weight: float = 0.25) -> float:
    """Reward in [-1 - w, 1]: (2p - 1)(2r - 1) + w (q - 1), r = how much the response declines (0, 0.5, 1)."""
    declined = refusal_score(response)
    return (2 * p_harm - 1) * (2 * declined - 1) + quality_weight * (quality(response) - 1)


def request_scorer(supervisor):
    """The supervisor's P(harmful) for requests; only supervisors with a request probe have one."""
    score = getattr(supervisor, "request_harm", None)
    if score is None:
        raise CharterError(f"supervisor {supervisor.name} does not score requests; on-policy training needs "
                           "one that does (supervisor.kind: classifier)")
    return score
